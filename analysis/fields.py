"""Place fields, border cells and field skewness: the fields of every rate map at once.

Torch, vectorised over units, on whatever device the inputs are on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from analysis.binning import non_negative_rates


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
    rates = non_negative_rates(maps, signed)
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


def field_skewness(maps: torch.Tensor, signed: str = "rectify") -> torch.Tensor:
    """Skewness of each 1-D rate map read as a distribution over position (predictive maps:
    place fields skew against the direction of travel with experience, Mehta et al. 2000,
    as the successor representation predicts, Stachenfeld et al. 2017).

    maps [units, positions] (NaN: unvisited, left out) -> [units]. With p(x) = rate(x) /
    sum rate, mean m and standard deviation s over the position index x:
    skewness = sum_x p(x) (x - m)^3 / s^3. Negative: a tail towards lower positions (on a
    track walked towards higher positions, against travel). Rates must be non-negative:
    ``signed="rectify"`` clamps at 0, ``"shift"`` subtracts each map's minimum. NaN where
    the map has no mass or all of it in one position.
    """
    if maps.ndim != 2:
        raise ValueError(f"maps must be [units, positions], got {tuple(maps.shape)}")
    rates = non_negative_rates(maps, signed)
    total = rates.sum(1, keepdim=True)
    p = rates / total.clamp(min=1e-300)
    x = torch.arange(maps.shape[1], device=maps.device, dtype=torch.float64)
    centred = x - (p * x).sum(1, keepdim=True)
    variance = (p * centred**2).sum(1)
    third = (p * centred**3).sum(1)
    defined = (total[:, 0] > 0) & (variance > 0)
    return torch.where(defined, third / variance.clamp(min=1e-300) ** 1.5, torch.nan)
