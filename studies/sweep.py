"""Sweeps: the selected runs of a preset, at every point of an optional hyper-parameter
grid, executed side by side as Ray tasks; then each point's results tables and figures.

    python -m studies sweep --preset smoke [--study/--model/--task/--seed ...]
                            [--grid train.lr=[1e-3,3e-3] ...] [--serial]

Each run is one Ray task that calls the stage functions ``make paper`` uses (train ->
probe -> census -> analyze -> causal, :mod:`studies.pipeline`) in a worker process with
``threads_per_run`` torch threads; its output (stage lines, progress bars, the traceback
of an error) is appended to ``<run dir>/sweep.log``. Where ``train.batch_seeds`` groups
the seeds of a condition and arm into one training job
(:func:`studies.pipeline.train_jobs`), the job is a Ray task of its own (its output in each
of its runs' logs), and each of its runs' tasks waits for it and runs the stages after
training. Ray is started on the spot on this machine's cores, or joins the cluster that
``RAY_ADDRESS`` names (see docs/sweeps.md).
``--serial`` runs the same stages in this process instead, stage by stage, and stops at
the first error (for debugging). Ray is imported only here, by the functions that use it:
every other command runs without it.

Faults: a run that exists is resumed and a finished one is not trained again
(:func:`models.train.train`); a worker that dies (kill -9, lost node, out of memory) is
retried by Ray up to ``max_retries`` times and resumes from the run's last checkpoint; a
run that raises (NaN loss, bad config) is not retried and is reported with its error
while the others go on. ``<out_root>/<experiment>/sweep.json`` records every run's outcome.

Grid layout: each grid point is its own experiment, ``<experiment>_<key>-<value>`` per
axis (``smoke_train.lr-0.003``), with its own run directories, ``results/`` tables and
``figures/``, so the ``experiment`` column of every table tells points apart.
``<out_root>/<experiment>/grid/runs.csv`` and ``summary.csv`` gather every point's
``runs.csv`` and ``summary.csv`` with one column per axis.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import socket
import time
import traceback
from contextlib import ExitStack, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from lab.config import (
    ConfigError,
    apply_overrides,
    from_dict,
    load_toml,
    parse_value,
    require,
)
from lab.io import atomic_write, write_json
from lab.process import prepare_process
from studies.pipeline import STAGE_FUNCTIONS, figures_stage, tables_stage, train_job, train_jobs
from studies.plan import PlannedRun, Selection, plan
from studies.preset import SAFE_NAME, Preset, preset_path

if TYPE_CHECKING:
    import ray

LOG = "sweep.log"
"""Each run's log file in its run directory (appended to by every attempt)."""
LAYOUT_KEYS = ("experiment", "out_root", "sweep")
"""Preset keys a grid may not vary: they decide where the grid points live."""


@dataclass
class SweepConfig:
    """The preset's ``[sweep]`` table (``--set sweep.KEY=VALUE`` overrides it)."""

    grid: dict[str, list[Any]] = field(default_factory=dict)
    """Hyper-parameter axes: a preset key, as for ``--set`` (``train.lr``,
    ``study.copying.train.steps``), to the values to try; every combination is a point."""
    threads_per_run: int = 1
    """Torch threads in each run; Ray reserves as many CPUs for it. 1 gives the most runs
    per hour on 2 cores (benchmarks/bench_sweep.py)."""
    runs_per_gpu: int = 4
    """Where the cluster has GPUs: runs sharing one device (each reserves ``num_gpus=1/k``);
    runs with ``train.device = "cpu"`` reserve none. Not yet measured on a GPU."""
    max_retries: int = 3
    """Times Ray restarts a run whose worker died; a run that raised is never restarted."""

    def __post_init__(self):
        for name, low in (("threads_per_run", 1), ("runs_per_gpu", 1), ("max_retries", 0)):
            value = getattr(self, name)
            require(value >= low, f"sweep.{name} must be a whole number >= {low}, got {value}")
        check_grid(self.grid)


@dataclass(frozen=True)
class GridPoint:
    """One point of the grid: its axis values and the preset they give."""

    values: dict[str, Any]
    """Axis key -> value ({} without a grid)."""
    preset: Preset
    raw: dict[str, Any]
    """The raw preset (with its ``[study.*]`` tables) for :func:`studies.plan.plan`."""


@dataclass(frozen=True)
class Sweep:
    """A preset's sweep: its settings, the grid axes and one point per combination."""

    config: SweepConfig
    axes: dict[str, list[Any]]
    """The preset's ``[sweep] grid`` with the ``--grid`` axes over it."""
    points: list[GridPoint]
    home: Path
    """``<out_root>/<experiment>`` of the preset without grid: ``sweep.json`` and ``grid/``."""


