"""Task generation speed: agent steps per second, batched, on CPU.

    .venv/bin/python benchmarks/bench_tasks.py [--batch 4096] [--steps 256] [--repeats 3]

Reports, for batched discrete walks (the graph walk alone and the full graph-navigation
batch with symbols, zero-shot flags and latents), every other task's full ``sample``, and
continuous 2D trajectories, the best of ``--repeats`` timings as steps/s (batch x steps /
seconds), next to RatInABox's ~600 agent steps/s (one agent, measured on this machine class,
quoted in issue 5; RatInABox is not installed here).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks import build_task  # noqa: E402
from tasks.graph_nav import SquareGrid  # noqa: E402
from tasks.path_integration import PathIntegrationConfig, smooth_trajectories  # noqa: E402

RATINABOX_STEPS_PER_S = 600


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
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
    print(
        f"batch {B} x {T} steps, {args.threads} threads, torch {torch.__version__}, best of "
        f"{args.repeats}"
    )
    print(f"{'what':45s} {'steps/s':>14s} {'x RatInABox':>12s}")
    for name, fn, steps in rows:
        rate = steps / best_time(fn, args.repeats)
        print(f"{name:45s} {rate:14,.0f} {rate / RATINABOX_STEPS_PER_S:12,.0f}")
    print(f"{'RatInABox (quoted, one agent)':45s} {RATINABOX_STEPS_PER_S:14,d} {1:12d}")


if __name__ == "__main__":
    main()
