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
# # Causal tests: steering, ablation, patching the recurrent state
#
# A probe says information is there; a causal test asks whether the network uses it.
# This notebook runs the causal stage on a timing run, then each tool by hand: steering
# along the probe's direction, ablating a population, and patching an LSTM's state at one
# step and rolling forward.

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
import torch
from safetensors.torch import load_file

from lab.process import prepare_process
from lab.streams import CAUSAL, generator
from probes.causal.ablation import ablate
from probes.causal.patching import read_states, rollout
from probes.causal.steering import steer
from probes.run import load_trained
from studies.causal import causal_run, respond_logit
from studies.pipeline import census_stage, probe_stage, train_stage
from studies.plan import Selection, plan
from studies.preset import load_preset

# %matplotlib inline
prepare_process()  # as the command line: denormals flushed, freed memory kept
preset, raw = load_preset(PRESET, [f"out_root={OUT_ROOT}"])
runs = plan(preset, raw, Selection(studies=("time_cells",), models=("lstm",)))
train_stage(runs, progress=False)
planned = runs[0]
if not (planned.run_dir / "probes.csv").is_file():  # reuse a `make paper` run
    probe_stage([planned], progress=False)
if not (planned.run_dir / "cells.csv").is_file():
    census_stage([planned], progress=False)

# %% [markdown]
# ## The causal stage
#
# Ablation of every labelled population (vs random and variance-matched units) and the
# study's steering test (`planned.study.steering`), with bootstrap intervals over held-out
# batches, into `causal.csv`.

# %%
print(planned.study.steering.expect)
rows = causal_run(planned.run_dir, planned.preset.causal, planned.study.steering)
pd.DataFrame(rows).round(4)

# %% [markdown]
# ## Steering by hand
#
# Add α times the unit direction the linear probe reads `t_since_cue` from to the best
# hook, during the delay, and read the respond-vs-wait logit (`respond_logit`); random unit
# directions are the control.

# %%
run, task, model, device = load_trained(planned.run_dir)
batch = task.sample(16, generator(run["seed"], CAUSAL, 0)).to(device)
probes = pd.read_csv(planned.run_dir / "probes.csv")
best = probes[probes["target"] == "t_since_cue@in_trial"].sort_values("score").iloc[-1]
weights = load_file(planned.run_dir / "probe_weights.safetensors")
direction = weights[f"t_since_cue@in_trial|{best['hook']}/weight"][:, 0]
positions, readout = respond_logit(task, batch)
response = steer(
    model,
    batch.inputs,
    best["hook"],
    direction,
    [-2.0, -1.0, 1.0, 2.0],
    readout,
    positions,
    n_random=8,
)
along, random = response.slopes()
print(
    f"slope along the probe direction {along:.3f}; random directions {random.mean():.3f} "
    f"± {random.std():.3f}"
)
plt.figure(figsize=(4, 2.5))
plt.plot(response.alphas, response.along, "o-", label="along the probe")
plt.plot(response.alphas, response.random.T, color="grey", alpha=0.4)
plt.xlabel("α (norm of the added vector)")
plt.ylabel("change of the respond logit")
plt.legend()
plt.show()

# %% [markdown]
# ## Ablating a population by hand
#
# Mean-ablate the units the census labelled at a hook (or, on a barely trained smoke run
# with no labels, the first few units) and compare the loss change with as many random and
# as many variance-matched units.

# %%
cells = pd.read_csv(planned.run_dir / "cells.csv")
hook = best["hook"]
labelled = cells[
    (cells["network"] == "trained") & (cells["hook"] == hook) & (cells["label"].fillna("") != "")
]
units = sorted(set(labelled["unit"]))[:4] or [0, 1]
batches = [task.sample(16, generator(run["seed"], CAUSAL, i)).to(device) for i in range(3)]
result = ablate(model, batches, hook, units, task.loss, mode="mean", n_draws=5)
pd.DataFrame(result.summary(), index=["mean", "ci_low", "ci_high"]).T.round(4)

# %% [markdown]
# ## Patching the recurrent state and rolling forward
#
# A hook edit in one forward pass cannot carry a change through a recurrent state: later
# steps were computed from the unedited value. `rollout` steps the model one token at a
# time from an explicit state (`models.stepping`), so a state written at step t drives every
# later step. Here every sequence receives, at step t, the LSTM state another sequence had
# at step t; in a trained network its responses should then follow the donor's clock
# until its own next cue, and nothing before step t may change.

# %%
state = "blocks.0.hook_resid_post"
inputs = batch.inputs
t = inputs.shape[1] // 2
donor = torch.roll(torch.arange(len(inputs)), 1)
states = read_states(model, inputs, [state])[state]  # [batch, pos, d_model]
clean = rollout(model, inputs)
patched = rollout(model, inputs, patches={t: {state: states[donor, t]}})
after = slice(t + 1, min(t + 4, inputs.shape[1]))
moved = (patched.logits[:, after] - clean.logits[:, after]).abs().mean()
print(f"mean change of the logits over the 3 steps after the patch: {float(moved):.4f}")
print(f"before the patch: {float((patched.logits[:, :t] - clean.logits[:, :t]).abs().max()):.1e}")
