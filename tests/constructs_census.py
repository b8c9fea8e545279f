"""Constructed networks through the real census: a run directory whose "trained" network is
one draw of a construct (``models.constructed``) and whose "untrained" reference is another
draw of the same mechanism, cached on the task's held-out probe sequences exactly as the
probe stage caches a network (same batches, same hooks, same provenance records).

As a script, censuses every construct on every registered task at a preset's task sizes
(graph_nav_hex takes graph_nav's) and prints, per task, construct, hook and label, the
fraction of units of each draw that get the label, and how many of the first draw's
labelled units score above every unit of the second draw (same hook, same score):

    PYTHONPATH=$PWD .venv/bin/python tests/constructs_census.py [--preset small] [--units 64]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import pandas as pd

from analysis.census import CensusConfig, census_run
from lab import provenance
from lab.io import write_json
from models.constructed import CONSTRUCTS, build_construct
from probes.cache import cache_activations, layer_hooks
from probes.config import ProbeConfig
from probes.run import probe_batches
from studies.preset import load_preset
from tasks import TASKS, build_task

DRAWS = {"activations": 0, "activations_untrained": 1}
"""Store -> the construct's seed: the census reads the first as the network, the second as
its untrained reference."""


def construct_run(
    run_dir: Path,
    task_name: str,
    task_fields: dict,
    construct: str,
    n_units: int,
    probe: ProbeConfig,
    seed: int = 0,
) -> Path:
    """A run directory ready for :func:`analysis.census.census_run`: ``config.json`` (the
    task, ``seed`` for the probe sequences and the census's nulls, the construct) and the two
    draws' activation stores (:data:`DRAWS`)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    task = build_task(task_name, task_fields)
    run = {
        "task": task_name,
        "task_config": dataclasses.asdict(task.config),
        "seed": seed,
        "construct": construct,
        "n_units": n_units,
    }
    write_json(run_dir / "config.json", run)
    made_from = provenance.origin("probe", provenance.fingerprint(run), 0, probe=vars(probe))
    with provenance.rewriting(run_dir, list(DRAWS), made_from):
        for folder, draw in DRAWS.items():
            model = build_construct(construct, task, n_units, draw)
            batches = probe_batches(task, run, probe)
            cache_activations(model, batches, layer_hooks(1), run_dir / folder, "cpu", False)
    return run_dir


def label_table(run_dir: Path) -> pd.DataFrame:
    """Per hook and label: units labelled in each draw, and the first draw's labelled units
    whose score is above the maximum of that score over the second draw's units."""
    cells = pd.read_csv(run_dir / "cells.csv", keep_default_na=False)
    labelled = cells[cells["label"] != ""]
    rows = []
    for (hook, label), group in labelled.groupby(["hook", "label"]):
        mine = group[group["network"] == "trained"]
        reference = cells[(cells["network"] == "untrained") & (cells["hook"] == hook)]
        above = 0
        for score, units in mine.groupby("score"):
            ceiling = pd.to_numeric(reference[reference["score"] == score]["value"]).max()
            above += int((pd.to_numeric(units["value"]) > ceiling).sum())
        rows.append(
            {
                "hook": hook,
                "label": label,
                "draw_0": mine["unit"].nunique(),
                "draw_1": group[group["network"] == "untrained"]["unit"].nunique(),
                "above_draw_1_max": above,
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--units", type=int, default=64)
    args = parser.parse_args()
    preset, raw = load_preset(args.preset)
    probe = ProbeConfig(**raw.get("probe", {}))
    census = CensusConfig(**raw.get("census", {}))
    fields = dict(preset.tasks)
    fields["graph_nav_hex"] = fields.get("graph_nav", {})
    with tempfile.TemporaryDirectory() as tmp:
        for task_name in sorted(TASKS):
            for construct in sorted(CONSTRUCTS):
                run_dir = Path(tmp) / task_name / construct
                task_fields = fields.get(task_name, {})
                construct_run(run_dir, task_name, task_fields, construct, args.units, probe)
                census_run(run_dir, census, progress=False)
                table = label_table(run_dir)
                print(f"== {task_name} / {construct} ({args.units} units per hook)")
                print(table.to_string(index=False) if len(table) else "   no labels")


if __name__ == "__main__":
    main()
