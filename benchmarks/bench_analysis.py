"""Speed of the batched torch analysis against a per-map/per-unit NumPy/SciPy baseline.

    python benchmarks/bench_analysis.py [--quick]

Baselines are timed on a subset of maps/units (they are linear in that count) and reported
per map/unit; both sides run in this process, on the same threads. Targets (issue 4):
grid scores >= 50x per map, rate maps >= 100x per unit, a 1,000-shuffle null for 512
units in < 60 s.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis_reference import grid_score, rate_map  # noqa: E402

from analysis.binning import rate_maps, spatial_information  # noqa: E402
from analysis.gridness import grid_scores  # noqa: E402
from analysis.stats import shuffle_null  # noqa: E402


def timed(fn, repeats=1):
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke test)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    rows = []

    # Grid scores: 1,024 maps of 32 x 32.
    n_maps, n_base = (128, 8) if args.quick else (1024, 32)
    maps = torch.rand(n_maps, 32, 32, generator=g, dtype=torch.float64)
    grid_scores(maps[:2])  # build and cache the rotation operator once
    t_ours, ours = timed(lambda: grid_scores(maps), repeats=2)
    t_base, base = timed(lambda: [grid_score(m) for m in maps[:n_base].numpy()])
    error = np.abs(ours[:n_base].numpy() - np.array([b[0] for b in base])).max()
    rows.append(("grid scores, 32x32 maps", n_maps, n_base, t_ours, t_base, 50, f"{error:.1e}"))

    # Rate maps: 512 units over 10^6 samples, 32 x 32 bins.
    samples, units, u_base = (100_000, 64, 8) if args.quick else (1_000_000, 512, 16)
    pos = torch.rand(samples, 2, generator=g)
    activity = torch.rand(samples, units, generator=g)
    extent = ((0.0, 1.0), (0.0, 1.0))
    t_ours, (ours, _) = timed(lambda: rate_maps(pos, activity, 32, extent), repeats=2)
    pos_np, act_np = pos.numpy().astype(np.float64), activity.numpy()
    t_base, base = timed(
        lambda: [rate_map(pos_np, act_np[:, u], 32, extent) for u in range(u_base)]
    )
    error = np.nanmax(np.abs(ours[:u_base].numpy() - np.stack(base)))
    rows.append(
        (f"rate maps, {samples:.0e} samples", units, u_base, t_ours, t_base, 100, f"{error:.1e}")
    )

    # 1,000-shuffle null of spatial information for 512 units.
    samples, units, shuffles = (5_000, 64, 100) if args.quick else (10_000, 512, 1000)
    pos = torch.rand(samples, 2, generator=g)
    activity = torch.rand(samples, units, generator=g)

    def info(act, pos):
        return spatial_information(*rate_maps(pos, act, 16, extent))

    t_null, _ = timed(lambda: shuffle_null(info, activity, pos, n_shuffles=shuffles, generator=g))
    del rng

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float64 accumulation")
    header = f"{'benchmark':<28}{'n':>6}{'torch s':>10}{'per item':>11}{'baseline/item':>15}"
    print(header + f"{'speed-up':>10}{'target':>8}{'max |diff|':>12}")
    for name, n, n_b, t_o, t_b, target, err in rows:
        per_o, per_b = t_o / n, t_b / n_b
        print(
            f"{name:<28}{n:>6}{t_o:>10.3f}{per_o * 1e3:>9.3f}ms{per_b * 1e3:>13.3f}ms"
            f"{per_b / per_o:>9.0f}x{target:>7}x{err:>12}"
        )
    print(
        f"{f'shuffle null x{shuffles}':<28}{units:>6}{t_null:>10.3f}"
        f"   (target < 60 s; {samples} samples, 16x16 rate maps + Skaggs information)"
    )


if __name__ == "__main__":
    main()
