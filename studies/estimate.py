"""The projected wall time of a preset's selected runs on this machine, from costs measured
here (``python -m studies plan --estimate``).

What it measures, with the lab's own stage functions in a scratch directory and the torch
threads (and device) a sweep's run gets:

* **training**: each distinct training job (same task config, architecture, model size,
  batch and number of seeds trained together: :func:`studies.pipeline.train_jobs`) is
  trained twice from scratch, for ``warmup`` and ``warmup + steps`` steps (evaluations and
  checkpoints only at the end). The difference of the two wall times gives the seconds per
  step; what is left of the shorter one is the job's fixed cost (building the models, the
  first steps' one-off costs, the final evaluation and checkpoint, the summary).
* **later stages**: probe, census, analyze and causal, each timed once per study and
  architecture on one of its runs trained above (at the preset's probe, census and causal
  sizes; their cost does not depend on how long the network trained).

How it projects: a job costs its fixed cost plus its steps times the seconds per step
(intermediate evaluations and checkpoints, a few per run, are left out); each run's later
stages cost what its study and architecture measured. One process (``paper --serial``,
the single stages) takes the sum. A sweep runs as many tasks at once as Ray's slots allow
(CPUs / ``threads_per_run``, and with GPUs at most ``runs_per_gpu`` per GPU): the jobs, then
each run's later stages once its job is done, are handed to free slots in the order a sweep
submits them, assuming runs side by side do not slow each other (on a shared GPU they do:
``benchmarks/bench_gpu.py`` measures k runs per GPU). Tables and figures, once per
experiment, are left out.
"""

from __future__ import annotations

import dataclasses
import heapq
import io
import os
import shutil
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lab.provenance import canonical
from lab.streams import resolve_device
from studies.pipeline import STAGE_FUNCTIONS, train_job, train_jobs
from studies.plan import PlannedRun

LATER_STAGES = ("probe", "census", "analyze", "causal")
WARMUP, TIMED = 3, 20
"""Training steps of the shorter and the longer of the two timed trainings of a job: WARMUP
and WARMUP + TIMED."""


@dataclass
class Measured:
    """Costs measured on this machine (seconds)."""

    per_step: dict[str, float] = field(default_factory=dict)
    """Training job shape -> seconds per step of the whole job."""
    fixed: dict[str, float] = field(default_factory=dict)
    """Training job shape -> the job's fixed cost."""
    stages: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    """(study, architecture) -> later stage -> seconds for one run."""


@dataclass
class Projection:
    """The projected seconds of the selected runs."""

    stage_seconds: dict[str, float]
    """Stage -> seconds of work summed over the runs (train: over the jobs)."""
    serial: float
    """Wall time in one process: all the work, one piece after another."""
    parallel: float
    """Wall time of a sweep with ``slots`` tasks at once."""
    slots: int
    jobs: int


def job_shape(job: list[PlannedRun]) -> str:
    """What a training job's cost depends on: task and its config, architecture and model
    config (not the seed), batch size, device and how many seeds train together."""
    run = job[0].run
    model = {k: v for k, v in run["model_config"].items() if k != "seed"}
    keys = ("task", "task_config", "architecture")
    train = {k: run["train"][k] for k in ("batch_size", "device")}
    return canonical({**{k: run[k] for k in keys}, "model": model, **train, "seeds": len(job)})


def measure(
    runs: list[PlannedRun], threads: int, warmup: int = WARMUP, steps: int = TIMED, log=print
) -> Measured:
    """Measure the training jobs and later stages of ``runs`` (see the module doc) with
    ``threads`` torch threads, in a scratch directory that is removed afterwards."""
    measured = Measured()
    scratch = Path(tempfile.mkdtemp(prefix="estimate_"))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for job in train_jobs(runs):
            shape, pair = job_shape(job), (job[0].study.name, job[0].run["architecture"])
            if shape in measured.per_step and pair in measured.stages:
                continue
            long = _trained(job, warmup + steps, scratch / "long")
            if shape not in measured.per_step:
                short = _trained(job, warmup, scratch / "short")
                per_step = max(0.0, (long[0] - short[0]) / steps)
                measured.per_step[shape] = per_step
                measured.fixed[shape] = max(0.0, short[0] - warmup * per_step)
                seeds = ",".join(str(p.run["seed"]) for p in job)
                log(
                    f"  training {job[0].label.rsplit('/', 1)[0]}/seed{seeds}: "
                    f"{per_step * 1000:.1f} ms/step, {measured.fixed[shape]:.1f} s fixed"
                )
            if pair not in measured.stages:
                measured.stages[pair] = _later_stages(long[1])
                timings = ", ".join(f"{k} {v:.1f} s" for k, v in measured.stages[pair].items())
                log(f"  later stages of {long[1].label}: {timings}")
            shutil.rmtree(scratch / "long")
            shutil.rmtree(scratch / "short", ignore_errors=True)
    finally:
        torch.set_num_threads(before)
        shutil.rmtree(scratch, ignore_errors=True)
    return measured


