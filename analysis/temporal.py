"""Time cells: tuning to time since a cue, batched over units (torch, any device).

Time cells fire at a preferred moment of a delay, and their fields widen with the moment
they prefer (MacDonald et al. 2011; Cao, Bladon, Charczynski, Hasselmo & Howard 2022).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from analysis.binning import node_rate_maps, spatial_information


@dataclass
class TimeFields:
    """Per-unit temporal tuning (see :func:`time_fields`)."""

    tuning: torch.Tensor  # [units, bins] mean activity per time bin (NaN: bin never visited)
    occupancy: torch.Tensor  # [bins] samples per bin
    bin_centres: torch.Tensor  # [bins]
    peak_time: torch.Tensor  # [units] centre of the bin with the highest mean activity
    width: torch.Tensor  # [units] full width at half maximum above baseline (time units)
    information: torch.Tensor  # [units] Skaggs information over time bins, bits per activity


def time_fields(
    t: torch.Tensor,
    activity: torch.Tensor,
    bins: int = 50,
    extent: tuple[float, float] | None = None,
    signed: str = "rectify",
) -> TimeFields:
    """Tuning curves of every unit over time since the cue, and their time fields.

    t [samples] time since the cue, activity [samples, units]. ``bins`` equal bins over
    ``extent`` (default: the range of ``t``). Peak time = centre of the bin of maximal mean
    activity. Width = full width at half maximum: the extent of the contiguous run of bins
    around the peak whose activity is at least ``baseline + (peak - baseline) / 2`` with
    baseline = the curve's minimum (the usual time-cell field width). Temporal information
    = Skaggs et al. (1993) over time bins (:func:`analysis.binning.spatial_information`,
    ``signed`` as there).
    """
    if t.ndim != 1 or activity.ndim != 2 or activity.shape[0] != t.shape[0]:
        raise ValueError(
            f"expected t [samples] and activity [samples, units], got {tuple(t.shape)} "
            f"and {tuple(activity.shape)}"
        )
    low, high = extent if extent is not None else (t.min().item(), t.max().item())
    index = ((t.double() - low) / max(high - low, 1e-12) * bins).floor().long().clamp(0, bins - 1)
    tuning, occupancy = node_rate_maps(index, activity, bins)
    step = (high - low) / bins
    centres = low + step * (torch.arange(bins, device=t.device, dtype=torch.float64) + 0.5)
    curve = torch.nan_to_num(tuning.double(), nan=-torch.inf)
    peak = curve.argmax(1)  # [units]
    finite = torch.where(torch.isfinite(curve), curve, torch.inf)
    baseline = finite.amin(1, keepdim=True)
    above = curve >= (baseline + (curve.gather(1, peak[:, None]) - baseline) / 2)
    # Contiguous run around the peak: bins with no sub-threshold bin between them and it.
    position = torch.arange(bins, device=t.device)
    below = ~above
    left = torch.where(below & (position <= peak[:, None]), position, -1).amax(1)
    right = torch.where(below & (position >= peak[:, None]), position, bins).amin(1)
    width = (right - left - 1).double() * step
    information = spatial_information(tuning, occupancy, signed=signed)
    return TimeFields(tuning, occupancy, centres, centres[peak], width, information)


@dataclass
class Scaling:
    """Width-vs-peak regression and tiling of the delay (see :func:`scaling`)."""

    slope: torch.Tensor  # [] least-squares slope of width against peak time
    intercept: torch.Tensor  # []
    r: torch.Tensor  # [] Pearson correlation of width and peak time
    coverage: torch.Tensor  # [] fraction of the n_bins delay bins holding at least one peak
    uniformity: torch.Tensor  # [] normalised entropy of the peak histogram (1 = uniform)


def scaling(
    peak_times: torch.Tensor,
    widths: torch.Tensor,
    extent: tuple[float, float] | None = None,
    n_bins: int = 10,
) -> Scaling:
    """Scale invariance of time cells (Cao et al. 2022: width ~ 0.14 x peak time + const).

    peak_times, widths [units] (e.g. from :func:`time_fields`, restricted to significant
    time cells). Least-squares fit of width on peak time (slope, intercept, Pearson r), and
    how the peaks tile the delay: ``coverage`` = fraction of ``n_bins`` equal bins of
    ``extent`` (default: range of the peaks) holding at least one peak, ``uniformity`` =
    entropy of the peak histogram / log(n_bins). Time cells that tile a delay densely near
    its start (as in the brain) have full coverage but uniformity < 1.
    """
    if peak_times.ndim != 1 or widths.shape != peak_times.shape:
        raise ValueError(
            f"expected peak_times [units] and widths [units], got {tuple(peak_times.shape)} "
            f"and {tuple(widths.shape)}"
        )
    x, y = peak_times.double(), widths.double()
    dx, dy = x - x.mean(), y - y.mean()
    slope = (dx * dy).sum() / (dx**2).sum()
    r = (dx * dy).sum() / ((dx**2).sum() * (dy**2).sum()).sqrt()
    low, high = extent if extent is not None else (x.min().item(), x.max().item())
    index = ((x - low) / max(high - low, 1e-12) * n_bins).floor().long().clamp(0, n_bins - 1)
    counts = torch.bincount(index, minlength=n_bins).double()
    p = counts / counts.sum()
    entropy = -torch.where(p > 0, p * p.clamp(min=1e-300).log(), 0.0).sum()
    return Scaling(
        slope,
        y.mean() - slope * x.mean(),
        r,
        (counts > 0).double().mean(),
        entropy / math.log(max(n_bins, 2)),
    )


@dataclass
class Ramping:
    """Monotonic tuning to time (see :func:`ramp_scores`)."""

    r: torch.Tensor  # [units] Pearson r of activity with time
    slope: torch.Tensor  # [units] least-squares change of activity per unit of time
    t_value: torch.Tensor  # [units] slope / its standard error (n - 2 degrees of freedom)


def ramp_scores(t: torch.Tensor, activity: torch.Tensor) -> Ramping:
    """Ramping units: how linearly each unit's activity rises (or falls) with time since the
    cue, the alternative to a time field (a population of ramps also tells time).

    t [samples] time since the cue, activity [samples, units], restricted by the caller to
    the samples of interest (e.g. within the delay). Per unit, the least-squares line of
    activity on t: Pearson r, the slope, and its t statistic
    ``slope / se = r sqrt((n - 2) / (1 - r^2))``. A time cell with a field mid-delay has
    r ~ 0; a ramp |r| ~ 1. Units (or times) without variance get 0.
    """
    if t.ndim != 1 or activity.ndim != 2 or activity.shape[0] != t.shape[0]:
        raise ValueError(
            f"expected t [samples] and activity [samples, units], got {tuple(t.shape)} "
            f"and {tuple(activity.shape)}"
        )
    if len(t) < 3:
        raise ValueError(f"need at least 3 samples for a slope and its error, got {len(t)}")
    dt = t.double() - t.double().mean()
    da = activity.double() - activity.double().mean(0)
    s_tt, s_ta, s_aa = dt @ dt, dt @ da, (da * da).sum(0)
    defined = (s_tt > 0) & (s_aa > 0)
    r = torch.where(defined, s_ta / (s_tt * s_aa).clamp(min=1e-300).sqrt(), 0.0)
    slope = torch.where(s_tt > 0, s_ta / s_tt.clamp(min=1e-300), 0.0)
    residual = (1 - r**2).clamp(min=0)
    t_value = torch.where(defined, r * ((len(t) - 2) / residual.clamp(min=1e-300)).sqrt(), 0.0)
    return Ramping(r, slope, t_value)
