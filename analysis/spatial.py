"""Spatial tuning of many units at once: rate maps and spatial information.

Everything is torch, vectorised over units, and runs on whatever device its inputs are on.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from einops import rearrange

from analysis._rotation import prefilter_matrix, rotation_taps


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
    index = []
    for axis, n in ((0, n_x), (1, n_y)):
        low, high = extent[axis]
        scaled = (pos_xy[:, axis].double() - low) / max(high - low, 1e-12) * n
        index.append(scaled.floor().long().clamp(0, n - 1))
    flat = index[0] * n_y + index[1]  # [samples]
    maps, occupancy = _binned_means(flat, activity, n_x * n_y)
    maps, occupancy = maps.reshape(-1, n_x, n_y), occupancy.reshape(n_x, n_y)
    if smooth_sigma > 0:
        visited = occupancy > 0
        totals = torch.nan_to_num(maps) * occupancy
        smoothed = _gaussian_smooth(totals, smooth_sigma) / _gaussian_smooth(
            occupancy[None], smooth_sigma
        ).clamp(min=1e-12)
        maps = torch.where(visited, smoothed, torch.nan)
    return maps.to(activity.dtype), torch.where(occupancy > 0, occupancy, torch.nan).float()


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
    maps, occupancy = _binned_means(node.long(), activity, n_nodes)
    return maps.to(activity.dtype), torch.where(occupancy > 0, occupancy, torch.nan).float()


def _binned_means(index: torch.Tensor, activity: torch.Tensor, n_bins: int):
    """Mean activity per bin for all units in one pass: (means [units, n_bins] with NaN
    in empty bins, counts [n_bins])."""
    totals = activity.new_zeros(n_bins, activity.shape[1], dtype=torch.float64)
    # Sums over chunks of 2^16 samples in the input dtype (no float64 copy of all of
    # activity), accumulated across chunks in float64.
    for start in range(0, len(index), 2**16):
        rows = slice(start, start + 2**16)
        partial = activity.new_zeros(n_bins, activity.shape[1])
        totals += partial.index_add_(0, index[rows], activity[rows])
    counts = torch.bincount(index, minlength=n_bins).double()
    means = torch.where(counts > 0, totals.T / counts.clamp(min=1), torch.nan)
    return means, counts


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


# ----------------------------------------------------------------------------- gridness

# Ring masks of DeepMind's grid-cells training script (Banino et al. 2018): inner radius 0.2,
# outer radii linspace(0.4, 1.0, 10), as fractions of the map size in bins.
DEEPMIND_RINGS = tuple((0.2, 0.4 + i * 0.6 / 9) for i in range(9)) + ((0.2, 1.0),)
_ANGLES = (30, 45, 60, 90, 120, 135, 150)


@dataclass
class GridScores:
    """Per-unit gridness details (see :func:`grid_scores`); ``units`` first everywhere."""

    score_60: torch.Tensor  # [units] hexagonal gridness (max over rings)
    score_90: torch.Tensor  # [units] square gridness: r(90) - mean(r(45), r(135))
    ring_60: torch.Tensor  # [units, 2] (inner, outer) radius of the best ring, map fractions
    ring_90: torch.Tensor  # [units, 2]
    scale: torch.Tensor  # [units] median distance (bins) from the centre to the 6 nearest peaks
    orientation: torch.Tensor  # [units] degrees in [0, 60): hexagonal mean angle of the peaks
    autocorrelogram: torch.Tensor  # [units, 2 bins - 1, 2 bins - 1]


def autocorrelogram(
    maps: torch.Tensor, nan_mode: str = "zero", dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Spatial autocorrelogram: Pearson r between each map and itself shifted by every lag.

    maps [units, n_x, n_y] -> [units, 2 n_x - 1, 2 n_y - 1], lag (0, 0) at the centre; r is
    computed over the overlapping bins (Sargolini et al. 2006), 0 where the overlap has no
    variance. ``nan_mode="zero"`` counts unvisited (NaN) bins as 0 like DeepMind's
    ``calculate_sac`` (so scores agree with theirs); ``"exclude"`` leaves them out of every
    overlap (for maps with holes). Lag sums are batched FFTs over all units.
    """
    if maps.ndim != 3:
        raise ValueError(f"maps must be [units, bins_x, bins_y], got {tuple(maps.shape)}")
    if nan_mode not in ("zero", "exclude"):
        raise ValueError(f"unknown nan_mode={nan_mode!r}; valid: 'zero', 'exclude'")
    _, n_x, n_y = maps.shape
    values = maps.to(dtype)
    weight = (~torch.isnan(values)).to(dtype)
    values = torch.nan_to_num(values, nan=0.0)
    size = (2 * n_x, 2 * n_y)
    f_values = torch.fft.rfft2(values, s=size)
    if nan_mode == "zero":
        # Overlap sums of a full grid are rectangle sums: exact, and cheaper than FFTs.
        sum_x, sum_xx = _overlap_sums(values), _overlap_sums(values**2)
        count = _overlap_sums(torch.ones_like(values[:1]))
        sum_y, sum_yy = sum_x.flip(-2, -1), sum_xx.flip(-2, -1)
        products = _lags(torch.fft.irfft2(f_values.conj() * f_values, s=size), n_x, n_y)
    else:
        f_weight, f_squares = torch.fft.rfft2(weight, s=size), torch.fft.rfft2(values**2, s=size)
        pairs = torch.stack(
            [
                f_values.conj() * f_values,
                f_values.conj() * f_weight,
                f_weight.conj() * f_values,
                f_squares.conj() * f_weight,
                f_weight.conj() * f_squares,
                f_weight.conj() * f_weight,
            ]
        )
        products, sum_x, sum_y, sum_xx, sum_yy, count = _lags(
            torch.fft.irfft2(pairs, s=size), n_x, n_y
        )
        count = count.round()
    # r = (s_xy - s_x s_y / n) / sqrt((s_xx - s_x^2 / n) (s_yy - s_y^2 / n)); in place.
    inv_n = 1 / count.clamp(min=1)
    covariance = products.sub_((sum_x * sum_y).mul_(inv_n))
    var_x = sum_xx.sub_(sum_x.square_().mul_(inv_n))
    var_y = sum_yy.sub_(sum_y.square_().mul_(inv_n))
    tol = 1e-12 * (values**2).amax((1, 2)).clamp(min=1e-300)[:, None, None] * count
    defined = (var_x > tol) & (var_y > tol)
    return torch.where(defined, covariance.div_(var_x.mul_(var_y).clamp_(min=1e-300).sqrt_()), 0.0)


