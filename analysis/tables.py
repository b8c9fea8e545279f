"""Results tables: every run's outputs gathered into tidy CSV files (one row per
observation) under ``<experiment>/results/``, and aggregated across seeds with bootstrap
confidence intervals. Figures read only these tables.

Per run, the stages leave in its directory: ``summary.json`` (training: final held-out
metrics and curves), ``probes.csv``, ``cells.csv`` and ``census.csv`` (probing and census),
``curves.csv`` and ``metrics.csv`` (study-specific analyses), ``causal.csv`` (interventions).
:func:`write_tables` prefixes each row with the run's keys and writes:

============== ===========================================================================
runs.csv       one row per run: keys, task, architecture, n_params, steps, train_seconds,
               converged (the study's gate), gate, gate_value, and the headline metrics
metrics.csv    run keys, metric, hook ('' for run-level), value: final eval metrics,
               census summaries, study analyses
curves.csv     run keys, source ('network' or a baseline), curve, hook, x, value, count
probes.csv     run keys + :data:`probes.run.COLUMNS`
cells.csv      run keys + :data:`analysis.census.CELL_COLUMNS`
causal.csv     run keys + the intervention columns (see :mod:`probes.causal`)
summary.csv    study, condition, model, metric, hook: n_seeds, mean, ci_low, ci_high
               (95% bootstrap of the mean over seeds), n_converged
============== ===========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lab.io import atomic_write, read_json

KEYS = ("experiment", "study", "condition", "model", "seed")
PER_RUN_TABLES = ("probes", "cells", "census", "curves", "metrics", "causal", "points")


@dataclass(frozen=True)
class Gate:
    """A run is converged when its final eval ``metric`` is at least (``above``) or at
    most ``threshold``; ``why`` says what that means for the task."""

    metric: str
    threshold: float
    above: bool = True
    why: str = ""

    def passes(self, final: dict[str, Any]) -> bool | None:
        """Whether ``final`` passes (None where the metric is missing)."""
        value = final.get(self.metric)
        if value is None:
            return None
        return value >= self.threshold if self.above else value <= self.threshold

    def describe(self) -> str:
        return f"{self.metric} {'>=' if self.above else '<='} {self.threshold:g}"


@dataclass(frozen=True)
class RunRecord:
    """What the tables need to know of one run besides its files."""

    keys: dict[str, Any]
    """experiment, study, condition, model, seed."""
    run_dir: Path
    task: str
    architecture: str
    gate: Gate | None
    """The study's convergence gate (None: the study has none)."""
    headline: tuple[str, ...]


def collect(records: list[RunRecord]) -> dict[str, pd.DataFrame]:
    """All tables of :func:`write_tables` (except summary.csv) as data frames."""
    runs, metrics, curves = [], [], []
    per_run: dict[str, list[pd.DataFrame]] = {name: [] for name in PER_RUN_TABLES}
    for record in records:
        summary = read_json(record.run_dir / "summary.json", "run summary (train the run first)")
        final = summary["final"]
        extra = _read_csv(record.run_dir / "metrics.csv")
        census = _read_csv(record.run_dir / "census.csv")
        scalars = {**final}
        for frame in (extra, census):
            if frame is not None:
                pooled = frame[frame["hook"].fillna("") == ""]
                scalars.update(dict(zip(pooled["metric"], pooled["value"], strict=True)))
        row = {
            **record.keys,
            "task": record.task,
            "architecture": record.architecture,
            "n_params": summary["n_params"],
            "steps": summary["steps"],
            "train_seconds": summary["train_seconds"],
            "converged": None if record.gate is None else record.gate.passes(final),
            "gate": None if record.gate is None else record.gate.describe(),
            "gate_value": None if record.gate is None else final.get(record.gate.metric),
        }
        row.update({name: scalars.get(name) for name in record.headline})
        runs.append(row)
        metrics += [
            {**record.keys, "metric": name, "hook": "", "value": value}
            for name, value in {**final, "chance_accuracy": summary["chance_accuracy"]}.items()
        ]
        curves += [{**record.keys, "source": "network", "hook": "", **c} for c in summary["curves"]]
        for name in PER_RUN_TABLES:
            frame = _read_csv(record.run_dir / f"{name}.csv")
            if frame is not None:
                per_run[name].append(frame.assign(**record.keys)[[*KEYS, *frame.columns]])
    tables = {"runs": pd.DataFrame(runs)}
    metric_frames = [pd.DataFrame(metrics), *per_run.pop("metrics"), *per_run.pop("census")]
    tables["metrics"] = pd.concat(metric_frames, ignore_index=True)
    tables["curves"] = pd.concat([pd.DataFrame(curves), *per_run.pop("curves")], ignore_index=True)
    for name, frames in per_run.items():
        if frames:
            tables[name] = pd.concat(frames, ignore_index=True)
    return tables


def aggregate(metrics: pd.DataFrame, runs: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Mean and 95% bootstrap CI over seeds of every (study, condition, model, metric, hook),
    with how many of those seeds' runs converged."""
    groups = ["study", "condition", "model", "metric", "hook"]
    data = metrics.merge(runs[[*KEYS, "converged"]], on=list(KEYS), how="left")
    data = data[pd.to_numeric(data["value"], errors="coerce").notna()]
    rng = np.random.default_rng(seed)
    rows = []
    for key, group in data.groupby(groups, sort=False, dropna=False):
        values = group["value"].astype(float).to_numpy()
        low, high = bootstrap_ci(values, rng)
        rows.append(
            {
                **dict(zip(groups, key, strict=True)),
                "n_seeds": len(values),
                "mean": values.mean(),
                "ci_low": low,
                "ci_high": high,
                "n_converged": int((group["converged"] == True).sum()),  # noqa: E712
            }
        )
    return pd.DataFrame(rows)


def bootstrap_ci(
    values: np.ndarray, rng: np.random.Generator, level: float = 0.95, n_boot: int = 10_000
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (NaN with fewer than 2 values)."""
    if len(values) < 2:
        return float("nan"), float("nan")
    means = rng.choice(values, size=(n_boot, len(values)), replace=True).mean(1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def write_tables(records: list[RunRecord], results_dir: Path) -> dict[str, pd.DataFrame]:
    """Collect, aggregate and write every table to ``results_dir`` (atomically, each). A
    table with no rows and no columns (no run has curves, say) is not written, and a copy
    left by an earlier call is removed, as for the per-run tables no run has."""
    tables = collect(records)
    tables["summary"] = aggregate(tables["metrics"], tables["runs"])
    for name in [name for name, frame in tables.items() if frame.columns.empty]:
        del tables[name]
        (Path(results_dir) / f"{name}.csv").unlink(missing_ok=True)
    for name, frame in tables.items():
        atomic_write(
            Path(results_dir) / f"{name}.csv", lambda tmp, f=frame: f.to_csv(tmp, index=False)
        )
    return tables


def read_tables(results_dir: Path) -> dict[str, pd.DataFrame]:
    """The tables written by :func:`write_tables` (those that exist)."""
    results_dir = Path(results_dir)
    if not (results_dir / "runs.csv").is_file():
        raise FileNotFoundError(f"{results_dir}: no results tables here (run the tables stage)")
    return {p.stem: pd.read_csv(p) for p in sorted(results_dir.glob("*.csv"))}


def _read_csv(path: Path) -> pd.DataFrame | None:
    """The table at ``path``; None if there is none or it has no rows."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    frame = pd.read_csv(path)
    return None if frame.empty else frame
