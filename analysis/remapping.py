"""Remapping across environments that share structure but not symbols.

The hallmark of a cognitive map in Whittington et al. (2020)'s TEM: environments with the
same graph and new sensory symbols keep the structural codes (grid-like units, place units
tied to the structure keep their rate maps) and remap the sensory and conjunctive ones. For
every unit, from samples of several environments (``Task.sample_environments``), vectorised
over units:

* ``remap_r``: the mean, over pairs of different environments, of the Pearson correlation of
  the unit's two rate maps over the bins visited in both; each environment's map pools all
  of its walks. High: the map keeps its layout; about 0: it remaps.
* ``stability_r``: the mean, over environments, of the correlation between the maps of the
  environment's even and odd walks: how reliable a map the unit has at all (a unit tuned to
  the symbols is as stable within an environment as a structural one).
* ``remap_index``: ``1 - clip(remap_r / rho, -1, 1)`` with ``rho = 2 s / (1 + s)`` the
  Spearman-Brown reliability of a whole environment's map from the split-half ``s =
  stability_r``. ``remap_r / rho`` is the correlation between environments corrected for
  attenuation (each map's own noise lowers ``remap_r`` by its reliability), so the index
  compares the correlation across environments with the one the unit's noise allows, not
  with 1: 0 keeps its map, 1 remaps completely (unrelated maps), 2 inverts it. NaN where
  ``s <= 0`` (no reliable map to keep or lose) or a correlation is undefined.

Correlations need at least 3 bins visited in both maps and variance in both; otherwise they
are NaN and left out of the means (a unit with no defined correlation gets NaN).

The null for ``remap_r`` (:func:`remap_null`) is the census's circular shift by whole
sequences: each unit's activity is paired with the walk of another sequence, which keeps
the unit's temporal structure — and with it the spatial smoothness that temporal
autocorrelation gives a rate map along a continuous walk — and breaks its relation to the
layout. A unit whose maps are smooth because its activity is autocorrelated in time, and
unrelated across environments, meets nulls smoothed alike (dealing each map's values out
over its bins does not: measured
on graph_nav and linear_track, up to 45% of the clock construct's units, whose maps are
smooth noise, beat that null at p < 0.05, and none beat the sequence shifts). Shuffling which
environment each walk belongs to would ask the opposite question (does the map differ
between environments?), which a unit without any map passes. A function of the step index
alone is unchanged by sequence shifts (p = 1): time alone keeps no layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from analysis.binning import node_rate_maps
from analysis.stats import ShuffleNull, sequence_shift_null

MIN_BINS = 3
"""Fewest bins visited in both maps for a correlation."""


@dataclass
class Remapping:
    """Per-unit remapping scores ([units] float64; see the module docstring)."""

    remap_r: torch.Tensor
    stability_r: torch.Tensor
    remap_index: torch.Tensor


def map_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson r of rate maps a, b [..., bins] (NaN: unvisited) over the bins visited in
    both -> [...]; NaN with fewer than ``MIN_BINS`` such bins or no variance in either."""
    a, b = a.double(), b.double()
    both = ~(torch.isnan(a) | torch.isnan(b))
    n = both.sum(-1)
    a, b = torch.where(both, a, 0.0), torch.where(both, b, 0.0)
    count = n.clamp(min=1)
    da = torch.where(both, a - a.sum(-1, keepdim=True) / count[..., None], 0.0)
    db = torch.where(both, b - b.sum(-1, keepdim=True) / count[..., None], 0.0)
    var_a, var_b = (da**2).sum(-1), (db**2).sum(-1)
    r = (da * db).sum(-1) / (var_a * var_b).sqrt()
    # a constant map leaves only rounding after centring: no variance relative to its size
    varies = (var_a > 1e-20 * (a**2).sum(-1)) & (var_b > 1e-20 * (b**2).sum(-1))
    return torch.where((n >= MIN_BINS) & varies, r.clamp(-1, 1), torch.nan)


def environment_maps(
    activity: torch.Tensor, position: torch.Tensor, group: torch.Tensor, n_bins: int
) -> torch.Tensor:
    """Rate maps of every unit in every group (environment, or half of one):
    activity [n, units], position [n] in ``0..n_bins - 1``, group [n] in ``0..n_groups - 1``
    -> [n_groups, units, n_bins], NaN where the group never visited the bin."""
    n_groups = int(group.max()) + 1
    if position.numel() and (position.min() < 0 or position.max() >= n_bins):
        raise ValueError(
            f"positions must lie in [0, {n_bins}), got {int(position.min())} to "
            f"{int(position.max())}"
        )
    maps, _ = node_rate_maps(group.long() * n_bins + position.long(), activity, n_groups * n_bins)
    return maps.reshape(-1, n_groups, n_bins).transpose(0, 1)


