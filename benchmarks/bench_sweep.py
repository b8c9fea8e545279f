"""Sweep benchmark: a preset's runs one after another in this process against the same runs
as Ray tasks on this machine (issue: sweeps on Ray).

    .venv/bin/python benchmarks/bench_sweep.py [--preset smoke] [--study NAME ...]
        [--model NAME ...] [--task NAME ...] [--seed N ...] [--set KEY=VALUE ...]
        [--rounds 2] [--warmup 0] [--threads 1 2] [--runs-per-gpu 1 2 4 8 16]

A round runs every per-run stage (train, probe, census, analyze, causal: what a sweep runs
in each task; tables and figures are left out, they run once in the driver either way) of
every selected run, into a fresh directory, once per contender; rounds are interleaved in one
process (``harness.interleaved``), so load from other processes hits every contender alike:

* ``serial``: the stage functions over all runs in this process with torch's default
  threads (all cores), as ``python -m studies paper --serial`` runs them -- the baseline;
* ``ray-<t>thread``: :func:`studies.sweep.execute` with ``threads_per_run=t`` (Ray reserves
  t CPUs per run, so cores / t runs at a time);
* with CUDA, ``ray-gpu-k<k>``: one thread and 1/k of the GPU per run (k runs per device).

Printed: median [min, max] wall seconds per round, runs per second and per hour, each
contender's speed-up over serial (median of per-round ratios), and the start-up a sweep pays
once and the rounds leave out: ``ray.init``, and starting one Ray worker per CPU that
imports the lab (done before the first round, so no contender pays it); and the load
average before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import itertools
import os
import shutil
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from harness import interleaved, print_table  # noqa: E402

from studies.pipeline import STAGE_FUNCTIONS  # noqa: E402
from studies.plan import PlannedRun, Selection, plan  # noqa: E402
from studies.sweep import SweepConfig, connect, execute, load_sweep  # noqa: E402


def relocated(runs: list[PlannedRun], old_root: Path, new_root: Path) -> list[PlannedRun]:
    """``runs`` with their run directories moved from under ``old_root`` to ``new_root``."""
    return [
        dataclasses.replace(p, run_dir=new_root / p.run_dir.relative_to(old_root)) for p in runs
    ]


@ray.remote(num_cpus=1)
def import_lab() -> int:
    """Import what a sweep's task imports; hold the CPU a moment so that concurrent calls
    land on distinct workers. Return this worker's pid."""
    import studies.pipeline  # noqa: F401

    time.sleep(1.0)
    return os.getpid()


def start_workers(n: int) -> int:
    """Start ``n`` Ray workers with the lab imported; return how many distinct ones ran."""
    return len(set(ray.get([import_lab.remote() for _ in range(n)])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="smoke", help="configs/<preset>.toml or a path")
    parser.add_argument("--study", action="append", default=[])
    parser.add_argument("--model", action="append", default=[])
    parser.add_argument("--task", action="append", default=[])
    parser.add_argument("--seed", action="append", type=int, default=[])
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds (default 2)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed rounds (default 0)")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="torch threads per Ray run"
    )
    parser.add_argument(
        "--runs-per-gpu", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="with CUDA: k"
    )
    args = parser.parse_args()

    torch.set_flush_denormal(True)  # as the command line and every sweep worker do
    scratch = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    spec = load_sweep(args.preset, [*args.set, f"out_root={str(scratch / 'plan')!r}"])
    selection = Selection(tuple(args.study), tuple(args.model), tuple(args.task), tuple(args.seed))
    runs = [p for point in spec.points for p in plan(point.preset, point.raw, selection)]
    rounds = itertools.count()

    def fresh() -> tuple[Path, list[PlannedRun]]:
        """A new output root and the runs moved under it (every round trains from scratch)."""
        root = scratch / str(next(rounds))
        return root, relocated(runs, scratch / "plan", root)

    def serial() -> None:
        root, batch = fresh()
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            for stage in STAGE_FUNCTIONS.values():
                stage(batch, progress=False)
        shutil.rmtree(root)

    def on_ray(config: SweepConfig):
        def contender() -> None:
            root, batch = fresh()
            outcomes = execute(batch, config, "bench", progress=False)
            failed = [o for o in outcomes if o.status != "done"]
            if failed:
                raise RuntimeError(f"{len(failed)} runs failed, e.g. {failed[0]}")
            shutil.rmtree(root)

        return contender

    load_before = os.getloadavg()
    began = time.perf_counter()
    connect()
    init_seconds = time.perf_counter() - began
    resources = ray.cluster_resources()
    began = time.perf_counter()
    workers = start_workers(int(resources.get("CPU", 1)))
    workers_seconds = time.perf_counter() - began
    contenders = {"serial": serial}
    for threads in args.threads:
        contenders[f"ray-{threads}thread"] = on_ray(SweepConfig(threads_per_run=threads))
    if torch.cuda.is_available():
        for k in args.runs_per_gpu:
            contenders[f"ray-gpu-k{k}"] = on_ray(SweepConfig(threads_per_run=1, runs_per_gpu=k))
    print(
        f"{len(runs)} runs of preset {args.preset!r} {' '.join(sys.argv[1:])}; "
        f"Ray: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs, "
        f"ray.init {init_seconds:.1f} s, {workers} workers started and the lab imported in "
        f"{workers_seconds:.1f} s; torch threads in serial: {torch.get_num_threads()}; "
        f"load average before: {load_before}",
        flush=True,
    )
    try:
        timings = interleaved(contenders, rounds=args.rounds, warmup=args.warmup)
    finally:
        ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    print_table(timings, baseline="serial", work=len(runs), unit="runs", title="sweep")
    for name, timing in timings.items():
        print(f"  {name:<28} {3600 * len(runs) / timing.median:9.0f} runs/hour")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
