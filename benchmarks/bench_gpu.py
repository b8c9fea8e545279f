"""Training throughput on a GPU: one run alone, seeds batched into one model, and k training
processes sharing the device, per architecture (issue: the GPU does the work).

    .venv/bin/python benchmarks/bench_gpu.py [--out DIR] [--device cuda|cpu] [--preset full]
        [--study time_cells] [--seeds 5] [--runs-per-gpu 4 8] [--seconds 12] [--startup 60]
        [--threads 1] [--workers 1] [--every 25] [--budget 480]

Without CUDA it says so and exits 0, unless ``--device cpu``, which runs the same
measurements on the CPU at the ``smoke`` preset's sizes (to test the script).

Every measurement starts its training processes (``python benchmarks/bench_gpu.py --child``,
which call :func:`models.train.train` or :func:`models.train_seeds.train_seeds` with
``--threads`` torch threads, as a sweep's runs get, checkpoints every ``--every`` steps and
no evaluations), waits until each run has written its first checkpoint (at most
``--startup`` seconds: imports, CUDA, compilation), lets them run ``--seconds`` more,
then kills them: nothing can hang, and a process that fails is reported with the end of its
output. Steps per second come from each run's ``timing.json`` (the training seconds at each
checkpoint), from its first checkpoint to its last, so start-up and compilation are left
out; the aggregate is the sum over the processes. While they run, ``nvidia-smi`` is sampled
for the GPU's utilisation and memory. Measurements run in order of priority and stop
before ``--budget`` seconds would be exceeded (counting 20 s of start-up for each); each
is appended to ``DIR/results.jsonl`` as soon as it ends, and a table is printed at the end:

* ``sampling``: how many training batches per second one CPU core draws for the task (the
  rate at which a process without prefetching could at most train, per seed);
* ``alone``: one run (the ``--study``'s first condition, each architecture's plain arm);
* ``batched``: ``--seeds`` seeds of it as one batched model (one process);
* ``batched-prefetch``: the same with ``--workers`` loader processes drawing the batches;
* ``k<k>-alone``: k processes of one run each at once on the device (a sweep's
  ``runs_per_gpu = k`` today), ``k<k>-batched-prefetch``: k batched processes at once;
* ``alone-prefetch``: one run with ``--workers`` loader processes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

LONG = 10**7
"""Training steps of a measured run: never reached, the run is killed first."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, help="directory for results.jsonl and logs (default: a new one)"
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--preset", default=None, help="default: full (cuda), smoke (cpu)")
    parser.add_argument("--study", default="time_cells")
    parser.add_argument("--model", nargs="+", default=["transformer", "mamba", "lstm"])
    parser.add_argument("--seeds", type=int, default=5, help="seeds batched together")
    parser.add_argument("--runs-per-gpu", type=int, nargs="*", default=[4, 8])
    parser.add_argument("--seconds", type=float, default=12.0, help="measured, per measurement")
    parser.add_argument("--startup", type=float, default=60.0, help="at most, per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--workers", type=int, default=1, help="loader workers (prefetch)")
    parser.add_argument("--every", type=int, default=25, help="steps between checkpoints")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds in all")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_gpu.py needs CUDA (none here); --device cpu runs it on the CPU, small")
        return
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    run_all(args)


