"""Timing contenders side by side in one process, so every ratio is a same-run ratio.

Each round runs every contender once, in an order that rotates from round to round, so load
from other processes on a shared machine hits every contender alike. Reported per contender:
median, min and max seconds over the timed rounds, the throughput at the median, and the
ratio to a baseline contender (median of the per-round ratios: robust to a slow round).

    timings = interleaved({"ours": fn_a, "anchor": fn_b}, rounds=7, warmup=1)
    print_table(timings, baseline="anchor", work=1e6, unit="samples")
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Timing:
    name: str
    seconds: list[float]
    """Wall seconds of each timed round."""

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def interleaved(
    contenders: dict[str, Callable[[], object]], rounds: int = 7, warmup: int = 1
) -> dict[str, Timing]:
    """Time every contender once per round for ``warmup + rounds`` rounds (warm-up rounds
    are not recorded); the order rotates each round."""
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got {rounds}, {warmup}")
    names = list(contenders)
    timings = {name: Timing(name, []) for name in names}
    for index in range(warmup + rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            contenders[name]()
            elapsed = time.perf_counter() - start
            if index >= warmup:
                timings[name].seconds.append(elapsed)
    return timings


def ratio(timings: dict[str, Timing], name: str, baseline: str) -> float:
    """How many times faster ``name`` is than ``baseline``: median over rounds of the
    per-round ratio baseline_seconds / name_seconds."""
    pairs = zip(timings[baseline].seconds, timings[name].seconds, strict=True)
    return statistics.median(b / a for b, a in pairs)


def print_table(
    timings: dict[str, Timing],
    baseline: str | None = None,
    work: float | dict[str, float] | None = None,
    unit: str = "items",
    title: str = "",
) -> None:
    """One line per contender: median [min, max] seconds, throughput at the median
    (``work`` per round: one number, or one per contender), and the speed-up over
    ``baseline`` (per unit of work when contenders do different amounts)."""
    if title:
        print(f"-- {title}")
    for name, t in timings.items():
        line = f"  {name:<28} {t.median:9.4f} s  [{min(t.seconds):.4f}, {max(t.seconds):.4f}]"
        amount = work.get(name) if isinstance(work, dict) else work
        if amount:
            line += f"  {amount / t.median:12.4g} {unit}/s"
        if baseline is not None and name != baseline:
            speedup = ratio(timings, name, baseline)
            if isinstance(work, dict):  # normalise to equal work
                speedup *= work[name] / work[baseline]
            line += f"  {speedup:7.2f}x vs {baseline}"
        print(line)