def _trained(job: list[PlannedRun], steps: int, root: Path) -> tuple[float, PlannedRun]:
    """Train ``job`` afresh for ``steps`` steps under ``root``, evaluating and checkpointing
    only at the end; return (wall seconds, its first run as trained)."""
    short = []
    for planned in job:
        train = {
            **planned.run["train"],
            "steps": steps,
            "warmup_steps": min(planned.run["train"]["warmup_steps"], steps),
        }
        for key in ("log_every", "eval_every", "checkpoint_every"):
            train[key] = steps
        run_dir = root / f"seed{planned.run['seed']}"
        run = {**planned.run, "train": train}
        short.append(dataclasses.replace(planned, run=run, run_dir=run_dir))
    began = time.perf_counter()
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        results = train_job(short, progress=False)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]
    return time.perf_counter() - began, short[0]


def _later_stages(planned: PlannedRun) -> dict[str, float]:
    """Seconds of each later stage on one trained run."""
    seconds = {}
    for stage in LATER_STAGES:
        began = time.perf_counter()
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            STAGE_FUNCTIONS[stage]([planned], progress=False)
        seconds[stage] = time.perf_counter() - began
    return seconds


def project(runs: list[PlannedRun], measured: Measured, slots: int) -> Projection:
    """The projected wall times of ``runs`` (see the module doc)."""
    work = {"train": 0.0, **dict.fromkeys(LATER_STAGES, 0.0)}
    tasks = []  # (seconds, index of the task it waits for or None), in submission order
    jobs = train_jobs(runs)
    for job in jobs:
        shape = job_shape(job)
        seconds = measured.fixed[shape] + job[0].run["train"]["steps"] * measured.per_step[shape]
        work["train"] += seconds
        if len(job) > 1:  # a task of its own; its runs' tasks wait for it
            tasks.append((seconds, None))
            after, train_seconds = len(tasks) - 1, 0.0
        else:
            after, train_seconds = None, seconds
        for planned in job:
            later = measured.stages[(planned.study.name, planned.run["architecture"])]
            for stage, value in later.items():
                work[stage] += value
            tasks.append((train_seconds + sum(later.values()), after))
    return Projection(work, sum(work.values()), makespan(tasks, slots), slots, len(jobs))


def makespan(tasks: list[tuple[float, int | None]], slots: int) -> float:
    """When the last of ``tasks`` ends: each is (seconds, index of the task it waits for or
    None), and whenever one of ``slots`` is free it takes the first task in list order
    whose wait is over."""
    done: set[int] = set()
    waiting = list(range(len(tasks)))
    running: list[tuple[float, int]] = []  # (end, index), a heap
    now = 0.0
    while waiting or running:
        while len(running) < max(1, slots):
            ready = next((i for i in waiting if tasks[i][1] is None or tasks[i][1] in done), None)
            if ready is None:
                break
            waiting.remove(ready)
            heapq.heappush(running, (now + tasks[ready][0], ready))
        now, index = heapq.heappop(running)
        done.add(index)
    return now


def slots_of(threads_per_run: int, runs_per_gpu: int, device: torch.device) -> int:
    """How many runs a sweep on this machine holds at once (as :func:`studies.sweep.slots`
    would find on a local Ray instance)."""
    n = max(1, (os.cpu_count() or 1) // threads_per_run)
    if device.type == "cuda":
        n = min(n, torch.cuda.device_count() * runs_per_gpu)
    return n


def print_estimate(runs: list[PlannedRun], threads_per_run: int, runs_per_gpu: int) -> None:
    """Measure, project and print the wall time of ``runs`` (``plan --estimate``)."""
    began = time.perf_counter()
    device = resolve_device(runs[0].run["train"]["device"])
    print(
        f"estimating {len(runs)} runs on this machine ({os.cpu_count()} CPUs, "
        f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} GPUs, training on "
        f"{device}) with {threads_per_run} torch thread(s), as a sweep runs them:",
        flush=True,
    )
    measured = measure(runs, threads_per_run, log=lambda line: print(line, flush=True))
    projection = project(runs, measured, slots_of(threads_per_run, runs_per_gpu, device))
    print(
        f"measured {len(measured.per_step)} training job shapes (each trained for {WARMUP} "
        f"and {WARMUP + TIMED} steps) and the later stages of {len(measured.stages)} runs "
        "(one per study and architecture)"
    )
    for stage, seconds in projection.stage_seconds.items():
        print(f"  {stage:<8} {_duration(seconds):>10} of work")
    print(
        f"projected wall time: {_duration(projection.parallel)} as a sweep (make paper) with "
        f"{projection.slots} runs at once ({projection.jobs} training jobs; runs side by side "
        f"assumed not to slow each other); {_duration(projection.serial)} in one process "
        f"(paper --serial) at {threads_per_run} thread(s); tables and figures not included"
    )
    print(f"the estimate took {_duration(time.perf_counter() - began)}")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"
