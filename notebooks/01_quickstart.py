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
# # Quickstart: build, train, cache, draw a rate map
#
# Every architecture of the lab, one tiny training run, the hooks every model shares, and a
# rate map. On the `smoke` preset this runs in about a minute on a CPU; with `PRESET` set to
# a preset you ran `make paper` on, it reads those runs instead of training.

# %%
import os
from pathlib import Path

if Path.cwd().name == "notebooks":  # run from the repository root: configs/ and runs/ live there
    os.chdir(Path.cwd().parent)

# %% tags=["parameters"]
PRESET = "smoke"  # a preset of configs/ (after `make paper PRESET=small`: "small")
OUT_ROOT = os.environ.get("COGMAP_OUT_ROOT", "runs")  # where `make paper` writes its runs

# %%
import json

import matplotlib.pyplot as plt
import pandas as pd
import torch

from analysis.binning import rate_maps
from lab.process import prepare_process
from lab.streams import PROBE, generator
from models import count_parameters
from models.run import build_run
from probes.run import load_trained
from studies.pipeline import train_stage
from studies.plan import Selection, plan
from studies.preset import load_preset

# %matplotlib inline
prepare_process()  # as the command line: denormals flushed, freed memory kept
preset, raw = load_preset(PRESET, [f"out_root={OUT_ROOT}"])

# %% [markdown]
# ## Build each architecture at the same parameter budget
#
# `plan` turns a preset into runs: every study × condition × model arm × seed, each with its
# resolved config (`config.json`): the task's config, the model resized to the preset's
# `param_budget` (within 10%), and the shared training budget.

# %%
runs = plan(preset, raw, Selection(studies=("time_cells",)))
for planned in runs:
    task, model = build_run(planned.run)
    config = planned.run["model_config"]
    print(
        f"{planned.run['model']:12s} d_model={config['d_model']:3d} "
        f"n_layers={config['n_layers']} parameters={count_parameters(model)}"
    )

# %% [markdown]
# ## The hooks every model shares
#
# Every model supports TransformerLens's `run_with_cache`. The probes, the census and the
# causal tests use only `blocks.{i}.hook_resid_pre` and `blocks.{i}.hook_resid_post`; each
# architecture has its own hooks beside them (the LSTM's cell state, Mamba's SSM state, the
# transformer's attention).

# %%
batch = task.sample(4, torch.Generator().manual_seed(0))
for planned in runs:
    _, model = build_run(planned.run)
    logits, cache = model.run_with_cache(batch.inputs)
    block0 = {k: tuple(v.shape) for k, v in cache.items() if k.startswith("blocks.0.")}
    print(planned.run["model"], "logits", tuple(logits.shape))
    for name, shape in list(block0.items())[:8]:
        print(f"    {name:40s} {shape}")

# %% [markdown]
# ## Train a tiny LSTM
#
# `train_stage` trains (or resumes, or skips a finished run) into the run directory:
# `config.json`, `checkpoint.safetensors`, `metrics.jsonl` and `summary.json`.

# %%
lstm = [p for p in runs if p.run["model"] == "lstm"]
train_stage(lstm, progress=False)
run_dir = lstm[0].run_dir
log = pd.DataFrame(json.loads(line) for line in (run_dir / "metrics.jsonl").open())
summary = json.loads((run_dir / "summary.json").read_text())
print(run_dir)
print({k: round(v, 3) for k, v in summary["final"].items() if v is not None})
log.plot(x="step", y="train_loss", figsize=(4, 2.5), title="training loss")
plt.show()

# %% [markdown]
# ## A rate map
#
# Path integration in a square box: the network sees velocities and must report its
# position. A rate map is a unit's mean activity in each spatial bin (occupancy-normalised;
# unvisited bins are NaN). The task declares how its activity is binned (`rate_maps()`).

# %%
grid_runs = plan(preset, raw, Selection(studies=("grid_cells",), models=("lstm",)))
dos = [p for p in grid_runs if p.run["condition"] == "dos"]
train_stage(dos, progress=False)
run, task, model, device = load_trained(dos[0].run_dir)
batch = task.sample(128, generator(run["seed"], PROBE, 0))
_, cache = model.run_with_cache(batch.inputs.to(device))
act = cache["blocks.0.hook_resid_post"].flatten(0, 1).cpu()  # [samples, units]
spec = task.rate_maps()[0]
maps, occupancy = rate_maps(batch.latents[spec.latent].flatten(0, 1), act, spec.bins, spec.extent)
fig, axes = plt.subplots(1, 6, figsize=(12, 2))
axes[0].imshow(occupancy.T, origin="lower")
axes[0].set_title("occupancy", fontsize=8)
for unit, ax in enumerate(axes[1:]):
    ax.imshow(maps[unit].T, origin="lower")
    ax.set_title(f"unit {unit}", fontsize=8)
for ax in axes:
    ax.axis("off")
plt.show()
