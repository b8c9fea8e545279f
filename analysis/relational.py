"""Relational codes: splitter cells, remapping, successor representation, RSA and CKA.

Torch, batched over units, on whatever device the inputs are on.
"""

from __future__ import annotations

import torch

from analysis.binning import node_rate_maps


def splitter_index(
    activity: torch.Tensor, position: torch.Tensor, route: torch.Tensor, n_positions: int
) -> torch.Tensor:
    """Route selectivity at shared positions (splitter cells; Wood et al. 2000, Frank et al.
    2000). activity [samples, units], position [samples] (int bin/node), route [samples]
    (0 or 1) -> [units].

    At every position visited on both routes, ``|m_A - m_B| / (|m_A| + |m_B|)`` with m the
    unit's mean activity there on each route (absolute values so signed activations stay in
    [0, 1]); averaged over the shared positions. 0: same code on both routes, 1: active on
    one route only. Use :func:`analysis.stats.shuffle_null` with a route-label permutation
    for significance.
    """
    if (
        activity.ndim != 2
        or position.shape != (activity.shape[0],)
        or route.shape != position.shape
    ):
        raise ValueError(
            f"expected activity [samples, units], position [samples], route [samples]; got "
            f"{tuple(activity.shape)}, {tuple(position.shape)}, {tuple(route.shape)}"
        )
    key = position.long() * 2 + route.long()
    means, occupancy = node_rate_maps(key, activity.double(), 2 * n_positions)
    means = means.view(-1, n_positions, 2)  # [units, positions, route]
    shared = ~torch.isnan(occupancy.view(n_positions, 2)).any(1)  # [positions]
    if not shared.any():
        raise ValueError("no position is visited on both routes")
    a, b = means[:, shared, 0], means[:, shared, 1]
    index = (a - b).abs() / (a.abs() + b.abs()).clamp(min=1e-12)
    return index.mean(1).to(activity.dtype)


def remapping(maps_a: torch.Tensor, maps_b: torch.Tensor) -> torch.Tensor:
    """Rate-map correlation of each unit across two environments (global remapping gives
    r ~ 0, a stable map r ~ 1; Leutgeb et al. 2005). maps_a, maps_b [units, *bins] ->
    [units]: Pearson r over the bins visited (non-NaN) in both."""
    if maps_a.shape != maps_b.shape or maps_a.ndim < 2:
        raise ValueError(
            f"maps must both be [units, *bins], got {tuple(maps_a.shape)} and {tuple(maps_b.shape)}"
        )
    a, b = maps_a.flatten(1).double(), maps_b.flatten(1).double()
    both = (~torch.isnan(a) & ~torch.isnan(b)).double()
    a, b = torch.nan_to_num(a) * both, torch.nan_to_num(b) * both
    n = both.sum(1).clamp(min=1)
    da = (a - (a.sum(1) / n)[:, None]) * both
    db = (b - (b.sum(1) / n)[:, None]) * both
    denom = ((da**2).sum(1) * (db**2).sum(1)).sqrt()
    return torch.where(denom > 0, (da * db).sum(1) / denom.clamp(min=1e-300), torch.nan)


def successor_representation(transitions: torch.Tensor, gamma: float) -> torch.Tensor:
    """Successor representation M = (I - gamma T)^-1 (Dayan 1993; Stachenfeld et al. 2017).

    transitions [states, states], row-stochastic T[s, s'] = P(s' | s); 0 <= gamma < 1.
    M[s, s'] = expected discounted future occupancy of s' starting from s. Column j is the
    "place field" of a unit coding state j: on a directed track it extends to the states
    before j, i.e. it is skewed against the direction of travel.
    """
    if transitions.ndim != 2 or transitions.shape[0] != transitions.shape[1]:
        raise ValueError(f"transitions must be [states, states], got {tuple(transitions.shape)}")
    if not 0 <= gamma < 1:
        raise ValueError(f"gamma must be in [0, 1), got {gamma}")
    eye = torch.eye(transitions.shape[0], dtype=transitions.dtype, device=transitions.device)
    return torch.linalg.solve(eye - gamma * transitions, eye)


def rdm(x: torch.Tensor) -> torch.Tensor:
    """Representational dissimilarity matrix: 1 - Pearson r between the patterns of every
    pair of conditions. x [conditions, features] -> [conditions, conditions]."""
    if x.ndim != 2:
        raise ValueError(f"x must be [conditions, features], got {tuple(x.shape)}")
    return 1 - torch.corrcoef(x.double())


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks (average for ties) of a 1-d tensor."""
    order = x.argsort()
    sorted_x = x[order]
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=x.dtype, device=x.device)
    # Average tied ranks: mean rank within each group of equal values.
    _, group, counts = torch.unique_consecutive(sorted_x, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), dtype=x.dtype, device=x.device).index_add_(
        0, group, ranks[order]
    )
    return (sums / counts)[group][order.argsort()]


def rsa(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Representational similarity analysis (Kriegeskorte et al. 2008): Spearman correlation
    of the upper triangles of two RDMs. a, b: RDMs [conditions, conditions], or patterns
    [conditions, features] (turned into RDMs with :func:`rdm`) -> [] scalar."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(
            f"expected two [conditions, *] matrices with equal conditions, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    rdms = [
        x.double() if x.shape[0] == x.shape[1] and torch.allclose(x, x.T) else rdm(x)
        for x in (a, b)
    ]
    i, j = torch.triu_indices(a.shape[0], a.shape[0], 1, device=a.device)
    ra, rb = (_ranks(m[i, j]) for m in rdms)
    return torch.corrcoef(torch.stack([ra, rb]))[0, 1]


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear centred kernel alignment (Kornblith et al. 2019) between two representations
    of the same samples: x [samples, features_x], y [samples, features_y] -> [] in [0, 1].

        CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F),  X, Y centred over samples.

    Invariant to orthogonal transforms and isotropic scaling of either representation.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"expected x [samples, features] and y [samples, features] with equal samples, "
            f"got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    x, y = x.double() - x.double().mean(0), y.double() - y.double().mean(0)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    return cross / (torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y))