def _lags(circular: torch.Tensor, n_x: int, n_y: int) -> torch.Tensor:
    """Reorder circular lags [..., 2 n_x, 2 n_y] to [..., 2 n_x - 1, 2 n_y - 1], centre 0."""
    out = circular.new_empty(circular.shape[:-2] + (2 * n_x - 1, 2 * n_y - 1))
    for rows_out, rows_in in (
        (slice(0, n_x - 1), slice(n_x + 1, None)),
        (slice(n_x - 1, None), slice(0, n_x)),
    ):
        for cols_out, cols_in in (
            (slice(0, n_y - 1), slice(n_y + 1, None)),
            (slice(n_y - 1, None), slice(0, n_y)),
        ):
            out[..., rows_out, cols_out] = circular[..., rows_in, cols_in]
    return out


def _overlap_sums(values: torch.Tensor) -> torch.Tensor:
    """sum_p values[..., p] over the bins p whose partner p + d is on the grid, for every
    lag d: [..., n_x, n_y] -> [..., 2 n_x - 1, 2 n_y - 1], as band-matrix products."""
    band_x, band_y = (_overlap_band(n, values) for n in values.shape[-2:])
    return band_x @ values @ band_y.T


def _overlap_band(n: int, like: torch.Tensor) -> torch.Tensor:
    """[2 n - 1, n] 0/1: row d (lag d - n + 1) selects the bins p with p + lag on the grid."""
    lag = torch.arange(-(n - 1), n, device=like.device)[:, None]
    p = torch.arange(n, device=like.device)[None, :]
    return ((p + lag >= 0) & (p + lag < n)).to(like.dtype)


_OPERATORS: dict = {}


