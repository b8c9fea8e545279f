"""Seed-batched training against training one run at a time, per architecture, in one
process (issue: many runs per process).

    .venv/bin/python benchmarks/bench_train.py [--preset small] [--study NAME ...]
        [--model NAME ...] [--task NAME ...] [--seeds 0 1 2] [--steps 50] [--rounds 2]
        [--warmup 0] [--threads N] [--set KEY=VALUE ...] [--loader-workers N] [--step-only]

The selected runs of the preset, each with every seed of ``--seeds`` and its training cut
to ``--steps`` steps (evaluations and checkpoints as the preset sets them, plus the final
ones), are trained into a fresh directory once per contender and round; rounds are
interleaved (``harness.interleaved``), so load from other processes hits both alike:

* ``alone``: :func:`models.train.train` on each run, one after another (the baseline);
* ``batched``: :func:`models.train_seeds.train_seeds` on each group of runs that differ
  only in their seed;
* with ``--loader-workers N``, also ``alone-prefetch`` and ``batched-prefetch``: the same
  with N worker processes drawing the batches (:mod:`models.prefetch`).

Printed per architecture and for all runs: median [min, max] seconds per round, the
aggregate training steps per second, and the speed-up of ``batched`` over ``alone``
(median of per-round ratios).

``--step-only`` times the bare training step instead (forward, loss, backward, clipping,
AdamW) on batches drawn once, of the first run of each architecture with its seeds: each
seed's model in turn against the seeds' ensemble, ``--rounds`` rounds of ``--steps`` steps:
what batching does to the step itself, without drawing batches, evaluations or files.
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import shutil
import sys
import tempfile
import warnings
from contextlib import redirect_stderr
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from harness import interleaved, print_table  # noqa: E402

from lab.process import prepare_process  # noqa: E402
from lab.streams import TRAIN, generator  # noqa: E402
from models.ensemble import Ensemble  # noqa: E402
from models.run import build_run  # noqa: E402
from models.train import TrainConfig, adamw, make_optimizer, train  # noqa: E402
from models.train_seeds import seedless, train_seeds  # noqa: E402
from studies.plan import Selection, plan  # noqa: E402
from studies.preset import load_preset  # noqa: E402


def seed_groups(runs: list[dict]) -> list[list[dict]]:
    """``runs`` grouped by everything but their seed, in order of first appearance."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(seedless(run), []).append(run)
    return list(groups.values())


def bare_steps(group: list[dict], steps: int) -> dict:
    """Contenders ``alone`` and ``batched``: ``steps`` training steps of each seed of
    ``group`` on its own model, or of the seeds' ensemble, on batches drawn once."""
    task = build_run(group[0])[0]
    config = TrainConfig(**group[0]["train"])
    batches = [task.sample(config.batch_size, generator(r["seed"], TRAIN, 0)) for r in group]
    models = [build_run(r)[1] for r in group]
    optimizers = [make_optimizer(m, config) for m in models]
    ensemble = Ensemble([build_run(r)[1] for r in group])
    stacked = adamw(ensemble.parameter_groups(config.weight_decay), config)
    inputs = torch.stack([b.inputs for b in batches])

    def alone() -> None:
        for _ in range(steps):
            for model, optimizer, batch in zip(models, optimizers, batches, strict=True):
                loss = task.loss(model(batch.inputs), batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                loss.item()

    def batched() -> None:
        for _ in range(steps):
            logits = ensemble(inputs)
            losses = torch.stack([task.loss(logits[j], b) for j, b in enumerate(batches)])
            stacked.zero_grad(set_to_none=True)
            losses.sum().backward()
            ensemble.clip_grad_norms_(config.grad_clip)
            stacked.step()
            losses.tolist()

    return {"alone": alone, "batched": batched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small", help="configs/<preset>.toml or a path")
    parser.add_argument("--study", action="append", default=[])
    parser.add_argument("--model", action="append", default=[])
    parser.add_argument("--task", action="append", default=[])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=50, help="training steps per run")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds (default 2)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed rounds (default 0)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--step-only", action="store_true", help="time the bare step")
    parser.add_argument("--loader-workers", type=int, default=0, help="prefetch contenders")
    args = parser.parse_args()

    prepare_process()
    if args.threads:
        torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="bench_train_"))
    preset, raw = load_preset(args.preset, args.set)
    selection = Selection(tuple(args.study), tuple(args.model), tuple(args.task), ())
    runs = []
    for planned in plan(preset, raw, selection):
        for seed in args.seeds:
            run = {**planned.run, "seed": seed}
            run["model_config"] = {**run["model_config"], "seed": seed}
            run["train"] = {**run["train"], "steps": min(args.steps, run["train"]["steps"])}
            runs.append(run)
    rounds = itertools.count()

    def directory(run: dict, root: Path) -> Path:
        return root / run["study"] / run["condition"] / run["model"] / f"seed{run['seed']}"

    def alone(selected: list[dict], workers: int = 0):
        def contender() -> None:
            root = scratch / str(next(rounds))
            for run in selected:
                train(run, directory(run, root), progress=False, loader_workers=workers)
            shutil.rmtree(root)

        return contender

    def batched(selected: list[dict], workers: int = 0):
        def contender() -> None:
            root = scratch / str(next(rounds))
            for group in seed_groups(selected):
                dirs = [directory(r, root) for r in group]
                results = train_seeds(group, dirs, progress=False, loader_workers=workers)
                errors = [r for r in results if isinstance(r, BaseException)]
                if errors:
                    raise errors[0]
            shutil.rmtree(root)

        return contender

    architectures = sorted({r["architecture"] for r in runs})
    if args.step_only:
        for architecture in architectures:
            group = seed_groups([r for r in runs if r["architecture"] == architecture])[0]
            timings = interleaved(bare_steps(group, args.steps), args.rounds, args.warmup)
            title = f"{group[0]['study']}/{group[0]['model']}, seeds {args.seeds}: bare steps"
            print_table(
                timings, baseline="alone", work=args.steps * len(group), unit="steps", title=title
            )
        return
    print(
        f"{len(runs)} runs ({len(seed_groups(runs))} groups of seeds {args.seeds}) of preset "
        f"{args.preset!r}, {args.steps} steps at most; torch threads {torch.get_num_threads()}; "
        f"load average before: {os.getloadavg()}",
        flush=True,
    )
    try:
        totals = {"alone": 0.0, "batched": 0.0}
        for architecture in architectures:
            selected = [r for r in runs if r["architecture"] == architecture]
            steps = sum(r["train"]["steps"] for r in selected)
            contenders = {"alone": alone(selected), "batched": batched(selected)}
            if args.loader_workers:
                contenders["alone-prefetch"] = alone(selected, args.loader_workers)
                contenders["batched-prefetch"] = batched(selected, args.loader_workers)
            with warnings.catch_warnings(), redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                timings = interleaved(contenders, rounds=args.rounds, warmup=args.warmup)
            title = f"{architecture}: {len(selected)} runs, {steps} steps"
            print_table(timings, baseline="alone", work=steps, unit="steps", title=title)
            for name in totals:
                totals[name] += timings[name].median
        steps = sum(r["train"]["steps"] for r in runs)
        print(
            f"-- all: {steps} steps; alone {steps / totals['alone']:.1f} steps/s, batched "
            f"{steps / totals['batched']:.1f} steps/s: {totals['alone'] / totals['batched']:.2f}x "
            "(sum of the per-architecture medians)"
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