@dataclass
class Outcome:
    """How one run of a sweep ended."""

    label: str
    experiment: str
    run_dir: str
    status: str
    """"done" or "failed"."""
    error: str | None = None
    """``ExceptionType: message`` of a failed run (the traceback is in its log)."""
    seconds: float | None = None
    """Wall time of the attempt that finished (parallel runs only)."""
    attempt: int | None = None
    """1, or more where Ray restarted the run after its worker died (parallel runs only)."""


def load_sweep(name_or_path: str, overrides: list[str] = (), grid: list[str] = ()) -> Sweep:
    """The sweep of preset ``name_or_path`` (after ``--set`` overrides): its ``[sweep]``
    table, and one :class:`GridPoint` per combination of the table's grid axes and the
    ``--grid KEY=[...]`` axes (which replace preset axes of the same key)."""
    path, raw, table = read_preset(name_or_path, overrides)
    config = from_dict(SweepConfig, table, f"{path} [sweep]")
    axes = {**config.grid, **parse_grid(grid)}
    check_grid(axes)
    base = from_dict(Preset, raw, str(path))
    points = []
    for combination in itertools.product(*axes.values()):
        values = dict(zip(axes, combination, strict=True))
        data = apply_overrides(copy.deepcopy(raw), [f"{k}={v!r}" for k, v in values.items()])
        data["experiment"] = point_experiment(base.experiment, values)
        preset = from_dict(Preset, data, f"{path} grid point {values}")
        points.append(GridPoint(values, preset, data))
    return Sweep(config, axes, points, base.experiment_dir())


def load_base(name_or_path: str, overrides: list[str] = ()) -> tuple[Preset, dict[str, Any]]:
    """(Preset, raw dict) of a preset without its ``[sweep]`` table and grid: what every
    stage but ``sweep`` and ``paper`` acts on."""
    path, raw, _ = read_preset(name_or_path, overrides)
    return from_dict(Preset, raw, str(path)), raw


def read_preset(name_or_path: str, overrides: list[str]) -> tuple[Path, dict, dict]:
    """(path, raw preset without ``[sweep]``, the ``[sweep]`` table) after ``overrides``."""
    path = preset_path(name_or_path)
    raw = apply_overrides(load_toml(path), list(overrides))
    return path, raw, raw.pop("sweep", {})


def parse_grid(axes: list[str]) -> dict[str, list[Any]]:
    """``["train.lr=[1e-3, 3e-3]", ...]`` -> ``{"train.lr": [0.001, 0.003], ...}``."""
    parsed = {}
    for axis in axes:
        key, sep, values = axis.partition("=")
        value = parse_value(values.strip())
        if not sep or not key.strip() or not isinstance(value, list):
            raise ConfigError(f"--grid {axis!r} is not of the form key=[value, value, ...]")
        parsed[key.strip()] = value
    return parsed


def check_grid(axes: dict[str, list[Any]]) -> None:
    """Every axis a non-empty list of distinct values that can name a directory, on a key
    that is not in :data:`LAYOUT_KEYS`."""
    for key, values in axes.items():
        if key.split(".")[0] in LAYOUT_KEYS:
            raise ConfigError(f"grid axis {key!r}: a grid may not vary {list(LAYOUT_KEYS)}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid axis {key!r} must list at least one value, got {values!r}")
        names = [value_name(v) for v in values]
        bad = [v for v, name in zip(values, names, strict=True) if not SAFE_NAME.fullmatch(name)]
        if bad:
            raise ConfigError(
                f"grid axis {key!r}: values {bad} cannot name a directory; use numbers, "
                "booleans or words of letters, digits, '.', '_' and '-'"
            )
        if len(set(names)) < len(names):
            raise ConfigError(f"grid axis {key!r} lists a value twice: {values}")


def value_name(value: Any) -> str:
    """How a grid value appears in an experiment name: ``0.003``, ``1e-05``, ``True``, ``rope``."""
    return value if isinstance(value, str) else repr(value)


def point_experiment(base: str, values: dict[str, Any]) -> str:
    """``base`` with ``_<key>-<value>`` for each axis: ``smoke_train.lr-0.003``."""
    return base + "".join(f"_{key}-{value_name(value)}" for key, value in values.items())


