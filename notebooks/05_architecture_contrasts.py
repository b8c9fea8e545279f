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
# # Architecture contrasts: copying beyond training length, and state tracking
#
# Two studies where the architectures are expected to differ most: copying strings longer
# than any seen in training (transformers with suitable positional schemes can, fixed-state
# models cannot; Jelassi et al. 2024), and tracking the state of a group word (Merrill et
# al. 2024; Grazzi et al. 2024). Everything here is read from the results tables, which
# is all the paper figures read. With `PRESET` set to a preset you ran `make paper` on,
# the tables of that experiment are used; otherwise the smoke runs are trained here.

# %%
import os
from pathlib import Path

if Path.cwd().name == "notebooks":  # run from the repository root: configs/ and runs/ live there
    os.chdir(Path.cwd().parent)

# %% tags=["parameters"]
PRESET = "smoke"  # a preset of configs/ (after `make paper PRESET=small`: "small")
OUT_ROOT = os.environ.get("COGMAP_OUT_ROOT", "runs")  # where `make paper` writes its runs
# The state-tracking arms trained here when there are no results tables (the study also
# compares 1- and 4-layer transformers and Mamba variants: list them to include them).
STATE_TRACKING_ARMS = ["transformer", "mamba", "lstm"]

# %%
import matplotlib.pyplot as plt

from analysis.figures import FIGURES
from analysis.figures.panels import StudyTables
from analysis.tables import collect, read_tables
from lab.process import prepare_process
from studies.pipeline import records, train_stage
from studies.plan import Selection, plan
from studies.preset import load_preset
from studies.registry import get_study
from tasks import build_task

# %matplotlib inline
prepare_process()  # as the command line: denormals flushed, freed memory kept
preset, raw = load_preset(PRESET, [f"out_root={OUT_ROOT}"])
results = preset.experiment_dir() / "results"
tables = read_tables(results) if (results / "runs.csv").is_file() else {}
if not {"copying", "state_tracking"} <= set(tables.get("runs", {"study": []})["study"]):
    raw.setdefault("study", {}).setdefault("state_tracking", {})["arms"] = STATE_TRACKING_ARMS
    runs = plan(preset, raw, Selection(studies=("copying", "state_tracking")))
    train_stage(runs, progress=False)
    tables = collect(records(runs))  # the tables in memory; `make tables` writes them
tables["runs"][["study", "condition", "model", "n_params", "converged", "gate_value"]]

# %% [markdown]
# ## Copying: accuracy against string length
#
# Trained on strings up to `max_train_len`, evaluated up to 4× longer (`long_*` metrics).
# Every arm has the same parameter and step budget.

# %%
curves = tables["curves"]
copy = curves[(curves["study"] == "copying") & (curves["curve"] == "token_accuracy_by_length")]
fig, ax = plt.subplots(figsize=(5, 3))
for model, rows in copy.groupby("model", sort=False):
    rows = rows[rows["count"] > 0]
    ax.plot(rows["x"], rows["value"], "o-", label=model, ms=3)
ax.axvline(build_task("copying", preset.tasks.get("copying")).config.max_train_len, ls=":")
ax.set_xlabel("string length")
ax.set_ylabel("token accuracy")
ax.legend(fontsize=7)
plt.show()

# %%
runs_table = tables["runs"]
runs_table[runs_table["study"] == "copying"][
    ["model", "accuracy_in_dist", "long_accuracy", "long_string_accuracy"]
].round(3)

# %% [markdown]
# ## State tracking: accuracy against prefix length, by group
#
# Parity (Z2) and Z60 are solvable groups; A5 is not, and a constant-depth transformer
# should fail on it as prefixes grow.

# %%
state = curves[(curves["study"] == "state_tracking") & (curves["curve"] == "accuracy_by_length")]
conditions = list(dict.fromkeys(state["condition"]))
fig, axes = plt.subplots(1, len(conditions), figsize=(4 * len(conditions), 3), squeeze=False)
for ax, condition in zip(axes[0], conditions, strict=True):
    for model, rows in state[state["condition"] == condition].groupby("model", sort=False):
        ax.plot(rows["x"], rows["value"], "-", label=model)
    ax.set_title(condition)
    ax.set_xlabel("prefix length")
axes[0, 0].set_ylabel("accuracy")
axes[0, 0].legend(fontsize=7)
plt.show()

# %% [markdown]
# ## The paper figures
#
# Each study's figure is drawn from the same tables (`make figures` writes them to
# `runs/<experiment>/figures/`).

# %%
for name in ("copying", "state_tracking"):
    FIGURES[name](StudyTables(tables, get_study(name)))
plt.show()