def run_all(args) -> None:
    import torch

    from studies.plan import Selection, plan
    from studies.preset import load_preset

    began = time.perf_counter()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    preset_name = args.preset or ("full" if args.device == "cuda" else "smoke")
    preset, raw = load_preset(preset_name, [f"seeds={list(range(args.seeds))}"])
    planned = plan(preset, raw, Selection(studies=(args.study,), models=tuple(args.model)))
    condition = planned[0].run["condition"]
    by_arm: dict[str, list[dict]] = {}  # each architecture's plain arm, every seed
    for p in planned:
        if p.run["model"] == p.run["architecture"] and p.run["condition"] == condition:
            by_arm.setdefault(p.run["model"], []).append(p.run)
    environment = {
        "kind": "environment",
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "preset": preset_name,
        "study": args.study,
        "commit": _git_commit(),
        "nvidia_smi": shutil.which("nvidia-smi") is not None,
    }
    _append(results_path, environment)
    print(json.dumps(environment), flush=True)

    # (name, processes, seeds per process, loader workers), in order of priority
    kinds = [
        ("alone", 1, 1, 0),
        ("batched", 1, args.seeds, 0),
        ("batched-prefetch", 1, args.seeds, args.workers),
    ]
    for k in args.runs_per_gpu:
        kinds += [(f"k{k}-alone", k, 1, 0), (f"k{k}-batched-prefetch", k, args.seeds, args.workers)]
    kinds.append(("alone-prefetch", 1, 1, args.workers))
    plans = [(name, arch, *rest) for name, *rest in kinds for arch in by_arm]

    results = [sampling_rate(by_arm[next(iter(by_arm))][0], min(args.seconds, 10.0))]
    _append(results_path, results[0])
    print(json.dumps(results[0]), flush=True)
    for name, arch, processes, seeds, workers in plans:
        left = args.budget - (time.perf_counter() - began)
        if left < args.seconds + 20:
            skipped = {"kind": "skipped", "name": name, "architecture": arch, "left_s": left}
            _append(results_path, skipped)
            continue
        runs = by_arm[arch]
        if len(runs) < seeds:
            raise SystemExit(f"{arch}: the preset has {len(runs)} seeds, --seeds asks {seeds}")
        result = measure(name, arch, runs[:seeds], processes, workers, args, out / name / arch)
        results.append(result)
        _append(results_path, result)
        print(json.dumps(result), flush=True)
    print_table(results)
    print(f"bench_gpu.py took {time.perf_counter() - began:.0f} s; results in {results_path}")


def measure(name, arch, runs, processes, workers, args, where: Path) -> dict:
    """Start ``processes`` training processes of ``runs`` (one run: alone; several: seeds
    batched), each with ``workers`` loader workers, sample the GPU while they run for
    ``args.seconds``, kill them, and read their runs' training rates."""
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    children = []
    for index in range(processes):
        spec = where / f"process{index}.json"
        dirs = [str(where / f"process{index}" / f"seed{r['seed']}") for r in runs]
        measured = [_measured(r, args) for r in runs]
        spec.write_text(
            json.dumps(
                {"runs": measured, "dirs": dirs, "threads": args.threads, "workers": workers}
            )
        )
        log = open(where / f"process{index}.log", "w")
        child = subprocess.Popen(
            [sys.executable, __file__, "--child", str(spec)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,  # its own process group: killed with its helpers
        )
        children.append((child, log, dirs))
    samples = []
    started = time.monotonic()
    # start-up (imports, CUDA, compilation) until every run has its first checkpoint ...
    while time.monotonic() - started < args.startup and any(
        c.poll() is None for c, _, _ in children
    ):
        if all((Path(d) / "timing.json").is_file() for _, _, dirs in children for d in dirs):
            break
        time.sleep(0.2)
    # ... then the measured window
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline and any(c.poll() is None for c, _, _ in children):
        samples.extend(_gpu_sample() if args.device == "cuda" else [])
        time.sleep(0.5)
    exits = []
    for child, log, _ in children:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        log.close()
        exits.append(child.returncode)
    rates, errors = [], []
    for index, (child, _, dirs) in enumerate(children):
        process_rates = [_rate(Path(d)) for d in dirs]
        if any(r is None for r in process_rates):
            tail = (where / f"process{index}.log").read_text(errors="replace")[-1500:]
            errors.append({"process": index, "exit": child.returncode, "log_tail": tail})
        else:
            rates.append(sum(process_rates))
    result = {
        "kind": "training",
        "name": name,
        "architecture": arch,
        "processes": processes,
        "seeds_per_process": len(runs),
        "loader_workers": workers,
        "seconds": args.seconds,
        "steps_per_second": sum(rates) if rates and not errors else None,
        "per_process": rates,
        "errors": errors,
    }
    if samples:
        result["gpu_util_mean"] = sum(s[0] for s in samples) / len(samples)
        result["gpu_util_max"] = max(s[0] for s in samples)
        result["gpu_memory_mb_max"] = max(s[1] for s in samples)
    return result


def _measured(run: dict, args) -> dict:
    """``run`` as measured: trained until killed, checkpoints every ``args.every`` steps,
    no evaluation, on ``args.device``."""
    train = dict(run["train"])
    train.update(
        steps=LONG,
        checkpoint_every=args.every,
        log_every=args.every,
        eval_every=LONG,
        device=args.device,
    )
    return {**run, "train": train}


def _rate(run_dir: Path) -> float | None:
    """Training steps per second between the first and the last checkpoint of a run (None
    with fewer than two)."""
    path = run_dir / "timing.json"
    if not path.is_file():
        return None
    try:
        timing = {int(k): v for k, v in json.loads(path.read_text()).items()}
    except ValueError:  # killed while writing: written atomically, so this is not expected
        return None
    if len(timing) < 2:
        return None
    first, last = min(timing), max(timing)
    return (last - first) / (timing[last] - timing[first])


def _gpu_sample() -> list[tuple[float, float]]:
    """[(utilisation %, memory used MB)] of GPU 0 now, or [] without nvidia-smi."""
    try:
        line = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=utilization.gpu,memory.used",
                "--format=csv,noheader,nounits",
                "--id=0",
            ],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        util, memory = (float(x) for x in line.split(","))
        return [(util, memory)]
    except (OSError, ValueError, subprocess.SubprocessError):
        return []


