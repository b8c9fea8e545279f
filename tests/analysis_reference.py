"""Straightforward per-map NumPy/SciPy implementations of the analysis definitions.

Written the way the field's tools compute them (one map or unit at a time:
``scipy.signal.correlate2d``, ``scipy.ndimage.rotate``, ``np.histogram2d``), following the
conventions of DeepMind's grid-cells ``scores.py`` (unvisited bins count as 0, ring masks
``inner < r <= outer`` with radii as fractions of the map size, +1e-5 on the ring
variance). ``correlate2d`` sums every lag directly, like DeepMind's ``convolve2d`` (no FFT);
:func:`autocorrelogram_loop` spells the same definition out lag by lag. Used as ground
truth by ``tests/test_analysis_*.py`` and as the baseline in ``benchmarks/bench_analysis.py``.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import scipy.signal

RINGS = list(zip([0.2] * 10, np.linspace(0.4, 1.0, 10), strict=True))
ANGLES = (30, 45, 60, 90, 120, 135, 150)


def autocorrelogram(rate_map: np.ndarray) -> np.ndarray:
    """Pearson r of the map with itself at every lag over the overlap, NaN bins as 0."""
    x = np.nan_to_num(np.asarray(rate_map, dtype=np.float64))
    ones = np.ones_like(x)
    n = scipy.signal.correlate2d(ones, ones)
    s_xy = scipy.signal.correlate2d(x, x)
    s_x, s_y = scipy.signal.correlate2d(x, ones), scipy.signal.correlate2d(ones, x)
    s_xx, s_yy = scipy.signal.correlate2d(x**2, ones), scipy.signal.correlate2d(ones, x**2)
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = s_xy / n - s_x * s_y / n**2
        sd_x = np.sqrt(s_xx / n - (s_x / n) ** 2)
        sd_y = np.sqrt(s_yy / n - (s_y / n) ** 2)
        r = cov / (sd_x * sd_y)
    return np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)


def autocorrelogram_loop(rate_map: np.ndarray, nan_mode: str = "zero") -> np.ndarray:
    """DeepMind's ``calculate_sac``, one lag at a time: over the bins p whose partner p + d
    is on the map, cov = s_xy / n - s_x s_y / n^2, sd = sqrt(s_xx / n - (s_x / n)^2), r =
    cov / (sd_x sd_y), with undefined r (no variance) set to 0. ``nan_mode="zero"`` counts
    NaN bins as 0 (DeepMind); ``"exclude"`` drops the pairs where either bin is NaN."""
    x = np.asarray(rate_map, dtype=np.float64)
    n_x, n_y = x.shape
    r = np.zeros((2 * n_x - 1, 2 * n_y - 1))
    for d_x in range(-(n_x - 1), n_x):
        for d_y in range(-(n_y - 1), n_y):
            # Bins p = (i, j) with p and p + d on the map.
            i, j = slice(max(0, -d_x), n_x - max(0, d_x)), slice(max(0, -d_y), n_y - max(0, d_y))
            i_d = slice(i.start + d_x, i.stop + d_x)
            j_d = slice(j.start + d_y, j.stop + d_y)
            a, b = x[i, j].flatten(), x[i_d, j_d].flatten()
            if nan_mode == "exclude":
                both = ~np.isnan(a) & ~np.isnan(b)
                a, b = a[both], b[both]
            a, b = np.nan_to_num(a), np.nan_to_num(b)
            n = len(a)
            with np.errstate(invalid="ignore", divide="ignore"):
                cov = np.sum(a * b) / n - np.sum(a) * np.sum(b) / n**2
                sd_a = np.sqrt(np.sum(a**2) / n - (np.sum(a) / n) ** 2)
                sd_b = np.sqrt(np.sum(b**2) / n - (np.sum(b) / n) ** 2)
                value = cov / (sd_a * sd_b)
            r[d_x + n_x - 1, d_y + n_y - 1] = value if np.isfinite(value) else 0.0
    return r


def ring_mask(size: int, n: int, inner: float, outer: float) -> np.ndarray:
    lag = np.arange(size) - (size - 1) / 2
    dist = np.hypot(lag[:, None], lag[None, :])
    return ((dist > inner * n) & (dist <= outer * n)).astype(np.float64)


def grid_score(rate_map: np.ndarray, variant: str = "mean") -> tuple[float, float]:
    """(60-degree score, 90-degree score) of one map, each maximised over the rings."""
    n = rate_map.shape[0]
    sac = autocorrelogram(rate_map)
    rotated = {a: scipy.ndimage.rotate(sac, a, reshape=False) for a in ANGLES}
    best_60 = best_90 = -np.inf
    for inner, outer in RINGS:
        mask = ring_mask(sac.shape[0], n, inner, outer)
        area = mask.sum()
        mean = (sac * mask).sum() / area
        centred = (sac - mean) * mask
        var = (centred**2).sum() / area + 1e-5
        r = {a: (centred * (rot - mean) * mask).sum() / area / var for a, rot in rotated.items()}
        if variant == "mean":
            s60 = (r[60] + r[120]) / 2 - (r[30] + r[90] + r[150]) / 3
        else:
            s60 = min(r[60], r[120]) - max(r[30], r[90], r[150])
        best_60 = max(best_60, s60)
        best_90 = max(best_90, r[90] - (r[45] + r[135]) / 2)
    return best_60, best_90


def rate_map(pos_xy: np.ndarray, activity: np.ndarray, bins: int, extent) -> np.ndarray:
    """Occupancy-normalised rate map of one unit with np.histogram2d (NaN where unvisited)."""
    occupancy, _, _ = np.histogram2d(pos_xy[:, 0], pos_xy[:, 1], bins=bins, range=extent)
    total, _, _ = np.histogram2d(
        pos_xy[:, 0], pos_xy[:, 1], bins=bins, range=extent, weights=activity
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(occupancy > 0, total / occupancy, np.nan)