def _grid_operator(n: int, rings: tuple, device: torch.device, dtype: torch.dtype) -> dict:
    """Everything grid_scores needs that depends only on the map size, cached: the spline
    prefilter, the rotation operator at every scored angle restricted to the bins inside
    some ring, and the ring masks. The autocorrelogram is centrally symmetric, so only its
    first half (flat index <= centre) is used; off-centre bins count twice."""
    key = (n, rings, str(device), dtype)
    if key in _OPERATORS:
        return _OPERATORS[key]
    size = 2 * n - 1
    half = (size * size + 1) // 2  # flat indices 0 .. centre
    lag = torch.arange(size, device=device, dtype=dtype) - (n - 1)
    dist = torch.sqrt(lag[:, None] ** 2 + lag[None, :] ** 2).flatten()[:half]
    masks = torch.stack([(dist > lo * n) & (dist <= hi * n) for lo, hi in rings])  # [rings, half]
    pixels = torch.nonzero(masks.any(0)).flatten()  # [k]
    twice = torch.where(pixels == half - 1, 1.0, 2.0).to(dtype)
    ring_weight = masks[:, pixels].to(dtype) * twice  # [rings, k]

    def to_half(index):
        return torch.minimum(index, size * size - 1 - index)

    rows, cols, vals, exact = [], [], [], {}
    spline_angles = [a for a in _ANGLES if a % 90 != 0]
    for i, angle in enumerate(spline_angles):
        index, weight = rotation_taps(size, angle, pixels, dtype)
        row = torch.arange(len(pixels), device=device) + i * len(pixels)
        rows.append(row.repeat_interleave(16))
        cols.append(to_half(index).flatten())
        vals.append(weight.flatten())
    for angle in (a for a in _ANGLES if a % 90 == 0):
        # Multiples of 90 degrees map bins onto bins: a permutation (scipy agrees to 1e-15).
        index, weight = rotation_taps(size, angle, pixels, dtype)
        exact[angle] = to_half(index.gather(1, weight.argmax(1, keepdim=True))[:, 0])
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        rotation = (
            torch.sparse_coo_tensor(
                torch.stack([torch.cat(rows), torch.cat(cols)]),
                torch.cat(vals),
                (len(spline_angles) * len(pixels), half),
                check_invariants=True,
            )
            .coalesce()
            .to_sparse_csr()
        )
    operator = dict(
        prefilter=prefilter_matrix(size, dtype, device),
        rotation=rotation,
        spline_angles=spline_angles,
        exact=exact,
        pixels=pixels,
        ring_weight=ring_weight,
        area=ring_weight.sum(1),
    )
    _OPERATORS[key] = operator
    return operator


def grid_scores(
    maps: torch.Tensor,
    variant: str = "mean",
    nan_mode: str = "zero",
    rings: tuple = DEEPMIND_RINGS,
    details: bool = False,
    chunk: int = 512,
) -> torch.Tensor | GridScores:
    """Gridness of every rate map (Sargolini et al. 2006; Banino et al. 2018).

    maps [units, n, n] -> [units] (float64), or a :class:`GridScores` with ``details=True``.
    The autocorrelogram (:func:`autocorrelogram`) is rotated by 30, 45, 60, 90, 120, 135 and
    150 degrees; within each ring mask the rotated copy is correlated with the original
    (r = mean over the ring of (a - m)(rot(a) - m) / (var + 1e-5), m and var the ring's mean
    and variance of a); ``variant="mean"`` scores mean(r60, r120) - mean(r30, r90, r150)
    (DeepMind), ``"minmax"`` min(r60, r120) - max(r30, r90, r150) (Sargolini); the 90-degree
    score is r90 - mean(r45, r135). Each unit gets its best ring (max score).

    Follows DeepMind's ``scores.py`` so scores agree to ~1e-10 on the same maps: unvisited
    bins count as 0 (``nan_mode="zero"``; ``"exclude"`` drops them instead), rings are
    ``inner < distance <= outer`` in lag bins with radii = fraction * n
    (``DEEPMIND_RINGS``), rotation is ``scipy.ndimage.rotate(reshape=False)`` (cubic spline,
    zeros outside), reproduced in torch by a cached sparse operator, the +1e-5 in the
    variance is kept, and everything runs in float64.
    """
    if maps.ndim != 3 or maps.shape[1] != maps.shape[2] or maps.shape[1] < 2:
        raise ValueError(f"maps must be [units, n, n] with n >= 2, got {tuple(maps.shape)}")
    if variant not in ("mean", "minmax"):
        raise ValueError(f"unknown variant={variant!r}; valid: 'mean', 'minmax'")
    n = maps.shape[1]
    op = _grid_operator(n, tuple(rings), maps.device, torch.float64)
    outputs = [_grid_chunk(part, op, variant, nan_mode, details) for part in maps.split(chunk)]
    score_60, score_90, best_60, best_90, sac = (torch.cat(x) for x in zip(*outputs, strict=True))
    if not details:
        return score_60
    radii = torch.tensor(rings, dtype=torch.float64, device=maps.device)
    scale, orientation = _grid_geometry(sac)
    return GridScores(score_60, score_90, radii[best_60], radii[best_90], scale, orientation, sac)


