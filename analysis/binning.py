"""Rate maps of many units at once, and how much of each unit position explains.

Binning (occupancy-normalised rate maps over 2-D bins or graph nodes, and a square raster
of a graph's nodes to draw them on) and the scores read straight off a rate map: Skaggs
spatial information and the correlation ratio η². Torch, vectorised over units, on whatever
device the inputs are on.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from lab.native import build, build_error

# Samples binned per step: a chunk's bin index and per-bin sums stay in cache.
_CHUNK = 2**17
# The C++ per-bin sums (CPU); where they cannot be built, a sparse product does the same.
_NATIVE = ("cogmap_binning", Path(__file__).with_name("native.cpp"))


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def rate_maps(
    pos_xy: torch.Tensor,
    activity: torch.Tensor,
    bins: int | tuple[int, int],
    extent: tuple[tuple[float, float], tuple[float, float]] | None = None,
    smooth_sigma: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Occupancy-normalised rate maps of every unit.

    pos_xy:   [samples, 2] positions (x, y).
    activity: [samples, units].
    bins:     bins per axis, or (bins_x, bins_y).
    extent:   ((x_min, x_max), (y_min, y_max)); default: the range of ``pos_xy``.
    smooth_sigma: Gaussian smoothing width in bins (0: none). The summed activity and the
              occupancy are smoothed separately and then divided, so unvisited bins do not
              pull visited ones towards zero.

    Returns (maps [units, bins_x, bins_y], occupancy [bins_x, bins_y]): mean activity per
    bin (samples per bin for occupancy); NaN where a bin was never visited. ``maps[u, i, j]``
    is bin i along x and bin j along y (plot ``maps[u].T`` with ``origin="lower"``).
    """
    if pos_xy.ndim != 2 or pos_xy.shape[1] != 2:
        raise ValueError(f"pos_xy must be [samples, 2], got {tuple(pos_xy.shape)}")
    if activity.ndim != 2 or activity.shape[0] != pos_xy.shape[0]:
        raise ValueError(
            f"activity must be [samples={pos_xy.shape[0]}, units], got {tuple(activity.shape)}"
        )
    n_x, n_y = _pair(bins)
    if extent is None:
        extent = tuple((pos_xy[:, i].min().item(), pos_xy[:, i].max().item()) for i in range(2))

    def cell(values: torch.Tensor, axis: int, n: int) -> torch.Tensor:  # [chunk] -> [chunk]
        low, high = extent[axis]
        index = ((values.double() - low) / max(high - low, 1e-12) * n).floor().long()
        return index.clamp(0, n - 1)

    def flat_bins(part: torch.Tensor) -> torch.Tensor:  # [chunk, 2] -> [chunk] bin index
        # axis by axis on 1-D columns (broadcasting over a trailing axis of 2 is 5x slower)
        return cell(part[:, 0], 0, n_x) * n_y + cell(part[:, 1], 1, n_y)

    # In chunks: the float64 temporaries stay cache-sized (4x faster on 2^20 samples).
    flat = torch.cat([flat_bins(part) for part in pos_xy.split(_CHUNK)])  # [samples]
    maps, occupancy = _binned_means(flat, activity, n_x * n_y)
    maps, occupancy = maps.reshape(-1, n_x, n_y), occupancy.reshape(n_x, n_y)
    if smooth_sigma > 0:
        maps = smooth_rate_maps(maps, occupancy, smooth_sigma)
    return maps.to(activity.dtype), torch.where(occupancy > 0, occupancy, torch.nan).float()


