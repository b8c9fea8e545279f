"""A run directory that cannot be silently corrupted (issue 14): full disks, concurrent
writers, stale results, damaged checkpoints, leftovers of killed writers. Each test names
the defect of the issue it reproduces."""

import builtins
import errno
import fcntl
import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from test_train import smoke_run, weights

from lab import provenance
from lab.config import ConfigError
from lab.lock import RunLockedError, run_lock
from lab.provenance import StaleError
from models.checkpoint import CheckpointError
from models.train import train
from probes.config import ProbeConfig
from probes.run import load_trained, probe_run
from studies.cli import main as studies_main
from studies.pipeline import analyze_run, census_stage, probe_stage, tables_stage, train_stage
from studies.plan import Selection, plan
from studies.preset import load_preset

REPO = Path(__file__).resolve().parents[1]
CKPT = "checkpoint.safetensors"
TINY = [
    "study.navigation.conditions=['square']",
    "train.steps=4",
    "train.log_every=2",
    "train.eval_every=4",
    "train.checkpoint_every=2",
    "probe.n_sequences=16",
    "probe.batch_size=8",
    "census.n_shuffles=10",
    "census.alpha=0.1",
]


def planned_run(out_root, *overrides):
    """The one run (navigation/square/lstm/seed0) of the smoke preset, made tiny."""
    preset, raw = load_preset("smoke", [f"out_root={out_root}", *TINY, *overrides])
    (run,) = plan(preset, raw, Selection(studies=("navigation",), models=("lstm",)))
    return run