def run_stages(
    planned: PlannedRun, threads: int, sweep_id: str, trained: dict | None = None
) -> dict[str, float | int]:
    """Every per-run stage (train, probe, census, analyze, causal) of one run in this
    process (a Ray worker) with ``threads`` torch threads, its output appended to
    ``<run dir>/sweep.log``; return
    ``{"seconds": wall time, "attempt": 1 + earlier attempts of this sweep}``. With
    ``trained`` (what :func:`train_stages` returned for the run's training job) the run
    is trained already: the error that stopped its training is raised, or the stages after
    training run."""
    torch.set_num_threads(threads)
    prepare_process()
    log_path = planned.run_dir / LOG
    log_path.parent.mkdir(parents=True, exist_ok=True)
    header = f"sweep {sweep_id} attempt"
    earlier = log_path.read_text().count(header) if log_path.exists() else 0
    began = time.perf_counter()
    stages = [f for name, f in STAGE_FUNCTIONS.items() if trained is None or name != "train"]
    with open(log_path, "a", buffering=1) as log, redirect_stdout(log), redirect_stderr(log):
        print(
            f"== {time.strftime('%Y-%m-%d %H:%M:%S')} {header} {earlier + 1}: {planned.label} "
            f"on {socket.gethostname()} pid {os.getpid()}, {threads} torch thread(s)"
        )
        try:
            if trained is not None and trained[str(planned.run_dir)] is not None:
                raise trained[str(planned.run_dir)]
            for stage in stages:
                stage([planned], progress=True)
        except Exception:
            traceback.print_exc()
            raise
        seconds = time.perf_counter() - began
        print(f"== done in {seconds:.1f} s")
    return {"seconds": seconds, "attempt": earlier + 1}


def train_stages(job: list[PlannedRun], threads: int, sweep_id: str) -> dict[str, Any]:
    """Train the runs of one training job together in this process (a Ray worker) with
    ``threads`` torch threads, the output appended to each run's ``sweep.log``; return
    ``{run dir: None, or the FloatingPointError that stopped the run}``."""
    torch.set_num_threads(threads)
    prepare_process()
    with ExitStack() as stack:
        logs = []
        for planned in job:
            planned.run_dir.mkdir(parents=True, exist_ok=True)
            logs.append(stack.enter_context(open(planned.run_dir / LOG, "a", buffering=1)))
        tee = _Tee(logs)
        stack.enter_context(redirect_stdout(tee))
        stack.enter_context(redirect_stderr(tee))
        seeds = ", ".join(str(p.run["seed"]) for p in job)
        print(
            f"== {time.strftime('%Y-%m-%d %H:%M:%S')} sweep {sweep_id} batched training of "
            f"seeds {seeds} on {socket.gethostname()} pid {os.getpid()}, {threads} torch "
            "thread(s)"
        )
        try:
            results = train_job(job, progress=True)
        except Exception:
            traceback.print_exc()
            raise
    return {
        str(p.run_dir): r if isinstance(r, BaseException) else None
        for p, r in zip(job, results, strict=True)
    }


class _Tee:
    """A text stream that writes to several files."""

    def __init__(self, files):
        self.files = files

    def write(self, text: str) -> int:
        for f in self.files:
            f.write(text)
        return len(text)

    def flush(self) -> None:
        for f in self.files:
            f.flush()


