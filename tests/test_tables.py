"""Results tables from run directories: keys on every row, the gate, bootstrap intervals."""

import json

import numpy as np
import pytest

from analysis.tables import Gate, RunRecord, bootstrap_ci, read_tables, write_tables
from lab.io import write_csv, write_json


def fake_run(root, model, seed, accuracy, frac_place):
    keys = {"experiment": "x", "study": "s", "condition": "c", "model": model, "seed": seed}
    run_dir = root / model / f"seed{seed}"
    write_json(
        run_dir / "summary.json",
        {
            "n_params": 100,
            "steps": 10,
            "train_seconds": 1.0,
            "final": {"accuracy": accuracy, "loss": 1 - accuracy},
            "chance_accuracy": 0.1,
            "curves": [{"curve": "acc_by_len", "x": 1.0, "value": accuracy, "count": 4}],
        },
    )
    write_csv(run_dir / "census.csv", [{"metric": "frac_place", "hook": "", "value": frac_place}])
    write_csv(
        run_dir / "probes.csv",
        [{"hook": "h", "depth": 0, "target": "pos", "score": 0.5, "untrained": 0.1}],
    )
    return RunRecord(
        keys, run_dir, "task", model, Gate("accuracy", 0.5), ("accuracy", "frac_place")
    )


def test_tables_carry_run_keys_gate_and_headline(tmp_path):
    records = [
        fake_run(tmp_path, "lstm", 0, 0.9, 0.2),
        fake_run(tmp_path, "lstm", 1, 0.3, 0.4),
        fake_run(tmp_path, "mamba", 0, 0.7, 0.0),
    ]
    write_tables(records, tmp_path / "results")
    tables = read_tables(tmp_path / "results")
    runs = tables["runs"].set_index(["model", "seed"])
    assert runs.loc[("lstm", 0), "converged"] and not runs.loc[("lstm", 1), "converged"]
    assert runs.loc[("lstm", 1), "frac_place"] == 0.4
    assert runs.loc[("lstm", 0), "gate"] == "accuracy >= 0.5"
    probes = tables["probes"]
    assert list(probes.columns[:5]) == ["experiment", "study", "condition", "model", "seed"]
    assert len(probes) == 3 and len(tables["curves"]) == 3
    summary = tables["summary"].set_index(["model", "metric"])
    row = summary.loc[("lstm", "accuracy")]
    assert row["n_seeds"] == 2 and row["mean"] == pytest.approx(0.6)
    assert row["n_converged"] == 1
    assert 0.3 <= row["ci_low"] <= row["mean"] <= row["ci_high"] <= 0.9
    assert np.isnan(summary.loc[("mamba", "accuracy"), "ci_low"])  # one seed: no interval
    assert summary.loc[("lstm", "frac_place"), "mean"] == pytest.approx(0.3)


def test_bootstrap_interval_covers_the_mean_of_a_known_sample():
    rng = np.random.default_rng(0)
    values = rng.normal(5.0, 1.0, size=40)
    low, high = bootstrap_ci(values, np.random.default_rng(1))
    assert low < values.mean() < high
    assert high - low == pytest.approx(2 * 1.96 * values.std() / np.sqrt(40), rel=0.2)


def test_missing_results_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results tables"):
        read_tables(tmp_path)
    record = fake_run(tmp_path, "lstm", 0, 0.9, 0.2)
    (record.run_dir / "summary.json").unlink()
    with pytest.raises(FileNotFoundError, match="summary.json: no run summary"):
        write_tables([record], tmp_path / "results")
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").glob("*.csv"))


def test_runs_without_curves_leave_no_unreadable_table(tmp_path):
    """A task with no curves: curves.csv is not written (and an old one is removed), so
    the tables read back, and the figures' empty-table path applies."""
    record = fake_run(tmp_path, "lstm", 0, 0.9, 0.2)
    summary = record.run_dir / "summary.json"
    write_json(summary, {**json.loads(summary.read_text()), "curves": []})
    results = tmp_path / "results"
    write_csv(results / "curves.csv", [{"stale": 1}])
    write_tables([record], results)
    tables = read_tables(results)
    assert "curves" not in tables and not (results / "curves.csv").exists()
    assert len(tables["runs"]) == 1
