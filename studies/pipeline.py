"""The stages of a study, each over a list of planned runs:

    train -> probe -> census -> analyze -> causal -> tables -> figures

``train`` resumes runs that exist and skips finished ones, and trains the seeds of a
condition and arm as one batched model (``train.batch_seeds``, :mod:`models.train_seeds`);
``probe`` caches activations on held-out environments and decodes the task's targets;
``census`` scores every unit;
``analyze`` runs the study's own analyses; ``causal`` ablates the labelled populations and
steers along probe directions (:mod:`studies.causal`); ``tables`` gathers every finished run of the
experiment into ``results/*.csv``; ``figures`` draws each study's figure from those tables.

Every stage that writes a run directory holds its lock (:mod:`lab.lock`) and records what
each artefact was made from (:mod:`lab.provenance`); ``analyze`` and ``causal`` refuse
inputs made with other settings, and ``tables`` refuses any artefact not made from the run's config,
its final checkpoint and the preset's settings, so no figure is drawn from stale results.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from analysis.census import OUTPUTS as CENSUS_OUTPUTS
from analysis.census import census_run
from analysis.figures import draw_figure
from analysis.tables import PER_RUN_TABLES, RunRecord, write_tables
from lab import provenance
from lab.io import write_csv
from lab.lock import run_lock
from models.train import SUMMARY, train
from models.train_seeds import seedless, train_seeds
from probes.run import OUTPUTS as PROBE_OUTPUTS
from probes.run import probe_run
from studies.causal import causal_run
from studies.plan import PlannedRun
from studies.study import RunContext

STAGES = ("train", "probe", "census", "analyze", "causal", "tables", "figures")


def train_stage(runs: list[PlannedRun], progress: bool = True) -> None:
    """Train (or resume) every run, the seeds of a condition and arm together where
    ``train.batch_seeds`` allows; a run whose loss is not finite stops the stage once the
    runs trained with it are done."""
    for job in train_jobs(runs):
        for planned, result in zip(job, train_job(job, progress), strict=True):
            if isinstance(result, BaseException):
                raise result
            final = ", ".join(
                f"{k}={v:.3f}" for k, v in result["final"].items() if isinstance(v, float)
            )
            print(f"trained {planned.label}: {result['n_params']} params, {final}", flush=True)


def train_jobs(runs: list[PlannedRun]) -> list[list[PlannedRun]]:
    """``runs`` as training jobs, in order: the runs that differ only in their seed form
    one job where their ``train.batch_seeds`` is set, every other run a job of its own."""
    jobs: dict[str, list[PlannedRun]] = {}
    for index, planned in enumerate(runs):
        key = seedless(planned.run) if planned.preset.train.batch_seeds else str(index)
        jobs.setdefault(key, []).append(planned)
    return list(jobs.values())


def train_job(job: list[PlannedRun], progress: bool = True) -> list[dict | FloatingPointError]:
    """Train (or resume) the runs of one job (see :func:`train_jobs`); return each run's
    summary, or the FloatingPointError that stopped it."""
    workers = job[0].preset.train.loader_workers
    if len(job) == 1:
        planned = job[0]
        return [train(planned.run, planned.run_dir, True, None, progress, workers)]
    runs, dirs = [p.run for p in job], [p.run_dir for p in job]
    return train_seeds(runs, dirs, resume=True, progress=progress, loader_workers=workers)


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
        if planned.study.analyses:
            print(f"analysed {planned.label}: {analyze_run(planned)}", flush=True)


def analyze_run(planned: PlannedRun) -> list[str]:
    """Run the study's own analyses of one run, holding its lock; write and record one
    ``<table>.csv`` per table they return; return the table names. The probe outputs they
    may read must be made with the preset's probe settings."""
    with run_lock(planned.run_dir):
        require_inputs(planned, {"probe": PROBE_OUTPUTS})
        context = RunContext(planned.run_dir, planned.run, planned.preset)
        tables: dict[str, list[dict]] = {}
        for analysis in planned.study.analyses:
            for name, rows in analysis(context).items():
                tables.setdefault(name, []).extend(rows)
        names = [f"{name}.csv" for name in tables]
        with provenance.rewriting(planned.run_dir, names, origin_of("analyze", planned)):
            for name, rows in tables.items():
                write_csv(planned.run_dir / f"{name}.csv", rows)
    return sorted(tables)


def causal_stage(runs: list[PlannedRun], progress: bool = True) -> None:
    for planned in runs:
        print(f"causal {planned.label}: {len(causal_in_run(planned))} rows", flush=True)


def causal_in_run(planned: PlannedRun) -> list[dict]:
    """Run the causal interventions of one run, holding its lock; write and record
    ``causal.csv``. The probe and census outputs it reads must be made with the preset's
    settings."""
    with run_lock(planned.run_dir):
        require_inputs(planned, {"probe": PROBE_OUTPUTS, "census": CENSUS_OUTPUTS})
        made_from = origin_of("causal", planned)
        with provenance.rewriting(planned.run_dir, ["causal.csv"], made_from):
            return causal_run(planned.run_dir, planned.preset.causal, planned.study.steering)


def require_inputs(planned: PlannedRun, inputs: dict[str, tuple[str, ...]]) -> None:
    """StaleError unless each artefact of ``inputs`` (stage -> names) that the run has is
    complete and made as :func:`origin_of` says for its stage."""
    recorded = provenance.read_manifest(planned.run_dir)
    for stage, names in inputs.items():
        for name in names:
            if name in recorded or (planned.run_dir / name).exists():
                remedy = f"run the {stage} stage again"
                provenance.require(planned.run_dir, name, remedy, **origin_of(stage, planned))


STAGE_SETTINGS = {
    "train": (),
    "probe": ("probe",),
    "census": ("probe", "census"),
    "analyze": ("probe",),
    "causal": ("probe", "census", "causal"),
}
"""The preset settings each stage's artefacts depend on (besides the run config)."""


def origin_of(stage: str, planned: PlannedRun) -> dict:
    """What an artefact of ``stage`` of a current run is made from: the run's config, its
    final step and the preset's settings of the stages it depends on."""
    settings = {key: vars(getattr(planned.preset, key)) for key in ("probe", "census", "causal")}
    return provenance.origin(
        stage,
        provenance.fingerprint(planned.run),
        planned.run["train"]["steps"],
        **{key: settings[key] for key in STAGE_SETTINGS[stage]},
    )


def require_current(planned: PlannedRun) -> None:
    """StaleError unless the run's summary, every artefact recorded for it and every
    per-run table in its directory is complete and made as :func:`origin_of` says."""
    recorded = provenance.read_manifest(planned.run_dir)
    tables = [f"{name}.csv" for name in PER_RUN_TABLES]
    names = {SUMMARY, *recorded, *(n for n in tables if (planned.run_dir / n).exists())}
    for name in sorted(names):
        stage = recorded.get(name, {}).get("stage", "train" if name == SUMMARY else None)
        expected = origin_of(stage, planned) if stage in STAGE_SETTINGS else {}
        remedy = f"run the {stage} stage again" if stage else "run the stage that writes it"
        provenance.require(planned.run_dir, name, remedy, **expected)


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
    """Tables of every finished run of the experiment (not only the selected ones); a
    stale artefact of any of them is refused (see :func:`require_current`)."""
    found = records(all_runs)
    if not found:
        raise FileNotFoundError(f"no finished runs for {results_dir.parent} (train first)")
    for planned in all_runs:
        if (planned.run_dir / SUMMARY).is_file():
            require_current(planned)
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
