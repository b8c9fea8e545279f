import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from harness import Timing, interleaved, ratio  # noqa: E402


def test_interleaved_runs_each_contender_every_round_in_rotating_order():
    calls = []
    timings = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, 1)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert [len(t.seconds) for t in timings.values()] == [3, 3]


def test_ratio_is_the_median_of_per_round_ratios():
    timings = {"fast": Timing("fast", [1.0, 1.0, 10.0]), "slow": Timing("slow", [3.0, 2.0, 40.0])}
    assert ratio(timings, "fast", "slow") == 3.0
    with pytest.raises(ValueError):
        interleaved({"a": lambda: None}, rounds=0)
