"""Speed of the batched analysis against the per-map / per-unit ways of computing the same
thing, every contender timed in interleaved rounds in one process (benchmarks/harness.py).

    python benchmarks/bench_analysis.py [--quick] [--rounds 5] [--threads 2]

1. Grid scores per map, 20x20 and 32x32: ``grid_scores`` (all maps at once) against the
   per-map SciPy reference of DeepMind's scorer (tests/analysis_reference.py), timed on a
   subset of maps (its cost is linear in maps; ratios are per map).
2. Autocorrelograms: the exact lag sums against the FFT lag sums they replaced, and how far
   each is from the per-lag definition on a place field spanning 20+ orders of magnitude.
3. Rate maps of 2^20 samples x 512 units (2.1 GB of float32; 32 x 32 bins): ``rate_maps``
   against, per unit, ``np.bincount`` with the bin indices computed once (the fair NumPy
   baseline), ``np.histogram2d``, and RatInABox's ``utils.bin_data_for_histogramming``
   (what ``Neurons.plot_rate_map(method="history")`` calls; left out, with a message, when
   the ``bench`` extra is not installed), on a subset of units. A plain
   reduction (``sum``) of the same matrix, in the same rounds, measures the memory read
   bandwidth; rate maps report the fraction of it they reach.
4. Nulls: units x shuffles per second, each with the metric it is made for; and the gather
   of ``shuffle_null`` (contiguous per-unit repeats) against the strided gather it replaced,
   with a metric that only reads the shifted activity (the nulls must come out identical).

Every contender prints median [min, max] seconds over the rounds, throughput, and the
median of its per-round ratios to the baseline.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from analysis_reference import autocorrelogram_loop, grid_score, rate_map  # noqa: E402
from harness import interleaved, print_table, ratio  # noqa: E402

from analysis.binning import rate_maps, spatial_information  # noqa: E402
from analysis.field_shuffle import field_shuffle_null, shuffle_fields  # noqa: E402
from analysis.gridness import autocorrelogram, grid_scores  # noqa: E402
from analysis.relational import splitter_index  # noqa: E402
from analysis.stats import group_permutation_null, segment_shuffle_null, shuffle_null  # noqa: E402
from analysis.temporal import time_fields  # noqa: E402


def fft_autocorrelogram(maps: torch.Tensor) -> torch.Tensor:
    """The autocorrelogram as it was before exact lag sums (NaN bins as 0, float64; the
    code of analysis/spatial.py at 88bb258): lag products by batched FFTs, overlap sums by
    band matrices."""
    _, n_x, n_y = maps.shape
    values = torch.nan_to_num(maps.double())
    size = (2 * n_x, 2 * n_y)
    f_values = torch.fft.rfft2(values, s=size)
    band_x, band_y = _band(n_x), _band(n_y)
    sum_x, sum_xx = band_x @ values @ band_y.T, band_x @ values**2 @ band_y.T
    count = band_x @ torch.ones_like(values[:1]) @ band_y.T
    sum_y, sum_yy = sum_x.flip(-2, -1), sum_xx.flip(-2, -1)
    circular = torch.fft.irfft2(f_values.conj() * f_values, s=size)
    products = torch.cat(  # circular lags -> [2 n - 1, 2 n - 1], lag 0 at the centre
        [
            torch.cat([block[..., n_y + 1 :], block[..., :n_y]], -1)
            for block in (circular[..., n_x + 1 :, :], circular[..., :n_x, :])
        ],
        -2,
    )
    inv_n = 1 / count.clamp(min=1)
    covariance = products.sub_((sum_x * sum_y).mul_(inv_n))
    var_x = sum_xx.sub_(sum_x.square_().mul_(inv_n))
    var_y = sum_yy.sub_(sum_y.square_().mul_(inv_n))
    tol = 1e-12 * (values**2).amax((1, 2)).clamp(min=1e-300)[:, None, None] * count
    defined = (var_x > tol) & (var_y > tol)
    return torch.where(defined, covariance.div_(var_x.mul_(var_y).clamp_(min=1e-300).sqrt_()), 0.0)


def _band(n: int) -> torch.Tensor:
    """[2 n - 1, n] 0/1: row d selects the bins p with p + (d - n + 1) on the grid."""
    lag = torch.arange(-(n - 1), n)[:, None]
    p = torch.arange(n)[None, :]
    return ((p + lag >= 0) & (p + lag < n)).double()


def strided_shuffle_null(metric, activity, n_shuffles, generator, max_elements=2**24):
    """The null of ``shuffle_null`` as it was computed before contiguous repeats (the code
    of analysis/spatial.py at 88bb258): windows of the time-major activity repeated twice,
    gathered with a stride of ``units`` between consecutive samples. Returns [n_shuffles,
    units]."""
    samples, units = activity.shape
    min_shift = samples // 20
    shifts = torch.randint(
        min_shift, samples - min_shift + 1, (n_shuffles, units), generator=generator
    )
    doubled = rearrange(torch.cat([activity, activity]), "t u -> u t")  # a strided view
    windows = doubled.unfold(1, samples, 1)  # [units, samples + 1, samples]
    column = torch.arange(units)
    chunk = max(1, max_elements // (samples * units))
    null = []
    for block in shifts.split(chunk):  # [chunk, units]
        shifted = rearrange(windows[column, samples - block], "c u t -> t (c u)")
        null.append(metric(shifted).reshape(len(block), units))
    return torch.cat(null)


def bench_grid_scores(args, g):
    for n in (20, 32):
        maps = torch.rand(args.maps, n, n, generator=g, dtype=torch.float64)
        subset = maps[: args.reference_maps].numpy()
        grid_scores(maps[:2])  # build the cached rotation operator outside the timing
        timings = interleaved(
            {
                "grid_scores (batched)": lambda maps=maps: grid_scores(maps),
                "per-map SciPy reference": lambda s=subset: [grid_score(m) for m in s],
            },
            rounds=args.rounds,
        )
        work = {"grid_scores (batched)": len(maps), "per-map SciPy reference": len(subset)}
        print_table(timings, "per-map SciPy reference", work, "maps", f"grid scores, {n}x{n} maps")
        ours = grid_scores(maps[: len(subset)])
        error = max(abs(o - grid_score(m)[0]) for o, m in zip(ours.tolist(), subset, strict=True))
        print(f"  max |score - reference| on the subset: {error:.1e}")


def bench_autocorrelogram(args, g):
    for n in (20, 32):
        maps = torch.rand(args.maps, n, n, generator=g, dtype=torch.float64)
        timings = interleaved(
            {
                "exact lag sums": lambda maps=maps: autocorrelogram(maps),
                "FFT lag sums (before)": lambda maps=maps: fft_autocorrelogram(maps),
            },
            rounds=args.rounds,
        )
        print_table(
            timings, "FFT lag sums (before)", len(maps), "maps", f"autocorrelogram, {n}x{n}"
        )
    x = torch.arange(20, dtype=torch.float64)
    field = torch.exp(-((x[:, None] - 7.3) ** 2 + (x[None, :] - 11.6) ** 2) / (2 * 1.3**2))
    expected = autocorrelogram_loop(field.numpy())
    for name, fn in (("exact", autocorrelogram), ("FFT", fft_autocorrelogram)):
        error = np.abs(fn(field[None])[0].numpy() - expected).max()
        print(
            f"  {name}: max |r - per-lag definition| {error:.1e} on a place field spanning "
            f"{math.log10(field.max() / field.min()):.0f} orders of magnitude"
        )


def bench_rate_maps(args, g):
    samples, units, bins = args.samples, 512, 32
    pos = torch.rand(samples, 2, generator=g)
    activity = torch.rand(samples, units, generator=g)  # float32
    extent = ((0.0, 1.0), (0.0, 1.0))
    gigabytes = activity.numel() * activity.element_size() / 1e9
    pos_np = pos.numpy().astype(np.float64)
    columns = np.ascontiguousarray(activity[:, : args.reference_units].numpy().T)
    cell = np.minimum((pos_np * bins).astype(np.int64), bins - 1)
    flat = cell[:, 0] * bins + cell[:, 1]  # bin indices computed once, outside the timing

    def bincount_per_unit():
        counts = np.bincount(flat, minlength=bins * bins)
        for column in columns:
            with np.errstate(invalid="ignore", divide="ignore"):
                np.bincount(flat, weights=column, minlength=bins * bins) / counts

    def histogram2d_per_unit():
        for column in columns:
            rate_map(pos_np, column, bins, extent)

    def ratinabox_per_unit():
        from ratinabox.utils import bin_data_for_histogramming

        for column in columns:
            bin_data_for_histogramming(
                pos_np,
                extent=(0.0, 1.0, 0.0, 1.0),
                dx=1 / bins,
                weights=column,
                norm_by_bincount=True,
            )

    contenders = {
        "rate_maps (all units)": lambda: rate_maps(pos, activity, bins, extent),
        "np.bincount per unit": bincount_per_unit,
        "np.histogram2d per unit": histogram2d_per_unit,
        "RatInABox per unit": ratinabox_per_unit,
        "sum (memory bandwidth)": lambda: activity.sum(),
    }
    if importlib.util.find_spec("ratinabox") is None:
        print("  RatInABox is not installed (pip install -e '.[bench]'): its rate maps left out")
        del contenders["RatInABox per unit"]
    # Two warm-up rounds: the first two sparse products pay one-off costs (about 1.7 s and
    # 1.0 s on this machine; later ones 0.15 s).
    timings = interleaved(contenders, rounds=args.rounds, warmup=2)
    subset = args.reference_units
    work = {name: subset for name in timings if name.endswith("per unit")}
    work["rate_maps (all units)"] = units
    print_table(
        {name: timings[name] for name in work},
        "np.bincount per unit",
        work,
        "units",
        f"rate maps, {samples} samples x {units} units ({gigabytes:.1f} GB float32), "
        f"{bins}x{bins} bins",
    )
    print_table(
        {"sum (memory bandwidth)": timings["sum (memory bandwidth)"]}, None, gigabytes, "GB"
    )
    fraction = ratio(timings, "rate_maps (all units)", "sum (memory bandwidth)")
    print(
        f"  rate maps read {gigabytes / timings['rate_maps (all units)'].median:.1f} GB/s: "
        f"{fraction:.0%} of the read bandwidth (median of the per-round ratios)"
    )


def bench_nulls(args, g):
    shuffles = args.shuffles
    samples, units = 10_000, 256
    pos = torch.rand(samples, 2, generator=g)
    activity = torch.rand(samples, units, generator=g)
    t = torch.arange(20).repeat(samples // 20).double()
    trial = torch.arange(samples // 20).repeat_interleave(20)
    lap = torch.arange(samples // 20).repeat_interleave(20)
    route = (torch.rand(samples // 20, generator=g) < 0.5).long()[lap]
    position = torch.arange(20).repeat(samples // 20)
    maps = torch.rand(units, 20, 20, generator=g, dtype=torch.float64)

    def info(act, pos):
        return spatial_information(*rate_maps(pos, act, 16, ((0.0, 1.0), (0.0, 1.0))))

    def temporal(act, t):
        return time_fields(t, act, bins=20, extent=(0, 20)).information

    timings = interleaved(
        {
            "shuffle_null (spatial info)": lambda: shuffle_null(
                info, activity, pos, n_shuffles=shuffles, generator=g
            ),
            "segment_shuffle (time info)": lambda: segment_shuffle_null(
                temporal, activity, trial, t, n_shuffles=shuffles, generator=g
            ),
            "group_permutation (splitter)": lambda: group_permutation_null(
                lambda r: splitter_index(activity, position, r, 20),
                route,
                lap,
                n_shuffles=shuffles,
                generator=g,
            ),
            "shuffle_fields (20x20)": lambda: shuffle_fields(maps, shuffles, generator=g),
            "field_shuffle (grid scores)": lambda: field_shuffle_null(
                grid_scores, maps, n_shuffles=shuffles, generator=g
            ),
        },
        rounds=args.rounds,
        warmup=0,
    )
    print_table(
        timings,
        None,
        units * shuffles,
        "unit-shuffles",
        f"nulls: {units} units x {shuffles} shuffles ({samples} samples; 20x20 maps)",
    )

    def first_sample(shifted):  # reads the gathered activity, costs next to nothing
        return shifted[0]

    timings = interleaved(
        {
            "shuffle_null (contiguous)": lambda: shuffle_null(
                first_sample, activity, n_shuffles=shuffles, generator=g
            ),
            "strided gather (before)": lambda: strided_shuffle_null(
                first_sample, activity, shuffles, g
            ),
        },
        rounds=args.rounds,
    )
    print_table(
        timings,
        "strided gather (before)",
        units * shuffles,
        "unit-shuffles",
        f"shuffle_null gather: {units} units x {shuffles} shuffles x {samples} samples",
    )
    seed = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    ours = shuffle_null(first_sample, activity, n_shuffles=shuffles, generator=seed[0]).null
    before = strided_shuffle_null(first_sample, activity, shuffles, seed[1])
    print(f"  same null as before (same seed): {torch.equal(ours, before)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.maps, args.reference_maps = (64, 2) if args.quick else (1024, 16)
    args.samples, args.reference_units = (2**16, 2) if args.quick else (2**20, 8)
    args.shuffles = 10 if args.quick else 100
    if args.quick:
        args.rounds = 2
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds")
    g = torch.Generator().manual_seed(0)
    bench_grid_scores(args, g)
    bench_autocorrelogram(args, g)
    bench_rate_maps(args, g)
    bench_nulls(args, g)


if __name__ == "__main__":
    main()
