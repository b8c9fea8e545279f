"""Results tables from run directories: keys on every row, the gate, bootstrap intervals."""

import json

import numpy as np
import pytest

from analysis.tables import Gate, RunRecord, bootstrap_ci, read_tables, write_tables
from lab.io import write_csv, write_json

GATE = Gate("accuracy", references=("history_free", "clock"), closes=0.5)
REFERENCES = {
    "history_free": {"loss": 2.0, "accuracy": 0.2},
    "clock": {"loss": 2.1, "accuracy": 0.1},
}


def fake_run(root, model, seed, accuracy, frac_place, gate=GATE, references=REFERENCES):
    keys = {"experiment": "x", "study": "s", "condition": "c", "model": model, "seed": seed}
    run_dir = root / model / f"seed{seed}"
    write_json(
        run_dir / "summary.json",
        {
            "n_params": 100,
            "steps": 10,
            "train_seconds": 1.0,
            "final": {"accuracy": accuracy, "loss": 1 - accuracy},
            "references": references,
            "chance_accuracy": 0.1,
            "curves": [{"curve": "acc_by_len", "x": 1.0, "value": accuracy, "count": 4}],
        },
    )
    write_csv(run_dir / "census.csv", [{"metric": "frac_place", "hook": "", "value": frac_place}])
    write_csv(
        run_dir / "probes.csv",
        [{"hook": "h", "depth": 0, "target": "pos", "score": 0.5, "untrained": 0.1}],
    )
    return RunRecord(keys, run_dir, "task", model, gate, ("accuracy", "frac_place"))


def test_tables_carry_run_keys_gate_and_headline(tmp_path):
    records = [
        fake_run(tmp_path, "lstm", 0, 0.9, 0.2),
        fake_run(tmp_path, "lstm", 1, 0.3, 0.4),
        fake_run(tmp_path, "mamba", 0, 0.7, 0.0),
    ]
    write_tables(records, tmp_path / "results")
    tables = read_tables(tmp_path / "results")
    runs = tables["runs"].set_index(["model", "seed"])
    # the best reference is history_free (0.2): passing needs accuracy >= 0.2 + 0.5 * 0.8
    assert runs.loc[("lstm", 0), "converged"] and not runs.loc[("lstm", 1), "converged"]
    assert runs.loc[("mamba", 0), "converged"]
    assert set(runs["gate_reference"]) == {"history_free"}
    assert set(runs["gate_reference_value"]) == {0.2}
    assert runs.loc[("lstm", 0), "gate_closed"] == pytest.approx((0.9 - 0.2) / 0.8)
    assert runs.loc[("lstm", 1), "gate_closed"] == pytest.approx((0.3 - 0.2) / 0.8)
    assert runs.loc[("lstm", 1), "gate_value"] == 0.3
    assert runs.loc[("lstm", 1), "frac_place"] == 0.4
    assert runs.loc[("lstm", 0), "gate"] == (
        "accuracy closes >= 0.5 of the gap from history_free or clock to 1"
    )
    metrics = tables["metrics"].set_index(["model", "seed", "metric"])["value"]
    assert metrics[("lstm", 1, "clock_accuracy")] == 0.1
    assert metrics[("lstm", 1, "history_free_loss")] == 2.0
    assert metrics[("lstm", 1, "gate_closed")] == pytest.approx(0.125)
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


@pytest.mark.parametrize(
    "gate, value, reference, closed",
    [
        # higher is better: accuracy from the better of two references towards 1
        (Gate("acc", ("a", "b"), closes=0.5), 0.75, ("b", 0.5), 0.5),
        (Gate("acc", ("a", "b"), closes=0.5), 0.7, ("b", 0.5), 0.4),
        (Gate("acc", ("a", "b"), closes=0.5), 0.4, ("b", 0.5), -0.2),
        # lower is better: an error or a KL from the lower of two references towards 0
        (Gate("err", ("a", "b"), closes=0.7, best=0.0), 0.25, ("a", 0.8), 0.6875),
        (Gate("err", ("a", "b"), closes=0.6, best=0.0), 0.25, ("a", 0.8), 0.6875),
        (Gate("err", ("a", "b"), closes=0.5, best=0.0), 1.0, ("a", 0.8), -0.25),
    ],
)
def test_gate_closes_the_gap_from_the_best_reference_in_either_direction(
    gate, value, reference, closed
):
    references = {"a": {"acc": 0.3, "err": 0.8}, "b": {"acc": 0.5, "err": 0.9}}
    result = gate.judge({gate.metric: value}, references)
    assert (result.reference, result.reference_value) == reference
    assert result.value == value and result.closed == pytest.approx(closed)
    assert result.passed == (closed >= gate.closes)


def test_gate_edge_cases():
    gate = Gate("acc", ("a", "b"), closes=0.5)
    # a perfect reference leaves no gap to close: nobody passes
    perfect = gate.judge({"acc": 1.0}, {"a": {"acc": 1.0}, "b": {"acc": 0.5}})
    assert perfect.reference == "a" and perfect.closed is None and perfect.passed is False
    # a metric no position scored (None) leaves the gate undecided
    assert gate.judge({"acc": None}, {"a": {"acc": 0.2}, "b": {"acc": 0.1}}).passed is None
    only_b = gate.judge({"acc": 0.9}, {"a": {"acc": None}, "b": {"acc": 0.5}})
    assert only_b.reference == "b" and only_b.passed
    with pytest.raises(KeyError, match=r"no reference predictor \['b'\].*the run has \['a'\]"):
        gate.judge({"acc": 0.9}, {"a": {"acc": 0.2}})
    with pytest.raises(ValueError, match="closes must be in"):
        Gate("acc", closes=0.0)
    with pytest.raises(ValueError, match="at least one reference"):
        Gate("acc", references=())


def test_a_summary_without_the_gates_references_is_named(tmp_path):
    old = fake_run(tmp_path / "old", "lstm", 0, 0.9, 0.2, references={})
    with pytest.raises(ValueError, match="summary.json: no reference predictors' metrics"):
        write_tables([old], tmp_path / "results")
    other = fake_run(tmp_path / "other", "lstm", 0, 0.9, 0.2, references={"unigram": {}})
    with pytest.raises(ValueError, match=r"summary.json: no reference predictor \['history_free'"):
        write_tables([other], tmp_path / "results")
    # a study without a gate needs no references
    ungated = fake_run(tmp_path / "ungated", "lstm", 0, 0.9, 0.2, gate=None, references={})
    runs = write_tables([ungated], tmp_path / "results")["runs"]
    assert runs[["converged", "gate_reference", "gate_closed"]].isna().all(axis=None)


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
