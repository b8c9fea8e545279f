"""What the reference predictors add to a run: fitting them and scoring them on the run's
evaluation batches (the part of the final ``evaluate`` they cost), against training steps
of the same run, in one process.

    .venv/bin/python benchmarks/bench_references.py [--preset small] [--model lstm]
        [--steps 20] [--rounds 3] [--threads 2]

For one run per study condition of the preset (the first seed, the given model), rounds
interleave (benchmarks/harness.py) the references (``tasks.reference.fit_references`` and
the task's loss and metrics of each on every evaluation batch) with ``--steps`` training
steps (sample, forward, loss, backward, AdamW). Printed: median [min, max] seconds of
each, and the references' cost as a share of the run's whole training (the per-round ratio
scaled from ``--steps`` to the run's ``train.steps``; median over rounds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from harness import interleaved  # noqa: E402

from lab.streams import EVAL, REFERENCE, TRAIN, generator  # noqa: E402
from models.run import build_run  # noqa: E402
from models.train import TrainConfig, make_optimizer  # noqa: E402
from studies.plan import Selection, plan  # noqa: E402
from studies.preset import load_preset  # noqa: E402
from tasks.reference import fit_references  # noqa: E402


def references_cost(task, config: TrainConfig, seed: int):
    """Fit the task's references and score them on the run's evaluation batches."""

    def run():
        references = fit_references(task, lambda index: generator(seed, REFERENCE, index))
        for evaluation in task.evaluation_tasks().values():
            for index in range(config.eval_batches):
                batch = evaluation.sample(config.batch_size, generator(seed, EVAL, index))
                for reference in references.values():
                    logits = reference(batch)
                    evaluation.loss(logits, batch)
                    evaluation.metrics(logits, batch)

    return run


def training_steps(task, model, config: TrainConfig, seed: int, steps: int):
    """``steps`` training steps of ``model`` as the training loop takes them."""
    optimizer = make_optimizer(model, config)

    def run():
        for step in range(steps):
            batch = task.sample(config.batch_size, generator(seed, TRAIN, step))
            loss = task.loss(model(batch.inputs), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--model", default="lstm")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", 2)))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset, raw = load_preset(args.preset)
    runs = plan(preset, raw, Selection(models=(args.model,), seeds=(preset.seeds[0],)))
    print(f"{args.preset} preset, {args.model}, {args.threads} threads, load {os.getloadavg()}")
    print(f"{'condition':<34} {'references s':>22} {f'{args.steps} steps s':>22} {'share':>7}")
    for planned in runs:
        run = planned.run
        task, model = build_run(run)
        config = TrainConfig(**{**run["train"], "device": "cpu"})
        timings = interleaved(
            {
                "references": references_cost(task, config, run["seed"]),
                "steps": training_steps(task, model, config, run["seed"], args.steps),
            },
            rounds=args.rounds,
        )
        refs, steps = timings["references"], timings["steps"]
        share = statistics.median(
            r / (s * config.steps / args.steps)
            for r, s in zip(refs.seconds, steps.seconds, strict=True)
        )
        cells = [
            f"{t.median:8.3f} [{min(t.seconds):.3f}, {max(t.seconds):.3f}]" for t in (refs, steps)
        ]
        name = f"{run['study']}/{run['condition']}"
        print(f"{name:<34} {cells[0]:>22} {cells[1]:>22} {share:7.1%}")
    print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
