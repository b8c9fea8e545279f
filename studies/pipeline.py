"""The stages of a study, each over a list of planned runs:

    train -> probe -> census -> analyze -> causal -> tables -> figures

``train`` resumes runs that exist and skips finished ones; ``probe`` caches activations on
held-out environments and decodes the task's targets; ``census`` scores every unit;
``analyze`` runs the study's own analyses; ``causal`` ablates the labelled populations and
steers along probe directions (:mod:`studies.causal`); ``tables`` gathers every finished run of the
experiment into ``results/*.csv``; ``figures`` draws each study's figure from those tables.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from analysis.census import census_run
from analysis.figures import draw_figure
from analysis.tables import RunRecord, write_tables
from lab.io import write_csv
from models.train import train
from probes.run import probe_run
from studies.causal import causal_run
from studies.plan import PlannedRun
from studies.study import RunContext

STAGES = ("train", "probe", "census", "analyze", "causal", "tables", "figures")


def train_stage(runs: list[PlannedRun], progress: bool = True) -> None:
    for planned in runs:
        summary = train(planned.run, planned.run_dir, resume=True, progress=progress)
        final = ", ".join(
            f"{k}={v:.3f}" for k, v in summary["final"].items() if isinstance(v, float)
        )
        print(f"trained {planned.label}: {summary['n_params']} params, {final}", flush=True)


def probe_stage(runs: list[PlannedRun], progress: bool = True) -> None:
    for planned in runs:
        rows = probe_run(planned.run_dir, planned.preset.probe, progress=progress)
        best = {}
        for row in rows:
            best[row["target"]] = max(best.get(row["target"], -float("inf")), row["score"])
        scores = ", ".join(f"{t}={v:.2f}" for t, v in best.items())
        print(f"probed {planned.label}: best held-out score {scores}", flush=True)


def census_stage(runs: list[PlannedRun], progress: bool = True) -> None:
    for planned in runs:
        summary = census_run(planned.run_dir, planned.preset.census, progress=progress)
        print(f"census {planned.label}: {summary}", flush=True)


def analyze_stage(runs: list[PlannedRun], progress: bool = True) -> None:
    for planned in runs:
        if not planned.study.analyses:
            continue
        context = RunContext(planned.run_dir, planned.run, planned.preset)
        tables: dict[str, list[dict]] = {}
        for analysis in planned.study.analyses:
            for name, rows in analysis(context).items():
                tables.setdefault(name, []).extend(rows)
        for name, rows in tables.items():
            write_csv(planned.run_dir / f"{name}.csv", rows)
        print(f"analysed {planned.label}: {sorted(tables)}", flush=True)


def causal_stage(runs: list[PlannedRun], progress: bool = True) -> None:
    for planned in runs:
        rows = causal_run(planned.run_dir, planned.preset.causal, planned.study.steering)
        print(f"causal {planned.label}: {len(rows)} rows", flush=True)


def records(runs: list[PlannedRun]) -> list[RunRecord]:
    """The finished runs among ``runs`` (those with a summary), for the tables."""
    return [
        RunRecord(
            keys={k: p.run[k] for k in ("experiment", "study", "condition", "model", "seed")},
            run_dir=p.run_dir,
            task=p.run["task"],
            architecture=p.run["architecture"],
            gate=p.study.gate,
            headline=p.study.headline,
        )
        for p in runs
        if (p.run_dir / "summary.json").is_file()
    ]


def tables_stage(all_runs: list[PlannedRun], results_dir: Path) -> dict[str, pd.DataFrame]:
    """Tables of every finished run of the experiment (not only the selected ones)."""
    found = records(all_runs)
    if not found:
        raise FileNotFoundError(f"no finished runs for {results_dir.parent} (train first)")
    tables = write_tables(found, results_dir)
    print(f"wrote {len(tables)} tables of {len(found)} runs to {results_dir}", flush=True)
    return tables


def figures_stage(runs: list[PlannedRun], tables: dict[str, pd.DataFrame], out_dir: Path) -> None:
    studies = {p.study.name: p.study for p in runs}
    for study in studies.values():
        stem = draw_figure(study.figure or study.name, study, tables, out_dir)
        print(f"wrote {stem}.png and .pdf", flush=True)


STAGE_FUNCTIONS: dict[str, Callable[..., None]] = {
    "train": train_stage,
    "probe": probe_stage,
    "census": census_stage,
    "analyze": analyze_stage,
    "causal": causal_stage,
}
