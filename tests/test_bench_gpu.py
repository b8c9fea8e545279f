"""benchmarks/bench_gpu.py: prepared for a GPU machine, it must say what it needs where
there is none, and run its measurements end to end (on the CPU, small)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_without_cuda_it_says_so_and_exits_0():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0
    assert "needs CUDA" in done.stdout


def test_on_the_cpu_every_measurement_writes_its_result_as_it_goes(tmp_path):
    args = ["--device", "cpu", "--out", str(tmp_path), "--model", "lstm", "--seeds", "2"]
    args += ["--runs-per-gpu", "2", "--seconds", "3", "--every", "2", "--budget", "300"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    records = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records[:2]] == ["environment", "sampling"]
    training = {r["name"]: r for r in records if r["kind"] == "training"}
    assert list(training) == [
        "alone",
        "batched",
        "batched-prefetch",
        "k2-alone",
        "k2-batched-prefetch",
        "alone-prefetch",
    ]
    for name, record in training.items():
        assert record["errors"] == [] and record["steps_per_second"] > 0, name
    batched = training["k2-batched-prefetch"]
    assert (batched["processes"], batched["seeds_per_process"], batched["loader_workers"]) == (
        2,
        2,
        1,
    )
    assert "steps/s" in done.stdout and "results in" in done.stdout


def test_a_budget_too_small_skips_what_does_not_fit(tmp_path):
    args = ["--device", "cpu", "--out", str(tmp_path), "--model", "lstm", "--budget", "1"]
    args += ["--runs-per-gpu", "--seconds", "5"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} == {"environment", "sampling", "skipped"}
