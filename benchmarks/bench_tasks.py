"""Task generation speed: agent steps per second, batched, on CPU, against RatInABox.

    .venv/bin/python benchmarks/bench_tasks.py [--batch 4096] [--steps 256] [--rounds 3]

Times, for batched discrete walks (the graph walk alone and the full graph-navigation
batch with symbols, zero-shot flags and latents), every other task's full ``sample``, and
continuous 2D trajectories, steps/s (batch x steps / seconds), and RatInABox's 2D agent
(one ``Agent.update()`` per step, in a square ``Environment``; the ``bench`` extra
installs it) in the same interleaved rounds (benchmarks/harness.py): median [min, max]
seconds and the median per-round speed-up over RatInABox per step. Without RatInABox the
table is printed without speed-ups, and says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import interleaved, print_table  # noqa: E402

from tasks import build_task  # noqa: E402
from tasks.graph_nav import SquareGrid  # noqa: E402
from tasks.path_integration import PathIntegrationConfig, smooth_trajectories  # noqa: E402

RATINABOX = "RatInABox (one 2D agent)"


def ratinabox_walk(steps: int):
    """``steps`` updates of one RatInABox agent in a 2D box (its default motion model)."""
    from ratinabox.Agent import Agent
    from ratinabox.Environment import Environment

    agent = Agent(Environment(params={"dimensionality": "2D"}))

    def walk():
        for _ in range(steps):
            agent.update()

    return walk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ratinabox-steps", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", 2)))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    B, T = args.batch, args.steps
    g = torch.Generator().manual_seed(0)
    grid = SquareGrid(8, 8)
    rows = [
        ("discrete walk (8x8 grid, walk only)", lambda: grid.walk(T, B, g), B * T),
        (
            "graph_nav sample (8x8, +symbols, flags)",
            lambda: build_task("graph_nav", {"width": 8, "height": 8, "n_steps": T}).sample(B, g),
            B * T,
        ),
        (
            "graph_nav_hex sample (8x8)",
            lambda: build_task("graph_nav_hex", {"width": 8, "height": 8, "n_steps": T}).sample(
                B, g
            ),
            B * T,
        ),
        (
            "linear_track sample",
            lambda: build_task("linear_track", {"n_steps": T}).sample(B, g),
            B * T,
        ),
        (
            "alternation sample",
            lambda: build_task("alternation", {"n_steps": T}).sample(B, g),
            B * T,
        ),
        (
            "interval_timing sample",
            lambda: build_task("interval_timing", {"n_steps": T}).sample(B, g),
            B * T,
        ),
        (
            "group_word sample (A5)",
            lambda: build_task("group_word", {"n_steps": T}).sample(B, g),
            B * T,
        ),
        (
            "mess3 sample (+beliefs)",
            lambda: build_task("mess3", {"n_steps": T}).sample(B, g),
            B * T,
        ),
        (
            "continuous trajectories (2D box)",
            lambda: smooth_trajectories(PathIntegrationConfig(n_steps=T), B, g),
            B * T,
        ),
        (
            "path_integration sample (+64 place cells)",
            lambda: build_task("path_integration", {"n_steps": T}).sample(B, g),
            B * T,
        ),
    ]
    contenders = {name: fn for name, fn, _ in rows}
    work = {name: steps for name, _, steps in rows}
    baseline = None
    if importlib.util.find_spec("ratinabox") is None:
        print("RatInABox is not installed (pip install -e '.[bench]'): no speed-ups over it")
    else:
        baseline = RATINABOX
        contenders[RATINABOX] = ratinabox_walk(args.ratinabox_steps)
        work[RATINABOX] = args.ratinabox_steps
    print(f"batch {B} x {T} steps, {args.threads} threads, torch {torch.__version__}")
    timings = interleaved(contenders, rounds=args.rounds)
    print_table(timings, baseline, work, "steps")


if __name__ == "__main__":
    main()