def connect() -> bool:
    """Join the Ray cluster ``RAY_ADDRESS`` names, else start Ray on this machine (unless
    this process is already connected); return whether this call connected."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network: Ray reports nothing
    ray.init(
        address=os.environ.get("RAY_ADDRESS") or "local",
        include_dashboard=False,
        log_to_driver=False,  # each run's output goes to its own log
    )
    return True


def execute(
    runs: list[PlannedRun], config: SweepConfig, sweep_id: str, progress: bool = True
) -> list[Outcome]:
    """Every per-run stage of ``runs`` as Ray tasks (one per run, and one per training job
    of several runs); return their outcomes, in the order of ``runs``. One progress bar
    over runs: done, running, failed."""
    import ray

    connected = connect()
    try:
        gpus = ray.cluster_resources().get("GPU", 0)

        def options(planned: PlannedRun) -> dict:
            use_gpu = gpus > 0 and planned.run["train"]["device"] != "cpu"
            return {
                "num_cpus": config.threads_per_run,
                "num_gpus": 1 / config.runs_per_gpu if use_gpu else 0,
                "max_retries": config.max_retries,
                "retry_exceptions": False,
            }

        stages, training = ray.remote(run_stages), ray.remote(train_stages)
        index = {id(planned): i for i, planned in enumerate(runs)}
        pending = {}
        for job in train_jobs(runs):
            # workers may start elsewhere: the run directories must not depend on their cwd
            payload = [dataclasses.replace(p, run_dir=p.run_dir.resolve()) for p in job]
            trained = None
            if len(job) > 1:
                trained = training.options(**options(job[0])).remote(
                    payload, config.threads_per_run, sweep_id
                )
            for planned, sent in zip(job, payload, strict=True):
                ref = stages.options(**options(planned)).remote(
                    sent, config.threads_per_run, sweep_id, trained
                )
                pending[ref] = index[id(planned)]
        outcomes: list[Outcome | None] = [None] * len(runs)
        failed = 0
        with tqdm(total=len(runs), desc="sweep", unit="run", disable=not progress) as bar:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    i = pending.pop(ref)
                    outcome = outcome_of(ref, runs[i])
                    outcomes[i] = outcome
                    if outcome.status == "failed":
                        failed += 1
                        bar.write(f"FAILED {outcome.label}: {outcome.error}")
                    bar.update()
                bar.set_postfix(running=min(len(pending), slots(config)), failed=failed)
        return outcomes
    finally:
        if connected:
            ray.shutdown()


def slots(config: SweepConfig) -> int:
    """How many runs the cluster can hold at once (the bar's count of running runs is the
    smaller of this and the runs not yet ended)."""
    import ray

    resources = ray.cluster_resources()
    n = int(resources.get("CPU", 0) // config.threads_per_run)
    if resources.get("GPU", 0):
        n = min(n, int(resources["GPU"] * config.runs_per_gpu))
    return n


def outcome_of(ref: ray.ObjectRef, planned: PlannedRun) -> Outcome:
    """The outcome of one run's task: done, or failed with the error it raised (or its
    training job raised) or the reason its worker died ``max_retries + 1`` times."""
    import ray

    keys = {
        "label": planned.label,
        "experiment": planned.run["experiment"],
        "run_dir": str(planned.run_dir),
    }
    try:
        result = ray.get(ref)
    except ray.exceptions.RayTaskError as error:  # the run raised: not retried
        cause = error.cause
        return Outcome(**keys, status="failed", error=f"{type(cause).__name__}: {cause}")
    except ray.exceptions.RayError as error:  # its worker died on every attempt
        return Outcome(**keys, status="failed", error=f"{type(error).__name__}: {error}")
    return Outcome(**keys, status="done", **result)


def sweep(
    spec: Sweep, selection: Selection, serial: bool = False, progress: bool = True
) -> list[Outcome]:
    """Run the selected runs of every grid point (in parallel on Ray, or ``serial`` in this
    process), write ``sweep.json``, then each point's tables and the figures of its studies
    with a finished run, and with a grid the grid tables. Return every run's outcome."""
    selected = [plan(point.preset, point.raw, selection) for point in spec.points]
    runs = [planned for point_runs in selected for planned in point_runs]
    if not runs:
        raise ConfigError("the selection matches no run of this preset (see `plan`)")
    sweep_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    if serial:
        for point_runs in selected:
            for stage in STAGE_FUNCTIONS.values():
                stage(point_runs, progress=progress)
        outcomes = [Outcome(p.label, p.run["experiment"], str(p.run_dir), "done") for p in runs]
    else:
        outcomes = execute(runs, spec.config, sweep_id, progress)
    summary = {
        "sweep": sweep_id,
        "grid": spec.axes,
        "runs": [dataclasses.asdict(o) for o in outcomes],
    }
    write_json(spec.home / "sweep.json", summary)
    report(outcomes, spec.home / "sweep.json")
    done = {o.run_dir for o in outcomes if o.status == "done"}
    for point, point_runs in zip(spec.points, selected, strict=True):
        finished = [p for p in point_runs if str(p.run_dir) in done]
        if not finished:
            print(f"no run of {point.preset.experiment} finished: no tables", flush=True)
            continue
        out = point.preset.experiment_dir()
        tables = tables_stage(plan(point.preset, point.raw), out / "results")
        figures_stage(finished, tables, out / "figures")
    if spec.axes:
        write_grid_tables(spec.points, spec.home / "grid")
    return outcomes


def report(outcomes: list[Outcome], summary_path: Path) -> None:
    """Print how many runs ended how, and each failed run with its error and log."""
    failed = [o for o in outcomes if o.status == "failed"]
    print(
        f"sweep: {len(outcomes) - len(failed)} of {len(outcomes)} runs done, "
        f"{len(failed)} failed ({summary_path})",
        flush=True,
    )
    for o in failed:
        print(f"  FAILED {o.label}: {o.error} (log: {Path(o.run_dir) / LOG})", flush=True)


def write_grid_tables(points: list[GridPoint], out_dir: Path) -> None:
    """Every point's ``runs.csv`` and ``summary.csv`` in one table each under ``out_dir``,
    led by the experiment and one column per grid axis."""
    for name in ("runs", "summary"):
        frames = []
        for point in points:
            path = point.preset.experiment_dir() / "results" / f"{name}.csv"
            if not path.is_file():
                continue
            frame = pd.read_csv(path).drop(columns="experiment", errors="ignore")
            lead = pd.DataFrame(
                {"experiment": point.preset.experiment, **point.values}, index=frame.index
            )
            frames.append(pd.concat([lead, frame], axis=1))
        if frames:
            table = pd.concat(frames, ignore_index=True)
            atomic_write(out_dir / f"{name}.csv", lambda tmp, t=table: t.to_csv(tmp, index=False))
