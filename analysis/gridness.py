"""Gridness of many rate maps at once: autocorrelograms, 60/90-degree grid scores (DeepMind's
definition), grid scale and orientation.

Torch, vectorised over maps, on whatever device the inputs are on.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from einops import rearrange

from analysis._rotation import prefilter_matrix, rotation_taps

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
    variance (below 1e-12 of its mean square: round-off). ``nan_mode="zero"`` counts
    unvisited (NaN) bins as 0 like DeepMind's ``calculate_sac`` (so scores agree with
    theirs); ``"exclude"`` leaves them out of every overlap (for maps with holes).

    Every lag sum is a direct sum over its own overlap (batched matrix products, no FFT),
    like DeepMind's ``convolve2d``: an FFT spreads round-off of the map's largest values
    over every lag, which swamps the lags whose overlap holds only small values (the tails
    of a place field) and changes grid scores by hundredths. r is centrally symmetric, so
    only lags with d_x >= 0 are computed and mirrored.
    """
    if maps.ndim != 3:
        raise ValueError(f"maps must be [units, bins_x, bins_y], got {tuple(maps.shape)}")
    if nan_mode not in ("zero", "exclude"):
        raise ValueError(f"unknown nan_mode={nan_mode!r}; valid: 'zero', 'exclude'")
    values = maps.to(dtype)
    weight = (~torch.isnan(values)).to(dtype)
    values = torch.nan_to_num(values, nan=0.0)
    squares = values**2
    products = _lag_products(values, values)  # [units, n_x, 2 n_y - 1]: d_x >= 0
    if nan_mode == "zero":  # the overlaps of a full grid are rectangles
        (sum_x, sum_y), (sum_xx, sum_yy) = _overlap_sums(values), _overlap_sums(squares)
        count = _overlap_sums(torch.ones_like(values[:1]))[0]
    else:
        sum_x, sum_y = _lag_products(values, weight), _lag_products(weight, values)
        sum_xx, sum_yy = _lag_products(squares, weight), _lag_products(weight, squares)
        count = _lag_products(weight, weight)
    # r = (s_xy - s_x s_y / n) / sqrt((s_xx - s_x^2 / n) (s_yy - s_y^2 / n)); in place.
    inv_n = 1 / count.clamp(min=1)
    covariance = products.sub_((sum_x * sum_y).mul_(inv_n))
    var_x = sum_x.square_().mul_(inv_n).neg_().add_(sum_xx)
    var_y = sum_y.square_().mul_(inv_n).neg_().add_(sum_yy)
    defined = (var_x > 1e-12 * sum_xx) & (var_y > 1e-12 * sum_yy)
    scale = var_x.clamp_(min=0).sqrt_().mul_(var_y.clamp_(min=0).sqrt_())
    half = torch.where(defined, covariance.div_(scale.clamp_(min=1e-300)), 0.0)
    return torch.cat([half[:, 1:].flip(1, 2), half], 1)


def _lag_products(a: torch.Tensor, b: torch.Tensor, cache_elements: int = 2**16) -> torch.Tensor:
    """Direct lag sums out[u, d_x, k] = sum_p a[u, p] b[u, p + (d_x, k - n_y + 1)] over the
    bins p where both are on the grid, for d_x >= 0: [units, n_x, n_y] (both) ->
    [units, n_x, 2 n_y - 1]. Row lag d_x is a batched matrix product over the rows that
    overlap (M[j, j'] = sum_i a[i, j] b[i + d_x, j']), whose diagonals j' - j are the column
    lags; units go in blocks whose products (``cache_elements`` values) stay in cache."""
    units, n_x, n_y = a.shape
    out = a.new_empty(units, n_x, 2 * n_y - 1)
    block = max(1, cache_elements // (n_y * n_y))
    for start in range(0, units, block):
        rows = slice(start, start + block)
        for d_x in range(n_x):
            pairs = a[rows, : n_x - d_x].transpose(1, 2) @ b[rows, d_x:]  # [block, n_y, n_y]
            out[rows, d_x] = _diagonal_sums(pairs)
    return out


def _diagonal_sums(m: torch.Tensor) -> torch.Tensor:
    """[b, n, n] -> [b, 2 n - 1]: out[b, k] = sum_j m[b, j, j + k - n + 1] (zero off the
    matrix), read as a sheared view of the zero-padded rows."""
    batch, n, _ = m.shape
    padded = torch.nn.functional.pad(m, (n - 1, n - 1))  # [b, n, 3 n - 2], contiguous
    width = 3 * n - 2
    return padded.as_strided((batch, n, 2 * n - 1), (n * width, width + 1, 1)).sum(1)


def _overlap_sums(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rectangle sums of [units, n_x, n_y] for every lag d with d_x >= 0, as products with
    0/1 band matrices (direct sums): (sum_x, sum_y), each [units, n_x, 2 n_y - 1], sum_x[d]
    over the bins p whose partner p + d is on the grid, sum_y[d] over those partners."""
    n_x, n_y = values.shape[-2:]
    lag = torch.arange(-(n_y - 1), n_y, device=values.device)[:, None]
    col = torch.arange(n_y, device=values.device)
    band = ((col + lag >= 0) & (col + lag < n_y)).to(values.dtype)  # [2 n_y - 1, n_y]
    cols = values @ band.T  # [units, n_x, 2 n_y - 1]
    row, d_x = torch.arange(n_x, device=values.device), torch.arange(n_x, device=values.device)
    first = (row[None, :] < n_x - d_x[:, None]).to(values.dtype)  # [d_x, row]
    last = (row[None, :] >= d_x[:, None]).to(values.dtype)
    return first @ cols, last @ cols.flip(-1)


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

    Follows DeepMind's ``scores.py`` so scores agree to ~1e-10 on the same maps, also maps
    spanning many orders of magnitude (the autocorrelogram sums every lag directly, as
    theirs does): unvisited bins count as 0 (``nan_mode="zero"``; ``"exclude"`` drops them
    instead), rings are
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
