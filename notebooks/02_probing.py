# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Probing: what can be decoded, at which depth, beyond what baselines give
#
# A task declares its probe targets (`task.probe_targets()`): which latent, at which
# tokens, and its kind. The probe stage decodes each from every depth of the residual stream
# on held-out environments, beside the network at initialisation and a control task.

# %%
import os
from pathlib import Path

if Path.cwd().name == "notebooks":  # run from the repository root: configs/ and runs/ live there
    os.chdir(Path.cwd().parent)

# %% tags=["parameters"]
PRESET = "smoke"  # a preset of configs/ (after `make paper PRESET=small`: "small")
OUT_ROOT = os.environ.get("COGMAP_OUT_ROOT", "runs")  # where `make paper` writes its runs

# %%
import matplotlib.pyplot as plt
import pandas as pd

from lab.process import prepare_process
from probes.cache import ActivationStore
from probes.fit import fit_probe
from probes.mlp import MLPConfig
from probes.stream import store_batches
from studies.pipeline import probe_stage, train_stage
from studies.plan import Selection, plan
from studies.preset import load_preset
from tasks import build_task

# %matplotlib inline
prepare_process()  # as the command line: denormals flushed, freed memory kept
preset, raw = load_preset(PRESET, [f"out_root={OUT_ROOT}"])

# %% [markdown]
# ## Train and probe one run
#
# Graph navigation on a square graph: the network walks an aliased graph, sees an
# observation per node and an action per move, and predicts the next observation. Its
# target is the true position `pos_xy`, read at observation tokens (`@is_obs`).

# %%
runs = plan(preset, raw, Selection(studies=("navigation",), models=("transformer",)))
runs = [p for p in runs if p.run["condition"] == "square"]
train_stage(runs, progress=False)
for planned in runs:
    if not (planned.run_dir / "probes.csv").is_file():  # reuse a `make paper` run
        probe_stage([planned], progress=False)
run_dir = runs[0].run_dir
task = build_task(runs[0].run["task"], runs[0].run["task_config"])
print(task.probe_targets())

# %%
probes = pd.read_csv(run_dir / "probes.csv")
columns = ["depth", "target", "probe", "score", "untrained", "control", "selectivity"]
probes[columns + ["proximity_error", "n_train", "n_test"]].round(3)

# %%
fig, ax = plt.subplots(figsize=(4, 3))
for column, style in (("score", "o-"), ("untrained", "s--"), ("control", "x:")):
    ax.plot(probes["depth"], probes[column], style, label=column)
ax.set_xlabel("depth (0: embedding)")
ax.set_ylabel("held-out R²")
ax.set_title(probes["target"].iloc[0])
ax.legend()
plt.show()

# %% [markdown]
# ## How to read the numbers
#
# - `score` is measured on environments the probe never saw (25% of them; `n_test` tokens).
#   The penalty is chosen by cross-validation grouped by environment (`cv_score`).
# - `untrained` is the same probe on the same architecture at initialisation: a random
#   network already carries much of its input, so only the gap over it is learned.
# - `control` is the same probe on Hewitt & Liang's control task (each value mapped to a
#   random value of the latent); `selectivity = score - control` says how much of the score
#   needs structure rather than memorised value → label pairs.
# - `proximity_error` (spatial targets): the fraction of predictions lying closer to a
#   sample's true position than its own prediction; 0 is perfect, about 0.5 is noise.
#
# On the smoke preset the network has trained for a few steps: expect scores near the
# untrained baseline. Read a `make paper PRESET=small` run for trained numbers.

# %% [markdown]
# ## Fit a probe yourself
#
# `fit_probe` is the one entry point of the probe stage: any probe kind, on any re-iterable
# source of (activations, labels, groups) batches — here the cached activations of the
# last layer, with a one-hidden-layer MLP instead of ridge regression.

# %%
store = ActivationStore.open(run_dir / "activations")
target = task.probe_targets()[0]
hook = store.hooks[-1]
fit = fit_probe(
    "mlp",
    store_batches(store, hook, target),
    target,
    folds=preset.probe.folds,
    seed=0,
    config=MLPConfig(max_epochs=20),
)
print(
    f"{hook}: MLP R² {fit.score:.3f}, control {fit.control_score:.3f}, "
    f"selectivity {fit.selectivity:.3f}, {fit.n_train} train / {fit.n_test} test tokens"
)