def smooth_rate_maps(maps: torch.Tensor, occupancy: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing (``sigma`` in bins) of rate maps [units, bins_x, bins_y] with
    occupancy [bins_x, bins_y] (NaN or 0 where unvisited): the summed activity and the
    occupancy are smoothed separately and then divided, so unvisited bins do not pull
    visited ones towards zero; unvisited bins stay NaN."""
    occupancy = torch.nan_to_num(occupancy.double(), nan=0.0)
    visited = occupancy > 0
    totals = torch.nan_to_num(maps.double()) * occupancy
    smoothed = _gaussian_smooth(totals, sigma) / _gaussian_smooth(occupancy[None], sigma).clamp(
        min=1e-12
    )
    return torch.where(visited, smoothed, torch.nan).to(maps.dtype)


def node_rate_maps(
    node: torch.Tensor, activity: torch.Tensor, n_nodes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rate maps over the nodes of a graph: node [samples] (int), activity [samples, units].

    Returns (maps [units, n_nodes], occupancy [n_nodes]), NaN where a node was never visited.
    """
    if node.ndim != 1 or activity.ndim != 2 or activity.shape[0] != node.shape[0]:
        raise ValueError(
            f"expected node [samples] and activity [samples, units], got {tuple(node.shape)} "
            f"and {tuple(activity.shape)}"
        )
    low, high = (node.min().item(), node.max().item()) if len(node) else (0, -1)
    if low < 0 or high >= n_nodes:
        raise ValueError(f"node indices must lie in [0, {n_nodes}), got {low} to {high}")
    maps, occupancy = _binned_means(node.long(), activity, n_nodes)
    return maps.to(activity.dtype), torch.where(occupancy > 0, occupancy, torch.nan).float()


def graph_raster(node_xy: torch.Tensor, per_unit: float) -> torch.Tensor:
    """[n, n] long: the node drawn at each bin of a square raster of a graph whose nodes sit
    at ``node_xy`` [nodes, 2] (edges of length 1), ``per_unit`` bins per unit of length: the
    node nearest the bin's centre, -1 where no node is within 0.75 edge lengths."""
    low = node_xy.double().min(0).values - 0.5
    span = float((node_xy.max(0).values + 0.5 - low).max())
    n = max(2, round(span * per_unit))
    offsets = (torch.arange(n, dtype=torch.float64) + 0.5) * (span / n)
    grid = torch.stack(torch.meshgrid(low[0] + offsets, low[1] + offsets, indexing="ij"), -1)
    dist = (grid[:, :, None, :] - node_xy.double()).norm(dim=-1)  # [n, n, nodes]
    nearest = dist.min(-1)
    return torch.where(nearest.values <= 0.75, nearest.indices, -1)


def _binned_means(index: torch.Tensor, activity: torch.Tensor, n_bins: int, chunk: int = _CHUNK):
    """Mean activity per bin for all units in one pass: (means [units, n_bins] with NaN
    in empty bins, counts [n_bins]). Sums over ``chunk`` samples at a time are in the input
    dtype (no float64 copy of all of activity), accumulated across chunks in float64."""
    totals = _native_sums(index, activity, n_bins, chunk)
    if totals is None:
        totals = _sparse_sums(index, activity, n_bins, chunk)
    counts = torch.bincount(index, minlength=n_bins).double()
    means = torch.where(counts > 0, totals.T / counts.clamp(min=1), torch.nan)
    return means, counts


def _native_sums(index, activity, n_bins: int, chunk: int) -> torch.Tensor | None:
    """Per-bin sums [n_bins, units] (float64) by the C++ kernel (``native.cpp``): every
    sample row read once, in order, each thread summing its samples into its own
    accumulator. None where it does not apply (not a CPU float tensor, no compiler)."""
    if activity.device.type != "cpu" or activity.dtype not in (torch.float32, torch.float64):
        return None
    if build_error(*_NATIVE) is not None:
        return None
    if activity.stride(1) != 1:
        activity = activity.contiguous()
    return build(*_NATIVE).binned_sums(index.long().contiguous(), activity, n_bins, chunk)


def _sparse_sums(index, activity, n_bins: int, chunk: int) -> torch.Tensor:
    """Per-bin sums [n_bins, units] (float64) as one sparse-dense product per chunk,
    B @ activity with B [n_bins, chunk] the 0/1 bin membership (CSR, samples sorted by
    bin); any device and dtype."""
    dtype = activity.dtype if activity.dtype in (torch.float32, torch.float64) else torch.float64
    totals = activity.new_zeros(n_bins, activity.shape[1], dtype=torch.float64)
    for start in range(0, len(index), chunk):
        rows = index[start : start + chunk]
        counts = torch.bincount(rows, minlength=n_bins)
        starts = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            membership = torch.sparse_csr_tensor(
                starts,
                torch.argsort(rows, stable=True),
                torch.ones(len(rows), dtype=dtype, device=activity.device),
                (n_bins, len(rows)),
            )
        totals += membership @ activity[start : start + chunk].to(dtype)
    return totals


def _gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian filter of [n, bx, by] with zero padding (sigma in bins)."""
    radius = max(1, int(3 * sigma + 0.5))
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = maps[:, None]  # [n, 1, bx, by]
    out = torch.nn.functional.conv2d(out, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    out = torch.nn.functional.conv2d(out, kernel.view(1, 1, 1, -1), padding=(0, radius))
    return out[:, 0]


def spatial_information(
    maps: torch.Tensor, occupancy: torch.Tensor, signed: str = "rectify"
) -> torch.Tensor:
    """Skaggs et al. (1993) spatial information in bits per unit of activity.

        I = sum_i p_i (r_i / r) log2(r_i / r),  p_i = occupancy share of bin i,
        r = sum_i p_i r_i (the mean rate),

    over visited bins. maps [units, *bins], occupancy [*bins] (NaN or 0 where unvisited)
    -> [units]. The formula needs non-negative rates; network activations are signed, so
    ``signed`` says what is done to each map first: "rectify" (negative rates -> 0),
    "shift" (subtract the map's minimum), or "error" (raise on negative rates). A unit
    whose mean rate is 0 carries 0 bits. Uniform activity carries 0 bits; a unit active in
    one of n equally visited bins carries log2(n).
    """
    flat_maps = maps.reshape(maps.shape[0], -1).double()
    occ = torch.nan_to_num(occupancy.reshape(-1).double(), nan=0.0)
    visited = (occ > 0) & ~torch.isnan(flat_maps).any(0)
    rates, p = flat_maps[:, visited], occ[visited] / occ[visited].sum()
    if signed == "rectify":
        rates = rates.clamp(min=0)
    elif signed == "shift":
        rates = rates - rates.min(dim=1, keepdim=True).values
    elif signed == "error":
        if (rates < 0).any():
            raise ValueError("negative rates: pass signed='rectify' or 'shift'")
    else:
        raise ValueError(f"unknown signed={signed!r}; valid: 'rectify', 'shift', 'error'")
    mean = rates @ p  # [units]
    ratio = rates / mean.clamp(min=1e-300)[:, None]
    terms = torch.where(ratio > 0, p * ratio * torch.log2(ratio.clamp(min=1e-300)), 0.0)
    return torch.where(mean > 0, terms.sum(1), 0.0).to(maps.dtype)


def non_negative_rates(maps: torch.Tensor, signed: str) -> torch.Tensor:
    """Rate maps [units, *bins] made non-negative for the scores that need it, in float64:
    ``signed="rectify"`` clamps negative rates at 0, ``"shift"`` subtracts each map's
    minimum over its visited bins; unvisited (NaN) bins become 0."""
    rates = maps.double()
    if signed == "shift":
        lowest = torch.nan_to_num(rates, nan=torch.inf).flatten(1).amin(1)
        rates = rates - lowest.view(-1, *[1] * (maps.ndim - 1))
    elif signed != "rectify":
        raise ValueError(f"unknown signed={signed!r}; valid: 'rectify', 'shift'")
    return torch.nan_to_num(rates, nan=0.0).clamp(min=0)


def shifted(maps: torch.Tensor) -> torch.Tensor:
    """Each map [units, *bins] minus its minimum over visited bins (signed activations ->
    rates >= 0), unvisited bins kept NaN and the dtype kept (unlike
    :func:`non_negative_rates`, for the field and gridness scores that read NaN as
    unvisited)."""
    low = torch.nan_to_num(maps, nan=torch.inf).flatten(1).amin(1)
    return maps - low.view(-1, *([1] * (maps.ndim - 1)))


def variance_explained(maps: torch.Tensor, occupancy: torch.Tensor, variance: torch.Tensor):
    """Share of each unit's variance explained by the bin it is in (correlation ratio η²).

        η² = sum_i n_i (r_i - r)² / (N var(a)),   r = sum_i n_i r_i / N,

    with n_i the samples in bin i, r_i the unit's mean there and var(a) its (population)
    variance over all N samples. maps [units, *bins], occupancy [*bins], variance [units]
    -> [units] in [0, 1]. Unlike spatial information it needs no non-negative rates, so it
    ranks signed network units fairly: 1 means activity is a function of position alone.
    """
    flat_maps = maps.reshape(maps.shape[0], -1).double()
    occ = torch.nan_to_num(occupancy.reshape(-1).double(), nan=0.0)
    visited = occ > 0
    rates, counts = flat_maps[:, visited], occ[visited]
    mean = rates @ counts / counts.sum()
    between = ((rates - mean[:, None]) ** 2) @ counts
    total = variance.double() * counts.sum()
    return torch.where(total > 0, between / total.clamp(min=1e-300), 0.0).to(maps.dtype)


def eta2_of(maps_of):
    """``act [n, units] -> η² [units]``: the share of each unit's variance explained by the
    bins of ``maps_of(act) -> (maps, occupancy)`` (sign-agnostic tuning strength)."""

    def eta2(act: torch.Tensor) -> torch.Tensor:
        maps, occupancy = maps_of(act)
        return variance_explained(maps, occupancy, act.var(0, unbiased=False))

    return eta2