def tables(planned):
    return tables_stage([planned], planned.preset.experiment_dir() / "results")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run through train, probe, census and analyze (copied by each test that uses it)."""
    root = tmp_path_factory.mktemp("finished")
    planned = planned_run(root)
    for stage in (train_stage, probe_stage, census_stage):
        stage([planned], progress=False)
    analyze_run(planned)
    return root


@pytest.fixture
def pipeline_run(finished, tmp_path):
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    return planned_run(tmp_path)


# 1. A full disk: writes name the file and leave the previous state resumable; the run
# resumes to the same final weights once space is back.


class FillingDisk:
    """The disk holding ``root``, which another process fills up during the ``fill_at``-th
    write there (counting every ``write`` call on a file opened through Python's ``open``,
    which all the lab's writes use): that write stores half its data and raises ENOSPC, as
    a full disk does. ``fill_at=None`` only records the writes."""

    def __init__(self, root: Path, fill_at: int | None = None):
        self.root, self.fill_at = Path(root).resolve(), fill_at
        self.writes: list[str] = []
        """The name of the file of every write, in order."""
        self.real_open = builtins.open

    def open(self, file, mode="r", *args, **kwargs):
        handle = self.real_open(file, mode, *args, **kwargs)
        inside = not isinstance(file, int) and Path(file).resolve().is_relative_to(self.root)
        return Metered(handle, self) if inside and set(mode) & set("wax+") else handle

    @contextmanager
    def mounted(self, monkeypatch):
        with monkeypatch.context() as patch:
            patch.setattr(builtins, "open", self.open)
            patch.setattr(io, "open", self.open)
            yield self


class Metered:
    def __init__(self, handle, disk: FillingDisk):
        self.handle, self.disk = handle, disk

    def write(self, data):
        self.disk.writes.append(Path(self.handle.name).name)
        if len(self.disk.writes) - 1 == self.disk.fill_at:
            self.handle.write(data[: len(data) // 2])
            self.handle.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def final_name(name: str) -> str:
    """The file an atomic write's temporary ``.<name>.<pid>.tmp`` becomes."""
    return name[1:].rsplit(".", 2)[0] if name.endswith(".tmp") else name


def test_a_disk_that_fills_during_any_write_of_a_run_loses_nothing(tmp_path, monkeypatch):
    run = smoke_run()
    disk = FillingDisk(tmp_path / "straight")
    with disk.mounted(monkeypatch):
        straight = train(run, tmp_path / "straight", progress=False)
    writes = disk.writes
    for index, name in enumerate(writes):
        run_dir = tmp_path / f"full{index}"
        with FillingDisk(run_dir, index).mounted(monkeypatch), pytest.raises(OSError) as full:
            train(run, run_dir, resume=True, progress=False)
        assert full.value.errno == errno.ENOSPC
        assert full.value.filename == str(run_dir / final_name(name))  # names the file
        assert not list(run_dir.glob("*.tmp"))  # nothing half-written left behind
        with warnings.catch_warnings(record=True) as caught:  # space is back
            warnings.simplefilter("always")
            resumed = train(run, run_dir, resume=True, progress=False)
        assert all("torn last line" in str(w.message) for w in caught)
        assert (run_dir / CKPT).read_bytes() == (tmp_path / "straight" / CKPT).read_bytes()
        a, b = weights(run_dir, run), weights(tmp_path / "straight", run)
        assert all(torch.equal(a[k], b[k]) for k in a)
        for file in ("metrics.jsonl", "config.json"):
            assert (run_dir / file).read_text() == (tmp_path / "straight" / file).read_text()
        assert {k: v for k, v in resumed.items() if "second" not in k} == {
            k: v for k, v in straight.items() if "second" not in k
        }
    assert {final_name(name) for name in writes} == {
        "config.json",
        "metrics.jsonl",
        "timing.json",
        CKPT,
        "provenance.json",
        "summary.json",
    }


def test_a_disk_that_fills_while_probing_names_the_file_and_loses_nothing(
    pipeline_run, monkeypatch
):
    """Safetensors' own writer reported a full disk as a SafetensorError naming no file."""
    run_dir = pipeline_run.run_dir
    disk = FillingDisk(run_dir)
    with disk.mounted(monkeypatch):
        probe_stage([pipeline_run], progress=False)
    probed = (run_dir / "probes.csv").read_bytes()
    first_write = {}
    for index, name in enumerate(disk.writes):
        first_write.setdefault(final_name(name), index)
    assert set(first_write) >= {
        "provenance.json",
        "shard00000.safetensors",
        "index.json",
        "probes.csv",
        "probe_weights.safetensors",
    }
    for name, index in first_write.items():
        with FillingDisk(run_dir, index).mounted(monkeypatch), pytest.raises(OSError) as full:
            probe_stage([pipeline_run], progress=False)
        assert full.value.errno == errno.ENOSPC and Path(full.value.filename).name == name
        probe_stage([pipeline_run], progress=False)  # space is back
        assert (run_dir / "probes.csv").read_bytes() == probed
        assert not list(run_dir.rglob("*.tmp"))
        tables(pipeline_run)


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path):
    run = smoke_run()
    train(run, tmp_path / "straight", progress=False)
    train(run, tmp_path / "torn", stop_at=6, progress=False)
    with open(tmp_path / "torn/metrics.jsonl", "a") as f:
        f.write('{"step": 7, "train_lo')  # the disk filled mid-line
    with pytest.warns(UserWarning, match="metrics.jsonl: dropped its torn last line"):
        train(run, tmp_path / "torn", resume=True, progress=False)
    assert (tmp_path / "torn/metrics.jsonl").read_text() == (
        tmp_path / "straight/metrics.jsonl"
    ).read_text()


def test_a_damaged_line_inside_the_metrics_log_is_named(tmp_path):
    run = smoke_run()
    train(run, tmp_path, stop_at=6, progress=False)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:10]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON line"):
        train(run, tmp_path, resume=True, progress=False)


# 2. Two writers of one run directory.


