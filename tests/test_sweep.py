"""Sweeps on a local Ray instance: the same results as serial runs, a killed worker's run
resumed to the same weights, a failing run reported while the others finish, grid points
that the tables tell apart."""

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lab.config import ConfigError
from models.checkpoint import META_KEY
from models.train import train
from studies.cli import main
from studies.plan import Selection
from studies.sweep import LOG, load_sweep, sweep

TINY = [
    "studies=['copying', 'time_cells']",
    "train.steps=4",
    "train.checkpoint_every=2",
    "probe.n_sequences=16",
]
"""Smoke-sized runs of two studies (the tables stage plans every run of the preset's
studies)."""


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module (sweeps join it instead of starting one)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def one_thread():
    """Runs in this process with the thread count of a sweep's runs (and the CLI's
    flushing of denormals), for bitwise comparisons."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)
    torch.set_num_threads(threads)


def tiny(out_root, *overrides, grid=()):
    return load_sweep("smoke", [*TINY, f"out_root={str(out_root)!r}", *overrides], list(grid))


def checkpoint(run_dir):
    """Every tensor of a run's checkpoint (weights, optimizer state, the training streams'
    RNG state)."""
    return load_file(run_dir / "checkpoint.safetensors")


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_sweep_results_equal_serial_runs_bitwise(tmp_path, local_ray, one_thread):
    select = Selection(studies=("copying",), models=("lstm", "mamba"))
    parallel = sweep(tiny(tmp_path / "ray"), select, progress=False)
    serial = sweep(tiny(tmp_path / "serial"), select, serial=True, progress=False)
    assert [o.status for o in parallel] == ["done", "done"]
    assert [o.label for o in parallel] == [o.label for o in serial]
    for p, s in zip(parallel, serial, strict=True):
        ray_dir, serial_dir = Path(p.run_dir), Path(s.run_dir)
        assert_same_tensors(checkpoint(ray_dir), checkpoint(serial_dir))
        ray_summary = json.loads((ray_dir / "summary.json").read_text())
        serial_summary = json.loads((serial_dir / "summary.json").read_text())
        for key in ("final", "curves", "n_params"):
            assert ray_summary[key] == serial_summary[key]
        for name in ("probes.csv", "cells.csv", "census.csv", "causal.csv"):
            assert (ray_dir / name).read_text() == (serial_dir / name).read_text(), name
        probe_weights = "probe_weights.safetensors"
        assert_same_tensors(
            load_file(ray_dir / probe_weights), load_file(serial_dir / probe_weights)
        )
        assert "1 torch thread(s)" in (ray_dir / LOG).read_text()
    for name in ("runs.csv", "summary.csv", "probes.csv"):
        ray_table = pd.read_csv(tmp_path / "ray/smoke/results" / name)
        serial_table = pd.read_csv(tmp_path / "serial/smoke/results" / name)
        columns = [c for c in ray_table.columns if c != "train_seconds"]
        pd.testing.assert_frame_equal(ray_table[columns], serial_table[columns])
    # a finished run is not trained again
    ckpt = Path(parallel[0].run_dir) / "checkpoint.safetensors"
    before = ckpt.stat().st_mtime_ns
    again = sweep(tiny(tmp_path / "ray"), select, progress=False)
    assert [o.status for o in again] == ["done", "done"]
    assert ckpt.stat().st_mtime_ns == before


def test_seeds_batched_on_ray_equal_the_serial_sweep_bitwise(tmp_path, local_ray, one_thread):
    """The seeds of a condition and arm train as one job on Ray as in the serial stage;
    each run's later stages wait for it."""
    select = Selection(studies=("copying",), models=("lstm",))
    spec = tiny(tmp_path / "ray", "seeds=[0, 1]")
    parallel = sweep(spec, select, progress=False)
    serial = sweep(tiny(tmp_path / "serial", "seeds=[0, 1]"), select, serial=True, progress=False)
    assert [o.status for o in parallel] == ["done", "done"]
    for p, s in zip(parallel, serial, strict=True):
        ray_dir, serial_dir = Path(p.run_dir), Path(s.run_dir)
        assert_same_tensors(checkpoint(ray_dir), checkpoint(serial_dir))
        for run_dir in (ray_dir, serial_dir):
            assert json.loads((run_dir / "summary.json").read_text())["batch_seeds"] == [0, 1]
        assert (ray_dir / "census.csv").read_text() == (serial_dir / "census.csv").read_text()
        log = (ray_dir / LOG).read_text()
        assert "batched training of seeds 0, 1" in log and "attempt 1:" in log


def test_errors_of_a_batched_training_job_are_its_runs_outcomes(tmp_path, local_ray):
    spec = tiny(tmp_path, "seeds=[0, 1]", "train.lr=1e30")  # every loss overflows at once
    select = Selection(studies=("copying",), models=("lstm",))
    outcomes = sweep(spec, select, progress=False)
    assert [o.status for o in outcomes] == ["failed", "failed"]
    for outcome in outcomes:
        assert outcome.error.startswith("FloatingPointError: ") and "loss is" in outcome.error
        log = (Path(outcome.run_dir) / LOG).read_text()
        assert log.count("batched training") == 1  # not retried
        assert "FloatingPointError" in log