def sampling_rate(run: dict, seconds: float) -> dict:
    """Training batches per second one thread draws for ``run``'s task."""
    import torch

    from lab.streams import TRAIN, generator
    from models.run import build_run

    torch.set_num_threads(1)
    task, _ = build_run(run)
    batch_size = run["train"]["batch_size"]
    task.sample(batch_size, generator(0, TRAIN, 0))
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        task.sample(batch_size, generator(0, TRAIN, count))
        count += 1
    rate = count / (time.perf_counter() - began)
    return {"kind": "sampling", "task": run["task"], "batch_size": batch_size, "per_second": rate}


def child(spec_path: Path) -> None:
    """A measured training process: the runs of ``spec_path``, alone or seed-batched."""
    import torch

    from lab.process import prepare_process
    from models.train import train
    from models.train_seeds import train_seeds

    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])
    prepare_process()
    runs, dirs = spec["runs"], [Path(d) for d in spec["dirs"]]
    workers = spec["workers"]
    if len(runs) == 1:
        train(runs[0], dirs[0], progress=False, loader_workers=workers)
    else:
        for result in train_seeds(runs, dirs, progress=False, loader_workers=workers):
            if isinstance(result, BaseException):
                raise result


def print_table(results: list[dict]) -> None:
    print(f"{'measurement':<14} {'model':<12} {'steps/s':>9} {'util %':>7} {'mem MB':>8}")
    for r in results:
        if r["kind"] == "sampling":
            print(f"{'sampling':<14} {r['task']:<12} {r['per_second']:9.1f}  (batches/s, 1 core)")
            continue
        rate, util, memory = (
            r.get(k) for k in ("steps_per_second", "gpu_util_mean", "gpu_memory_mb_max")
        )
        print(
            f"{r['name']:<14} {r['architecture']:<12} "
            f"{'failed' if rate is None else f'{rate:.1f}':>9} "
            f"{'-' if util is None else f'{util:.0f}':>7} "
            f"{'-' if memory is None else f'{memory:.0f}':>8}"
        )


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, timeout=5
        )
        return done.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    main()