@contextmanager
def lock_held_elsewhere(run_dir: Path):
    """The run's lock held through another open file, as another process would."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(fd)


HOLDER = (
    "import sys; from lab.lock import run_lock; lock = run_lock(sys.argv[1], create=True); "
    "lock.__enter__(); print('held', flush=True); sys.stdin.read()"
)


def test_a_second_trainer_exits_at_once_and_a_killed_holder_frees_the_run(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunLockedError, match=f"in use by another process \\(pid {holder.pid}"):
            train(smoke_run(), tmp_path, progress=False)
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]  # nothing written
    finally:
        holder.kill()  # kill -9: the kernel releases the lock
        holder.wait()
    train(smoke_run(), tmp_path, progress=False)


def test_every_stage_that_writes_a_run_takes_its_lock(pipeline_run):
    run_dir = pipeline_run.run_dir
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    with lock_held_elsewhere(run_dir):
        for stage in (train_stage, probe_stage, census_stage):
            with pytest.raises(RunLockedError, match=str(run_dir)):
                stage([pipeline_run], progress=False)
        with pytest.raises(RunLockedError):
            analyze_run(pipeline_run)
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before


def test_a_trainer_holds_the_lock_while_it_trains(tmp_path, monkeypatch):
    from tasks.graph_nav import GraphNavTask

    sample, tried = GraphNavTask.sample, []

    def sample_and_try_a_second_writer(self, *args):
        if not tried:
            with pytest.raises(RunLockedError):
                with run_lock(tmp_path):
                    pass
            tried.append(True)
        return sample(self, *args)

    monkeypatch.setattr(GraphNavTask, "sample", sample_and_try_a_second_writer)
    train(smoke_run(), tmp_path, progress=False)
    assert tried


def test_a_checkpoint_of_another_config_is_refused_naming_what_differs(tmp_path):
    """Two writers mixed up a run: config.json of one lr, the checkpoint of another."""
    mine, other = smoke_run(), smoke_run(train_fields={"lr": 3e-3})
    train(mine, tmp_path / "mine", progress=False)
    train(other, tmp_path / "other", progress=False)
    shutil.copy(tmp_path / "other" / CKPT, tmp_path / "mine" / CKPT)
    with pytest.raises(CheckpointError, match=r"another run config .* differ in train.lr"):
        train(mine, tmp_path / "mine", resume=True, progress=False)
    with pytest.raises(CheckpointError, match=r"another run config .* differ in train.lr"):
        load_trained(tmp_path / "mine")


# 3. Stale results.


def test_retraining_after_deleting_the_checkpoint_clears_every_derived_artefact(pipeline_run):
    run_dir = pipeline_run.run_dir
    derived = ["activations", "probes.csv", "cells.csv", "census.csv", "curves.csv"]
    assert all((run_dir / name).exists() for name in derived)
    (run_dir / CKPT).unlink()
    train_stage([pipeline_run], progress=False)
    assert not [name for name in derived if (run_dir / name).exists()]
    assert list(provenance.read_manifest(run_dir)) == ["summary.json"]
    tables(pipeline_run)


def test_a_kill_before_the_summary_recomputes_it_instead_of_returning_an_old_one(
    tmp_path, monkeypatch
):
    import models.train

    first, second = smoke_run(), smoke_run(train_fields={"lr": 3e-3})
    old = train(first, tmp_path, progress=False)
    (tmp_path / CKPT).unlink()  # "delete it", as the error message says, and train again

    def killed(*args, with_curves=False):
        if with_curves:  # the final evaluation, after the final checkpoint
            raise KeyboardInterrupt
        return evaluate(*args)

    evaluate = models.train.evaluate
    monkeypatch.setattr(models.train, "evaluate", killed)
    with pytest.raises(KeyboardInterrupt):
        train(second, tmp_path, progress=False)
    monkeypatch.setattr(models.train, "evaluate", evaluate)
    summary = train(second, tmp_path, resume=True, progress=False)
    assert summary["final"] == train(second, tmp_path / "straight", progress=False)["final"]
    assert summary["final"] != old["final"]


def test_a_probe_killed_midway_leaves_nothing_census_or_tables_accept(pipeline_run, monkeypatch):
    import probes.run

    def killed(*args):
        raise KeyboardInterrupt  # after the activations are cached, before probes.csv

    monkeypatch.setattr(probes.run, "fit", killed)
    with pytest.raises(KeyboardInterrupt):
        probe_run(pipeline_run.run_dir, ProbeConfig(n_sequences=24, batch_size=8, folds=3))
    assert (pipeline_run.run_dir / "activations").is_dir()
    assert not (pipeline_run.run_dir / "probes.csv").exists()
    with pytest.raises(StaleError, match="activations: it is incomplete"):
        census_stage([pipeline_run], progress=False)
    with pytest.raises(StaleError, match="incomplete .* run the probe stage again"):
        tables(pipeline_run)


@pytest.mark.parametrize(
    "override, refused",
    [
        ("census.n_shuffles=20", r"cells.csv: it was made from census.n_shuffles=10 \(now 20\)"),
        ("probe.folds=4", r"activations: it was made from probe.folds=3 \(now 4\)"),
        ("train.lr=0.002", r"activations: it was made from run config \w+ \(the run's is \w+\)"),
    ],
)
def test_the_tables_refuse_results_of_other_settings(pipeline_run, override, refused):
    tables(pipeline_run)
    with pytest.raises(StaleError, match=refused):
        tables(planned_run(pipeline_run.run_dir.parents[4], override))


def test_the_analyses_refuse_probe_outputs_of_other_settings(pipeline_run):
    changed = planned_run(pipeline_run.run_dir.parents[4], "probe.n_sequences=24")
    with pytest.raises(StaleError, match=r"probe.n_sequences=16 \(now 24\); run the probe"):
        analyze_run(changed)
    probe_stage([changed], progress=False)
    analyze_run(changed)


def test_results_nothing_records_are_refused(pipeline_run):
    (pipeline_run.run_dir / "points.csv").write_text("hook,value\nh,1\n")  # made by hand
    with pytest.raises(StaleError, match="points.csv: nothing records which checkpoint"):
        tables(pipeline_run)


# 4. Damaged checkpoints.


@pytest.mark.parametrize(
    "damage",
    ["one flipped bit in a weight", "64 zeroed bytes", "truncated", "flipped bit in the header"],
)
def test_a_damaged_checkpoint_is_refused_by_name_and_never_trained_over(tmp_path, damage):
    run = smoke_run()
    train(run, tmp_path, stop_at=4, progress=False)
    path = tmp_path / CKPT
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    if damage == "one flipped bit in a weight":
        data[-5] ^= 0x10
    elif damage == "64 zeroed bytes":
        data[header + 1000 : header + 1064] = bytes(64)
    elif damage == "truncated":
        del data[-100:]
    else:
        data[header - 20] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{CKPT}: (damaged|not a readable)"):
        train(run, tmp_path, resume=True, progress=False)
    assert path.read_bytes() == bytes(data)
    with pytest.raises(CheckpointError, match=CKPT):
        load_trained(tmp_path)


def test_the_probe_refuses_an_unfinished_run(tmp_path):
    train(smoke_run(), tmp_path, stop_at=4, progress=False)
    with pytest.raises(CheckpointError, match=r"not finished \(step 4 of 8\)"):
        probe_run(tmp_path, ProbeConfig())


# 5. Config values the probe cannot use are refused before anything is written.


def test_too_few_probe_sequences_are_refused_and_good_results_kept(pipeline_run):
    run_dir = pipeline_run.run_dir
    before = {p: (run_dir / p).read_bytes() for p in ("probes.csv", "provenance.json")}
    with pytest.raises(ConfigError, match=r"probe.n_sequences=4 is too few .* fold: \[.*\b0\b"):
        probe_run(run_dir, ProbeConfig(n_sequences=4, batch_size=4, folds=3))
    assert {p: (run_dir / p).read_bytes() for p in before} == before
    tables(pipeline_run)


def test_a_bad_training_field_is_refused_before_anything_is_written(tmp_path):
    for field, value, message in [
        ("steps", "ten", "steps: expected int, got 'ten'"),
        ("checkpoint_every", 0, "train.checkpoint_every must be a whole number >= 1, got 0"),
        ("steps", -3, "train.steps must be a whole number >= 1, got -3"),
    ]:
        run = smoke_run()
        run["train"][field] = value
        with pytest.raises(ConfigError, match=message):
            train(run, tmp_path / "run", progress=False)
        assert not (tmp_path / "run").exists()


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_config(tmp_path, monkeypatch):
    from tasks.graph_nav import GraphNavTask

    monkeypatch.setattr(GraphNavTask, "loss", lambda self, logits, batch: logits.sum() * torch.nan)
    with pytest.raises(FloatingPointError, match="loss is nan at step 0"):
        train(smoke_run(), tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


# 6. User errors print one line from the command line, naming the file.


def cli_error(capsys, *argv):
    """(exit status, stderr) of ``python -m studies`` with ``argv``, in this process."""
    try:
        with pytest.raises(SystemExit) as exit:
            studies_main(list(argv))
    finally:
        torch.set_flush_denormal(False)  # set by the entry point
    return exit.value.code, capsys.readouterr().err


def smoke_args(out_root, stage="train"):
    sets = [f"out_root={out_root}", *TINY]
    return [stage, "--preset", "smoke", "--study", "navigation", "--model", "lstm", "--set", *sets]


def test_user_errors_print_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.toml"
    bad.write_text("experiment = \n")
    run_dir = planned_run(tmp_path).run_dir
    cases = {"not valid TOML": ["plan", "--preset", str(bad)]}
    cases["train.steps must be a whole number >= 1, got 0"] = [
        *smoke_args(tmp_path),
        "train.steps=0",
    ]
    for expected, argv in cases.items():
        status, err = cli_error(capsys, *argv)
        assert status == 2 and err.startswith("error: ") and err.count("\n") == 1
        assert expected in err
    assert str(bad) in cli_error(capsys, *cases["not valid TOML"])[1]
    with lock_held_elsewhere(run_dir):
        status, err = cli_error(capsys, *smoke_args(tmp_path))
    assert status == 2 and err.count("\n") == 1 and f"{run_dir} is in use by another" in err
    with FillingDisk(run_dir, 0).mounted(monkeypatch):
        status, err = cli_error(capsys, *smoke_args(tmp_path))
    assert status == 2 and err.count("\n") == 1
    assert f"No space left on device: '{run_dir / 'config.json'}'" in err
    try:  # --debug: the traceback
        with pytest.raises(ConfigError, match="train.steps must be"):
            studies_main(["plan", "--debug", "--preset", "smoke", "--set", "train.steps=0"])
    finally:
        torch.set_flush_denormal(False)


# 8. Leftovers of killed writers.


def test_temporary_files_of_a_killed_writer_are_removed_by_the_next(pipeline_run):
    run_dir = pipeline_run.run_dir
    leftovers = [f".{CKPT}.4242.tmp", ".summary.json.4242.tmp", "activations.tmp/shard00000"]
    for name in leftovers:
        (run_dir / name).parent.mkdir(exist_ok=True)
        (run_dir / name).write_text("half")
    probe_stage([pipeline_run], progress=False)
    assert not list(run_dir.glob("*.tmp"))


# 9. Same-seed checkpoints are byte-identical, across processes too.


TRAIN_ONE = (
    "import sys, json; from models.train import train; "
    "train(json.loads(sys.argv[1]), sys.argv[2], progress=False)"
)


@pytest.mark.slow
def test_checkpoints_of_same_seed_runs_in_two_processes_are_byte_identical(tmp_path):
    run = smoke_run("mamba")
    for name in ("a", "b"):
        command = [sys.executable, "-c", TRAIN_ONE, json.dumps(run), str(tmp_path / name)]
        subprocess.run(command, cwd=REPO, check=True)
    assert (tmp_path / "a" / CKPT).read_bytes() == (tmp_path / "b" / CKPT).read_bytes()