RAY_FREE = """
import sys
sys.modules["ray"] = None  # `import ray` raises ImportError
from studies.cli import main
common = sys.argv[1:]
for stage in ("plan", "train", "probe"):
    main([stage, *common])
main(["paper", "--serial", *common])
print("ray-free:", "ray" in sys.modules and sys.modules["ray"] is None)
"""


def test_plan_the_single_stages_and_paper_serial_run_without_ray(tmp_path):
    import subprocess
    import sys

    sets = [*TINY, f"out_root={str(tmp_path)!r}"]
    argv = ["--preset", "smoke", "--study", "time_cells", "--model", "lstm", "--no-progress"]
    done = subprocess.run(
        [sys.executable, "-c", RAY_FREE, *argv, "--set", *sets],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ray-free: True" in done.stdout
    assert "sweep: 1 of 1 runs done" in done.stdout
    assert (tmp_path / "smoke/time_cells/intervals/lstm/seed0/census.csv").is_file()


def worker_pid(log_path):
    if not log_path.is_file():
        return None
    found = re.search(r"attempt 1: .* pid (\d+),", log_path.read_text())
    return int(found.group(1)) if found else None


def test_killed_worker_is_retried_and_resumes_to_the_uninterrupted_weights(
    tmp_path, local_ray, one_thread
):
    steps, every = 400, 5
    spec = tiny(
        tmp_path,
        f"train.steps={steps}",
        f"train.checkpoint_every={every}",
        f"train.log_every={every}",
        f"train.eval_every={steps}",
    )
    select = Selection(studies=("copying",), models=("lstm",))
    outcomes = []
    thread = threading.Thread(target=lambda: outcomes.extend(sweep(spec, select, progress=False)))
    thread.start()
    run_dir = tmp_path / "smoke/copying/copy/lstm/seed0"
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoint.safetensors").is_file() or worker_pid(run_dir / LOG) is None:
        assert time.monotonic() < deadline and thread.is_alive(), "the run never checkpointed"
        time.sleep(0.01)
    os.kill(worker_pid(run_dir / LOG), signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive()

    [outcome] = outcomes
    assert (outcome.status, outcome.attempt) == ("done", 2), outcome
    log = (run_dir / LOG).read_text()
    second = log[log.index("attempt 2:") :]
    # the retried attempt's training bar starts at the step of the last checkpoint
    resumed = int(re.search(rf"(\d+)/{steps} \[", second).group(1))
    assert 0 < resumed < steps and resumed % every == 0, resumed
    straight = tmp_path / "straight"
    train(json.loads((run_dir / "config.json").read_text()), straight, progress=False)
    assert_same_tensors(checkpoint(run_dir), checkpoint(straight))
    with safe_open(run_dir / "checkpoint.safetensors", framework="pt") as f:
        assert json.loads(f.metadata()[META_KEY])["step"] == steps


def test_failing_run_is_reported_not_retried_and_the_others_finish(tmp_path, local_ray):
    spec = tiny(tmp_path, "study.copying.train.lr=1e30")  # the loss overflows at once
    select = Selection(models=("lstm",))
    outcomes = {o.label: o for o in sweep(spec, select, progress=False)}
    failed, done = outcomes["copying/copy/lstm/seed0"], outcomes["time_cells/intervals/lstm/seed0"]
    assert failed.status == "failed" and failed.error.startswith("FloatingPointError: ")
    assert "loss is" in failed.error
    assert done.status == "done" and done.error is None
    failed_log = (tmp_path / "smoke/copying/copy/lstm/seed0" / LOG).read_text()
    assert failed_log.count(" attempt ") == 1  # not retried
    assert "Traceback" in failed_log and "FloatingPointError" in failed_log
    assert (tmp_path / "smoke/time_cells/intervals/lstm/seed0/census.csv").is_file()
    summary = json.loads((tmp_path / "smoke/sweep.json").read_text())
    errors = {r["label"]: r["error"] for r in summary["runs"]}
    assert errors == {failed.label: failed.error, done.label: None}
    runs = pd.read_csv(tmp_path / "smoke/results/runs.csv")
    assert list(runs["study"]) == ["time_cells"]


def test_cli_reports_a_failed_run_and_exits_nonzero(tmp_path, local_ray, capsys):
    argv = ["sweep", "--preset", "smoke", "--study", "copying", "--model", "lstm"]
    sets = [*TINY, f"out_root={str(tmp_path)!r}", "train.lr=1e30"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--no-progress", "--set", *sets])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "0 of 1 runs done, 1 failed" in out
    assert "FAILED copying/copy/lstm/seed0: FloatingPointError" in out


def test_grid_axes_of_the_preset_and_the_command_line_make_every_combination(tmp_path):
    spec = tiny(tmp_path, "sweep.grid={'train.lr': [0.001, 0.002]}", grid=["train.steps=[2, 4]"])
    assert spec.axes == {"train.lr": [0.001, 0.002], "train.steps": [2, 4]}
    assert [p.preset.experiment for p in spec.points] == [
        "smoke_train.lr-0.001_train.steps-2",
        "smoke_train.lr-0.001_train.steps-4",
        "smoke_train.lr-0.002_train.steps-2",
        "smoke_train.lr-0.002_train.steps-4",
    ]
    assert [(p.preset.train.lr, p.preset.train.steps) for p in spec.points] == [
        (0.001, 2),
        (0.001, 4),
        (0.002, 2),
        (0.002, 4),
    ]
    # the command line replaces the preset's axis of the same key
    spec = tiny(tmp_path, "sweep.grid={'train.lr': [0.001, 0.002]}", grid=["train.lr=[0.003]"])
    assert spec.axes == {"train.lr": [0.003]}
    assert [p.preset.train.lr for p in spec.points] == [0.003]


def test_grid_points_are_their_own_experiments_and_the_grid_tables_tell_them_apart(tmp_path):
    spec = tiny(tmp_path, grid=["train.lr=[0.001, 0.002]", "train.steps=[3]"])
    names = ["smoke_train.lr-0.001_train.steps-3", "smoke_train.lr-0.002_train.steps-3"]
    assert [p.preset.experiment for p in spec.points] == names
    select = Selection(studies=("copying",), models=("lstm",))
    outcomes = sweep(spec, select, serial=True, progress=False)
    assert [Path(o.run_dir) for o in outcomes] == [
        tmp_path / name / "copying/copy/lstm/seed0" for name in names
    ]
    runs = pd.read_csv(tmp_path / "smoke/grid/runs.csv")
    assert list(runs.columns[:3]) == ["experiment", "train.lr", "train.steps"]
    assert list(zip(runs["experiment"], runs["train.lr"], runs["steps"], strict=True)) == [
        (names[0], 0.001, 3),
        (names[1], 0.002, 3),
    ]
    summary = pd.read_csv(tmp_path / "smoke/grid/summary.csv")
    loss = summary[summary["metric"] == "loss"]
    assert list(loss["train.lr"]) == [0.001, 0.002]
    for name, lr in zip(names, (0.001, 0.002), strict=True):
        one = pd.read_csv(tmp_path / name / "results/runs.csv")
        assert list(one["experiment"]) == [name]
        config = json.loads((tmp_path / name / "copying/copy/lstm/seed0/config.json").read_text())
        assert config["train"]["lr"] == lr
        own = pd.read_csv(tmp_path / name / "results/summary.csv")
        assert float(own.loc[own["metric"] == "loss", "mean"].iloc[0]) == pytest.approx(
            float(loss.loc[loss["train.lr"] == lr, "mean"].iloc[0])
        )
    assert json.loads((tmp_path / "smoke/sweep.json").read_text())["grid"] == spec.axes


@pytest.mark.parametrize(
    "overrides, grid, message",
    [
        ([], ["train.lr=0.001"], r"--grid 'train.lr=0.001' is not of the form key=\[value"),
        ([], ["train.lrr=[1, 2]"], r"unknown field\(s\) \['lrr'\]; valid: .*'lr'"),
        ([], ["experiment=['a', 'b']"], r"grid axis 'experiment': a grid may not vary"),
        ([], ["train.lr=[]"], r"grid axis 'train.lr' must list at least one value"),
        ([], ["train.lr=[0.001, 1e-3]"], r"grid axis 'train.lr' lists a value twice"),
        ([], ["models=[['lstm']]"], r"values \[\['lstm'\]\] cannot name a directory"),
        (["sweep.threads_per_run=0"], [], r"sweep.threads_per_run must be a whole number >= 1"),
        (["sweep.thread=2"], [], r"\[sweep\]: unknown field\(s\) \['thread'\]; valid"),
    ],
)
def test_bad_sweep_settings_are_named(overrides, grid, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep("smoke", overrides, grid)


def test_other_stages_read_a_preset_with_a_sweep_table_and_refuse_sweep_flags(tmp_path, capsys):
    preset = tmp_path / "grid.toml"
    preset.write_text(
        'experiment = "g"\nmodels = ["lstm"]\n[sweep]\nthreads_per_run = 2\n'
        'grid = { "train.lr" = [0.001, 0.002] }\n'
    )
    main(["plan", "--preset", str(preset), "--study", "copying"])
    assert "copying/copy/lstm/seed0" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--preset", str(preset), "--grid", "train.lr=[1, 2]"])
    assert "--grid and --serial are options of sweep and paper" in capsys.readouterr().err
    spec = load_sweep(str(preset))
    assert spec.config.threads_per_run == 2
    assert [p.preset.experiment for p in spec.points] == ["g_train.lr-0.001", "g_train.lr-0.002"]