def _grid_chunk(maps, op, variant, nan_mode, details):
    sac = autocorrelogram(maps, nan_mode)  # [u, size, size]
    units, size = sac.shape[0], sac.shape[1]
    half, prefilter = op["rotation"].shape[1], op["prefilter"]
    # Spline coefficients C = P sac P^T of the first half, laid out [(i j), u] for the
    # sparse product: rows i <= centre only.
    coeffs = rearrange(sac.reshape(-1, size) @ prefilter.T, "(u k) j -> k (j u)", u=units)
    coeffs = (prefilter[: (size + 1) // 2] @ coeffs).view(-1, units)[:half]
    flat = rearrange(sac, "u i j -> (i j) u")[:half]  # [half, u]
    rotated = op["rotation"] @ coeffs  # [(spline angles, k), u]
    by_angle = dict(
        zip(op["spline_angles"], rotated.view(-1, len(op["pixels"]), units), strict=True)
    )
    by_angle.update({a: flat[index] for a, index in op["exact"].items()})
    values = flat[op["pixels"]]  # [k, u]
    weight, area = op["ring_weight"], op["area"][:, None]  # [rings, k], [rings, 1]
    mean = weight @ values / area  # [rings, u]
    variance = (weight @ values.square() / area).sub_(mean.square()).add_(1e-5)
    corr = {
        a: (weight @ (values * r)).sub_(mean * (weight @ r)).div_(area * variance)
        for a, r in by_angle.items()
    }
    if variant == "mean":
        score_60 = (corr[60] + corr[120]) / 2 - (corr[30] + corr[90] + corr[150]) / 3
    else:
        peaks, troughs = torch.minimum(corr[60], corr[120]), corr[30].maximum(corr[90])
        score_60 = peaks - troughs.maximum(corr[150])
    score_90 = corr[90] - (corr[45] + corr[135]) / 2
    best_60, best_90 = score_60.max(0), score_90.max(0)
    return best_60.values, best_90.values, best_60.indices, best_90.indices, sac


def _grid_geometry(sac: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid scale and orientation from the six autocorrelogram peaks nearest the centre
    (Hafting et al. 2005; Sargolini et al. 2006): scale = median distance in bins,
    orientation = angle of the peaks from the x axis modulo 60 degrees (circular mean of
    6 theta), NaN without 6 positive peaks. sac [units, s, s] -> ([units], [units])."""
    size = sac.shape[1]
    centre = (size - 1) / 2
    pooled = torch.nn.functional.max_pool2d(sac[:, None], 3, stride=1, padding=1)[:, 0]
    lag = torch.arange(size, device=sac.device, dtype=sac.dtype) - centre
    dx, dy = torch.meshgrid(lag, lag, indexing="ij")
    dist = torch.sqrt(dx**2 + dy**2)
    peak = (sac == pooled) & (sac > 0) & (dist > 0)
    nearest = torch.where(peak, dist, torch.inf).flatten(1).topk(6, largest=False)
    found = torch.isfinite(nearest.values).all(1)
    scale = torch.where(found, nearest.values.median(1).values, torch.nan)
    theta = torch.atan2(dy.flatten()[nearest.indices], dx.flatten()[nearest.indices])
    mean6 = torch.atan2(torch.sin(6 * theta).sum(1), torch.cos(6 * theta).sum(1))
    orientation = torch.rad2deg(mean6 / 6).remainder(60)
    return scale, torch.where(found, orientation, torch.nan)


# ----------------------------------------------------------------------- fields, borders, HD


@dataclass
class PlaceFields:
    """Per-unit place fields (see :func:`place_fields`); fields sorted by size, largest first."""

    n_fields: torch.Tensor  # [units] long
    sizes: torch.Tensor  # [units, max_fields] bins per field (0: no such field)
    peaks: torch.Tensor  # [units, max_fields, 2] (x, y) bin of each field's peak (-1: none)
    labels: torch.Tensor  # [units, bins_x, bins_y] 0 outside fields, k in the k-th field
    place_score: torch.Tensor  # [units] share of the map's mass inside its largest field


def place_fields(
    maps: torch.Tensor, threshold: float = 0.2, min_bins: int = 4, signed: str = "rectify"
) -> PlaceFields:
    """Place fields: 4-connected groups of at least ``min_bins`` visited bins whose rate is at
    least ``threshold`` x the map's peak (e.g. Muller & Kubie 1989; O'Keefe & Dostrovsky 1971
    for place cells). maps [units, bins_x, bins_y], NaN where unvisited. Signed activations:
    ``signed="rectify"`` clamps negative rates to 0, ``"shift"`` subtracts each map's minimum.
    ``place_score`` = rate mass in the largest field / total mass (the TEM-t place-cell
    score, Whittington et al. 2022): 1 for a single compact field, small for spread maps.
    """
    if maps.ndim != 3:
        raise ValueError(f"maps must be [units, bins_x, bins_y], got {tuple(maps.shape)}")
    units, n_x, n_y = maps.shape
    rates = maps.double()
    if signed == "shift":
        rates = rates - torch.nan_to_num(rates, nan=torch.inf).amin((1, 2), keepdim=True)
    elif signed != "rectify":
        raise ValueError(f"unknown signed={signed!r}; valid: 'rectify', 'shift'")
    rates = torch.nan_to_num(rates, nan=0.0).clamp(min=0)
    peak = rates.amax((1, 2), keepdim=True)
    inside = (rates >= threshold * peak) & (peak > 0) & ~torch.isnan(maps)
    labels = _connected_components(inside)  # [units, x, y], 0 outside
    flat = labels.flatten(1)
    n_bins = n_x * n_y + 1
    sizes = torch.zeros(units, n_bins, dtype=torch.long, device=maps.device)
    sizes.scatter_add_(1, flat, torch.ones_like(flat))
    sizes[:, 0] = 0
    mass = torch.zeros(units, n_bins, dtype=torch.float64, device=maps.device)
    mass.scatter_add_(1, flat, rates.flatten(1))
    mass[:, 0] = 0
    sizes = torch.where(sizes >= min_bins, sizes, 0)
    order = sizes.argsort(dim=1, descending=True, stable=True)
    n_fields = (sizes > 0).sum(1)
    max_fields = max(int(n_fields.max()), 1)
    top = order[:, :max_fields]  # component label of the k-th largest field
    top_sizes = sizes.gather(1, top)
    # Peak bin of each component: the bin with the highest rate carrying that label.
    best = torch.full((units, n_bins), -1.0, dtype=torch.float64, device=maps.device)
    best.scatter_reduce_(1, flat, rates.flatten(1), reduce="amax")
    is_peak = (rates.flatten(1) == best.gather(1, flat)) & (flat > 0)
    position = torch.arange(n_x * n_y, device=maps.device).expand(units, -1)
    peak_bin = torch.full((units, n_bins), n_x * n_y, dtype=torch.long, device=maps.device)
    peak_bin.scatter_reduce_(1, flat, torch.where(is_peak, position, n_x * n_y), reduce="amin")
    top_peak = peak_bin.gather(1, top)
    peaks = torch.stack([top_peak // n_y, top_peak % n_y], -1)
    peaks = torch.where((top_sizes > 0)[..., None], peaks, -1)
    # Relabel: k for the k-th largest kept field, 0 elsewhere.
    rank = torch.zeros(units, n_bins, dtype=torch.long, device=maps.device)
    rank.scatter_(1, top, torch.arange(1, max_fields + 1, device=maps.device).expand(units, -1))
    rank = torch.where(sizes > 0, rank, 0)
    total = rates.flatten(1).sum(1)
    largest = mass.gather(1, top[:, :1])[:, 0] * (top_sizes[:, 0] > 0)
    return PlaceFields(
        n_fields,
        top_sizes,
        peaks,
        rank.gather(1, flat).view(units, n_x, n_y),
        torch.where(total > 0, largest / total.clamp(min=1e-300), 0.0),
    )


def _connected_components(inside: torch.Tensor) -> torch.Tensor:
    """4-connected components of a boolean [units, x, y] by label propagation: each bin
    takes the largest label among its neighbours until nothing changes. Labels are
    1 + flat index of a member bin, 0 outside."""
    units, n_x, n_y = inside.shape
    start = torch.arange(1, n_x * n_y + 1, device=inside.device).view(1, n_x, n_y)
    labels = torch.where(inside, start, 0)
    while True:
        padded = torch.nn.functional.pad(labels, (1, 1, 1, 1))
        neighbours = torch.stack(
            [
                padded[:, 1:-1, 1:-1],
                padded[:, :-2, 1:-1],
                padded[:, 2:, 1:-1],
                padded[:, 1:-1, :-2],
                padded[:, 1:-1, 2:],
            ]
        ).amax(0)
        updated = torch.where(inside, neighbours, 0)
        if torch.equal(updated, labels):
            return labels
        labels = updated


def border_scores(maps: torch.Tensor, threshold: float = 0.3, min_bins: int = 4) -> torch.Tensor:
    """Border score of Solstad et al. (2008): b = (c_M - d_m) / (c_M + d_m) in [-1, 1].

    maps [units, bins_x, bins_y] -> [units]. Fields as in :func:`place_fields` (rate >=
    ``threshold`` x peak, >= ``min_bins`` bins). c_M: the largest fraction of one wall's bins
    covered by a single field, over the four walls. d_m: mean distance of field bins to the
    nearest wall, weighted by rate, divided by half the shorter side. Units without a field
    score -1.
    """
    fields = place_fields(maps, threshold=threshold, min_bins=min_bins)
    labels = fields.labels  # [units, x, y]
    units, n_x, n_y = labels.shape
    max_fields = fields.sizes.shape[1]
    ids = torch.arange(1, max_fields + 1, device=maps.device)
    walls = [labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]]
    coverage = torch.stack(
        [(wall[:, None, :] == ids[None, :, None]).double().mean(2) for wall in walls]
    )  # [walls, units, fields]
    c_m = coverage.amax((0, 2))
    x = torch.arange(n_x, device=maps.device, dtype=torch.float64) + 0.5
    y = torch.arange(n_y, device=maps.device, dtype=torch.float64) + 0.5
    to_wall = torch.minimum(
        torch.minimum(x, n_x - x)[:, None], torch.minimum(y, n_y - y)[None, :]
    )  # [x, y]
    rates = torch.nan_to_num(maps.double(), nan=0.0).clamp(min=0) * (labels > 0)
    weight = rates.sum((1, 2))
    d_m = (rates * to_wall).sum((1, 2)) / weight.clamp(min=1e-300) / (min(n_x, n_y) / 2)
    score = (c_m - d_m) / (c_m + d_m).clamp(min=1e-300)
    return torch.where((fields.n_fields > 0) & (weight > 0), score, -1.0)


@dataclass
class HeadDirection:
    """Head-direction tuning (see :func:`head_direction_scores`)."""

    mean_resultant_length: torch.Tensor  # [units] in [0, 1]
    preferred: torch.Tensor  # [units] radians in (-pi, pi]
    tuning: torch.Tensor  # [units, bins] mean activity per direction bin (NaN: unvisited)


def head_direction_scores(
    heading: torch.Tensor, activity: torch.Tensor, bins: int = 60, signed: str = "rectify"
) -> HeadDirection:
    """Head-direction cells (Taube et al. 1990; Sargolini et al. 2006): the mean resultant
    length of each unit's occupancy-normalised directional tuning curve,

        R = |sum_k r_k exp(i theta_k)| / sum_k r_k   over visited direction bins k,

    and the preferred direction arg(sum_k r_k exp(i theta_k)). heading [samples] radians,
    activity [samples, units]. Rates must be non-negative: ``signed="rectify"`` clamps at 0,
    ``"shift"`` subtracts each curve's minimum.
    """
    if heading.ndim != 1 or activity.ndim != 2 or activity.shape[0] != heading.shape[0]:
        raise ValueError(
            f"expected heading [samples] and activity [samples, units], got "
            f"{tuple(heading.shape)} and {tuple(activity.shape)}"
        )
    wrapped = heading.double().remainder(2 * torch.pi)
    index = (wrapped / (2 * torch.pi) * bins).floor().long().clamp(0, bins - 1)
    tuning, _ = node_rate_maps(index, activity, bins)
    rates = tuning.double()
    if signed == "shift":
        rates = rates - torch.nan_to_num(rates, nan=torch.inf).amin(1, keepdim=True)
    elif signed != "rectify":
        raise ValueError(f"unknown signed={signed!r}; valid: 'rectify', 'shift'")
    rates = torch.nan_to_num(rates, nan=0.0).clamp(min=0)
    theta = (
        (torch.arange(bins, device=heading.device, dtype=torch.float64) + 0.5) * 2 * torch.pi / bins
    )
    vector = torch.complex(rates @ torch.cos(theta), rates @ torch.sin(theta))
    total = rates.sum(1)
    mrl = torch.where(total > 0, vector.abs() / total.clamp(min=1e-300), 0.0)
    return HeadDirection(mrl, vector.angle(), tuning)
