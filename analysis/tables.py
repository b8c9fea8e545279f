"""Results tables: every run's outputs gathered into tidy CSV files (one row per
observation) under ``<experiment>/results/``, and aggregated across seeds with bootstrap
confidence intervals. Figures read only these tables.

Per run, the stages leave in its directory: ``summary.json`` (training: final held-out
metrics and curves), ``probes.csv``, ``cells.csv`` and ``census.csv`` (probing and census),
``curves.csv`` and ``metrics.csv`` (study-specific analyses), ``causal.csv`` (interventions).
:func:`write_tables` prefixes each row with the run's keys and writes:

============== ===========================================================================
runs.csv       one row per run: keys, task, architecture, n_params, steps, train_seconds,
               converged (the study's gate), gate, gate_value, gate_reference,
               gate_reference_value, gate_closed (see :class:`Gate`), the headline metrics
metrics.csv    run keys, metric, hook ('' for run-level), value: final eval metrics, the
               reference predictors' (``<reference>_<metric>``), gate_closed, census
               summaries, study analyses
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
    """When a run counts as trained: its final eval ``metric`` closes at least ``closes``
    of the gap between the best of its ``references`` (reference predictors scored on the
    same batches, :mod:`tasks.reference`) and a perfect score ``best``::

        closed = (network - reference) / (best - reference) >= closes

    The same formula serves higher-is-better metrics (accuracy, ``best = 1``) and
    lower-is-better ones (an error or a KL, ``best = 0``); the best reference is the one
    nearest ``best``. A reference that is already perfect leaves no gap: no run passes.
    ``why`` says what passing means for the study."""

    metric: str
    references: tuple[str, ...] = ("history_free",)
    closes: float = 0.5
    best: float = 1.0
    why: str = ""

    def __post_init__(self):
        if not self.references:
            raise ValueError(f"gate on {self.metric!r}: name at least one reference predictor")
        if not 0 < self.closes <= 1:
            raise ValueError(
                f"gate on {self.metric!r}: closes must be in (0, 1], got {self.closes}"
            )

    def judge(self, final: dict[str, Any], references: dict[str, dict[str, Any]]) -> GateResult:
        """The gate on a run's ``final`` metrics, against its ``references`` (name -> the
        reference's metrics, as in ``summary.json``); every named reference must be there."""
        missing = [name for name in self.references if name not in references]
        if missing:
            raise KeyError(
                f"no reference predictor {missing} for the gate on {self.metric!r}; "
                f"the run has {sorted(references)}"
            )
        scored = [
            (name, value)
            for name in self.references
            if (value := references[name].get(self.metric)) is not None
        ]
        value = final.get(self.metric)
        if not scored:
            return GateResult(None, None, value, None, None)
        name, reference = min(scored, key=lambda item: abs(self.best - item[1]))
        if value is None:
            return GateResult(name, reference, None, None, None)
        if reference == self.best:
            return GateResult(name, reference, value, None, False)
        closed = (value - reference) / (self.best - reference)
        return GateResult(name, reference, value, closed, closed >= self.closes)

    def describe(self) -> str:
        refs = " or ".join(self.references)
        return f"{self.metric} closes >= {self.closes:g} of the gap from {refs} to {self.best:g}"


@dataclass(frozen=True)
class GateResult:
    """A gate applied to one run: the best reference (its name and its value of the gated
    metric), the network's value, the fraction of the gap it closed and whether that
    passes (None where a value is missing)."""

    reference: str | None
    reference_value: float | None
    value: float | None
    closed: float | None
    passed: bool | None


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
        path = record.run_dir / "summary.json"
        summary = read_json(path, "run summary (train the run first)")
        final = summary["final"]
        references = summary.get("references", {})
        gate = _judge(record.gate, final, references, path)
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
            "converged": gate.passed,
            "gate": None if record.gate is None else record.gate.describe(),
            "gate_value": gate.value,
            "gate_reference": gate.reference,
            "gate_reference_value": gate.reference_value,
            "gate_closed": gate.closed,
        }
        row.update({name: scalars.get(name) for name in record.headline})
        runs.append(row)
        run_level = {**final, "chance_accuracy": summary["chance_accuracy"]}
        for reference, values in references.items():
            run_level.update({f"{reference}_{name}": value for name, value in values.items()})
        if record.gate is not None:
            run_level["gate_closed"] = gate.closed
        metrics += [
            {**record.keys, "metric": name, "hook": "", "value": value}
            for name, value in run_level.items()
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


def _judge(gate: Gate | None, final: dict, references: dict, path: Path) -> GateResult:
    """``gate`` on one run (all None without a gate); ``path``: its summary, for errors."""
    if gate is None:
        return GateResult(None, None, None, None, None)
    if not references:
        raise ValueError(
            f"{path}: no reference predictors' metrics (written before they existed); delete "
            "it and run the train stage again (only the final evaluation runs again)"
        )
    try:
        return gate.judge(final, references)
    except KeyError as error:
        raise ValueError(f"{path}: {error.args[0]}") from None


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
