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
# # Cell atlas: place, grid, time and splitter scores against their shuffle nulls
#
# The census scores every unit of every cached hook with the scores its task's rate-map
# declarations call for, each against its own null, and labels a unit when p < 0.05
# (see docs/design.md, "The cell census"). This notebook runs it on a path-integration run
# and a timing run, then looks inside: rate maps, a null distribution, and the pitfalls.

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

from analysis.binning import eta2_of, rate_maps, shifted, smooth_rate_maps
from analysis.gridness import grid_scores
from analysis.stats import sequence_shift_null
from analysis.temporal import time_fields
from lab.process import prepare_process
from probes.cache import ActivationStore
from studies.pipeline import census_stage, probe_stage, train_stage
from studies.plan import Selection, plan
from studies.preset import load_preset
from tasks import build_task

# %matplotlib inline
prepare_process()  # as the command line: denormals flushed, freed memory kept
preset, raw = load_preset(PRESET, [f"out_root={OUT_ROOT}"])


def ready(runs):
    """Train, probe and census the runs that lack those outputs (reuses `make paper` runs)."""
    train_stage(runs, progress=False)
    for planned in runs:
        if not (planned.run_dir / "probes.csv").is_file():
            probe_stage([planned], progress=False)
        if not (planned.run_dir / "cells.csv").is_file():
            census_stage([planned], progress=False)


grid = [
    p
    for p in plan(preset, raw, Selection(studies=("grid_cells",), models=("lstm",)))
    if p.run["condition"] == "dos"
]
timing = plan(preset, raw, Selection(studies=("time_cells",), models=("lstm",)))
ready(grid + timing)

# %% [markdown]
# ## The census table
#
# `cells.csv` has one row per network (trained / untrained), hook, unit and score, with the
# p-value and the label the score gives. Label fractions go to `census.csv`.

# %%
cells = pd.read_csv(grid[0].run_dir / "cells.csv")
print(sorted(cells["score"].unique()))
labelled = cells[cells["label"].fillna("") != ""]
labelled.groupby(["network", "hook", "label"])["unit"].nunique().unstack(fill_value=0)

# %%
pd.read_csv(grid[0].run_dir / "census.csv").query("hook != hook or hook == ''")

# %% [markdown]
# ## Rate maps, occupancy and unvisited bins
#
# A rate map divides summed activity by occupancy; bins never visited are NaN, and are left
# out of η² and information (never read as zero activity). Smoothing spreads activity only
# over visited bins. Activations are signed: the field and information scores use each map
# minus its minimum.

# %%
run, store = grid[0].run, ActivationStore.open(grid[0].run_dir / "activations")
task = build_task(run["task"], run["task_config"])
spec = task.rate_maps()[0]
hook = store.hooks[-1]
acts, latents = store.load(hook, [spec.latent])
act = acts.flatten(0, 1).double()
pos = latents[spec.latent].flatten(0, 1).double()
maps, occupancy = rate_maps(pos, act, spec.bins, spec.extent)
smooth = shifted(smooth_rate_maps(maps, occupancy, preset.census.smooth_sigma))
fig, axes = plt.subplots(1, 5, figsize=(11, 2.2))
axes[0].imshow(occupancy.T, origin="lower")
axes[0].set_title(f"occupancy ({int((occupancy == 0).sum())} empty bins)", fontsize=8)
for unit, ax in enumerate(axes[1:]):
    ax.imshow(smooth[unit].T, origin="lower")
    ax.set_title(f"unit {unit}", fontsize=8)
for ax in axes:
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Which gridness variant
#
# The census uses DeepMind's "mean" variant, mean(r60, r120) − mean(r30, r90, r150), best of
# ten rings; Sargolini et al.'s "minmax", min(r60, r120) − max(r30, r90, r150), is stricter.
# Thresholds from one do not transfer to the other, and the census does not use a fixed
# threshold at all: each unit is compared with its own field-shuffle null.

# %%
pd.DataFrame(
    {
        "mean (census)": grid_scores(smooth, variant="mean").numpy(),
        "minmax": grid_scores(smooth, variant="minmax").numpy(),
    }
).describe().round(3)

# %% [markdown]
# ## One unit against its null
#
# Place tuning (η² of position) is tested against circular shifts by whole sequences: each
# unit's activity is paired with the path of another held-out sequence. The p-value is
# (1 + #null ≥ observed) / (1 + n_shuffles).

# %%
mask = torch.ones(acts.shape[:2], dtype=torch.bool)
eta2 = eta2_of(lambda a: rate_maps(pos, a, spec.bins, spec.extent))
null = sequence_shift_null(
    eta2, acts.double(), mask, n_shuffles=99, generator=torch.Generator().manual_seed(0)
)
unit = int(null.observed.argmax())
plt.figure(figsize=(4, 2.5))
plt.hist(null.null[:, unit].numpy(), bins=20, color="grey")
plt.axvline(float(null.observed[unit]), color="red")
plt.title(f"unit {unit}: η² {float(null.observed[unit]):.3f}, p = {float(null.p_values[unit]):.2f}")
plt.show()

# %% [markdown]
# ## Time cells and ramps
#
# Time cells are tuned to time since the cue, tested against circular shifts *within each
# trial* (trials of equal length would line back up under a global shift). A unit whose
# significant tuning peaks at an edge of the delay is a ramp, not a time cell.

# %%
run, store = timing[0].run, ActivationStore.open(timing[0].run_dir / "activations")
task = build_task(run["task"], run["task_config"])
spec = task.rate_maps()[0]
acts, latents = store.load(store.hooks[-1], [spec.latent, spec.at])
in_trial = latents[spec.at].bool()
t = latents[spec.latent][in_trial].double()
fields = time_fields(
    t, acts[in_trial].double(), bins=spec.n_bins, extent=(-0.5, spec.n_bins - 0.5), signed="shift"
)
order = fields.peak_time.argsort()
tuning = fields.tuning[order]
tuning = (tuning - tuning.amin(1, keepdim=True)) / (
    tuning.amax(1, keepdim=True) - tuning.amin(1, keepdim=True) + 1e-12
)
plt.figure(figsize=(4, 3))
plt.imshow(tuning, aspect="auto", extent=(-0.5, spec.n_bins - 0.5, len(order), 0))
plt.xlabel("time since cue (steps)")
plt.ylabel("unit (sorted by peak)")
plt.show()
timing_cells = pd.read_csv(timing[0].run_dir / "cells.csv")
timing_cells[timing_cells["label"].fillna("") != ""].groupby(["network", "label"]).size()