def cross_environment_r(maps: torch.Tensor) -> torch.Tensor:
    """maps [envs, units, bins] -> [units]: mean over pairs of environments of the maps'
    correlation (NaN pairs left out)."""
    first, second = torch.triu_indices(len(maps), len(maps), offset=1)
    return torch.nanmean(map_correlation(maps[first], maps[second]), 0)


def remapping_scores(
    activity: torch.Tensor,
    position: torch.Tensor,
    env: torch.Tensor,
    walk: torch.Tensor,
    n_bins: int,
) -> Remapping:
    """Per-unit remapping scores. activity [n, units]; position [n] int bins in
    ``0..n_bins - 1``; env [n] the environment of each sample (any ids, at least two
    environments); walk [n] int >= 0, the walk within its environment (even and odd walks
    are the two halves of ``stability_r``)."""
    if activity.ndim != 2:
        raise ValueError(f"activity must be [samples, units], got {tuple(activity.shape)}")
    env_index = environment_index(activity.shape[0], position, env, walk)
    maps = environment_maps(activity, position, env_index, n_bins)
    remap_r = cross_environment_r(maps)
    halves = environment_maps(activity, position, 2 * env_index + walk.long() % 2, n_bins)
    stability_r = torch.nanmean(map_correlation(halves[0::2], halves[1::2]), 0)
    return Remapping(remap_r, stability_r, remap_index(remap_r, stability_r))


def remap_index(remap_r: torch.Tensor, stability_r: torch.Tensor) -> torch.Tensor:
    """``1 - clip(remap_r / rho, -1, 1)``, ``rho = 2 s / (1 + s)`` of the split-half
    ``s = stability_r`` (Spearman-Brown); NaN where ``s <= 0`` or either is NaN."""
    reliability = 2 * stability_r / (1 + stability_r)
    kept = (remap_r / reliability).clamp(-1, 1)
    return torch.where(stability_r > 0, 1 - kept, torch.nan)


def remap_null(
    acts: torch.Tensor,
    mask: torch.Tensor,
    position: torch.Tensor,
    env: torch.Tensor,
    n_bins: int,
    n_shuffles: int = 1000,
    generator: torch.Generator | None = None,
) -> ShuffleNull:
    """``remap_r`` [units] against activity unrelated to the layout: circular shifts by
    whole sequences (:func:`analysis.stats.sequence_shift_null`) pair each unit's activity
    with the walk of another sequence (one offset per unit and shuffle). acts [sequences,
    pos, units], mask [sequences, pos] the tokens scored; position and env [n] are the
    latents of those tokens in ``acts[mask]`` order (as in :func:`remapping_scores`).
    ``p_values`` are one-sided: a map kept above chance."""
    if acts.ndim != 3 or mask.shape != acts.shape[:2]:
        raise ValueError(
            f"expected acts [sequences, pos, units] and mask [sequences, pos], got "
            f"{tuple(acts.shape)} and {tuple(mask.shape)}"
        )
    env_index = environment_index(int(mask.sum()), position, env)

    def remap_r(activity: torch.Tensor) -> torch.Tensor:
        # rounded, so that the same maps summed in another order (shuffles run as blocks
        # of units) tie with the observed value: a unit the shifts leave unchanged gets p = 1
        r = cross_environment_r(environment_maps(activity, position, env_index, n_bins))
        return r.round(decimals=10)

    return sequence_shift_null(
        remap_r, acts, mask.bool(), n_shuffles=n_shuffles, generator=generator
    )


def environment_index(n: int, position, env, walk=None) -> torch.Tensor:
    """Validate the latents of ``n`` samples; the environment of each as ``0..n_envs - 1``."""
    for name, value in (("position", position), ("env", env), ("walk", walk)):
        if value is not None and value.shape != (n,):
            raise ValueError(f"{name} must be [samples={n}], got {tuple(value.shape)}")
    if walk is not None and n and walk.min() < 0:
        raise ValueError(f"walk indices must be >= 0, got {int(walk.min())}")
    ids, env_index = torch.unique(env, return_inverse=True)
    if len(ids) < 2:
        raise ValueError(f"remapping needs samples of at least 2 environments, got {len(ids)}")
    return env_index
