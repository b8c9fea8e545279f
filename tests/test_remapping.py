"""Remapping across environments: the vectorised scores against a loop-by-loop NumPy
reference, and against units whose behaviour across environments is known (stable on the
structure, remapping with the symbols, conjunctive, mixed, noise, noise smooth in time);
the null for remap_r."""

import math

import numpy as np
import pytest
import torch

from analysis.remapping import map_correlation, remap_null, remapping_scores
from tasks import build_task

N_ENVS, WALKS = 4, 6


def environments(seed=0, n_envs=N_ENVS, walks=WALKS, **fields):
    """graph_nav walks in several environments: node, symbol (shown at the node), env and
    walk [sequences, pos] of every token, the observation tokens ``at`` [sequences, pos]."""
    task = build_task("graph_nav", {"width": 6, "height": 6, "n_steps": 60, **fields})
    batch = task.sample_environments(n_envs, walks, torch.Generator().manual_seed(seed))
    obs = batch.inputs[:, 0::2]
    grid = {k: batch.latents[k] for k in ("node", "env", "walk")}
    grid["symbol"] = torch.stack([obs, obs], 2).flatten(1)  # an action token's node's symbol
    return grid, batch.latents["is_obs"]


def observed(grid, at):
    """node, symbol, env, walk [n] of the observation tokens."""
    return tuple(grid[k][at] for k in ("node", "symbol", "env", "walk"))


# ----------------------------------------------------------------------------- reference


def reference_map(act, position, rows, n_bins):
    """One unit's rate map over the samples ``rows``, bin by bin (NaN: unvisited)."""
    out = np.full(n_bins, np.nan)
    for b in range(n_bins):
        here = rows & (position == b)
        if here.any():
            out[b] = act[here].mean()
    return out


def reference_r(x, y):
    both = ~np.isnan(x) & ~np.isnan(y)
    if both.sum() < 3 or np.std(x[both]) == 0 or np.std(y[both]) == 0:
        return np.nan
    return float(np.corrcoef(x[both], y[both])[0, 1])


def reference_mean(values):
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else np.nan


def reference_scores(activity, position, env, walk, n_bins):
    """remap_r, stability_r, remap_index of every unit: per unit, per pair, per environment."""
    act, position = activity.double().numpy(), position.numpy()
    env, walk = env.numpy(), walk.numpy()
    envs = np.unique(env)
    out = []
    for u in range(act.shape[1]):
        maps = {e: reference_map(act[:, u], position, env == e, n_bins) for e in envs}
        remap = reference_mean(
            [reference_r(maps[a], maps[b]) for i, a in enumerate(envs) for b in envs[i + 1 :]]
        )
        halves = []
        for e in envs:
            even = reference_map(act[:, u], position, (env == e) & (walk % 2 == 0), n_bins)
            odd = reference_map(act[:, u], position, (env == e) & (walk % 2 == 1), n_bins)
            halves.append(reference_r(even, odd))
        stability = reference_mean(halves)
        if stability > 0:
            reliability = 2 * stability / (1 + stability)
            index = 1 - min(1.0, max(-1.0, remap / reliability))
        else:
            index = np.nan
        out.append((remap, stability, index))
    return torch.tensor(out, dtype=torch.float64)  # [units, 3]


def test_scores_match_the_loop_reference_with_unvisited_bins_and_undefined_maps():
    node, _, env, walk = observed(*environments(seed=1))
    g = torch.Generator().manual_seed(0)
    n = len(node)
    table = torch.randn(5, 36, generator=g)
    activity = torch.cat(
        [
            table[:, node].T + 0.5 * torch.randn(n, 5, generator=g),  # stable, noisy
            torch.randn(n, 3, generator=g),  # noise
            torch.ones(n, 1),  # constant: no correlation is defined
            torch.where(env == 0, 1.0, torch.randn(n, generator=g))[:, None],  # flat in env 0
        ],
        1,
    )
    # bins 3 and 7 unvisited in environment 1; environment 2's walks all even: no halves
    keep = ~((env == 1) & ((node == 3) | (node == 7)))
    walk = torch.where(env == 2, 2 * walk, walk)
    args = (activity[keep], node[keep], env[keep], walk[keep], 36)
    scores = remapping_scores(*args)
    got = torch.stack([scores.remap_r, scores.stability_r, scores.remap_index], 1)
    torch.testing.assert_close(got, reference_scores(*args), equal_nan=True)
    assert torch.isnan(got[8]).all()
    assert not torch.isnan(got[9, :2]).any()  # environment 0 is left out, not the unit


def test_env_ids_need_not_be_consecutive():
    node, _, env, walk = observed(*environments())
    activity = torch.randn(len(node), 3, generator=torch.Generator().manual_seed(0))
    a = remapping_scores(activity, node, env, walk, 36)
    b = remapping_scores(activity, node, 1000 * env + 7, walk, 36)
    torch.testing.assert_close(a.remap_r, b.remap_r, equal_nan=True)


def test_map_correlation_is_pearson_over_the_bins_visited_in_both():
    a = torch.tensor([[1.0, 2.0, math.nan, 4.0, 5.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    b = torch.tensor([[2.0, 1.0, 7.0, math.nan, 3.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    r = map_correlation(a, b)
    assert r[0].item() == pytest.approx(np.corrcoef([1, 2, 5], [2, 1, 3])[0, 1])
    assert torch.isnan(r[1])  # a constant map
    assert torch.isnan(map_correlation(a[:1, :2], b[:1, :2])).all()  # fewer than 3 bins


# ----------------------------------------------------------------------------- ground truth


def known_units(grid, g, n_each=20, noise=0.3):
    """[sequences, pos, 6 * n_each] units of known behaviour across environments, and
    their kinds."""
    node, symbol = grid["node"], grid["symbol"]

    def table(*shape):
        return torch.randn(*shape, n_each, generator=g)

    place, sensory = table(36)[node], table(8)[symbol]
    gain = table(8)
    gain = gain - gain.mean(0)  # zero mean over the alphabet
    conjunctive = place * gain[symbol]  # a place's tuning, signed by the symbol there
    mixed = (table(36)[node] + table(8)[symbol]) / math.sqrt(2)
    units = torch.cat([place, sensory, conjunctive, mixed], -1)
    units = units + noise * torch.randn(units.shape, generator=g)
    pure = torch.randn(*node.shape, n_each, generator=g)
    # noise autocorrelated in time (AR(1), 0.95 per token): maps smooth along the walks
    drift = torch.randn(*node.shape, n_each, generator=g)
    for t in range(1, drift.shape[1]):
        drift[:, t] = 0.95 * drift[:, t - 1] + math.sqrt(1 - 0.95**2) * drift[:, t]
    kinds = ["stable", "remapping", "conjunctive", "mixed", "noise", "drift"]
    units = torch.cat([units, pure, drift], -1)
    return units, [k for k in kinds for _ in range(n_each)]


def by_kind(values, kinds):
    return {k: values[[i for i, x in enumerate(kinds) if x == k]] for k in dict.fromkeys(kinds)}


def test_structural_units_keep_their_maps_sensory_and_conjunctive_ones_remap():
    grid, at = environments(n_symbols=8)
    acts, kinds = known_units(grid, torch.Generator().manual_seed(0))
    node, _, env, walk = observed(grid, at)
    scores = remapping_scores(acts[at], node, env, walk, 36)
    remap, stable, index = (
        by_kind(getattr(scores, k), kinds) for k in ("remap_r", "stability_r", "remap_index")
    )
    assert (remap["stable"] > 0.9).all() and (index["stable"] < 0.1).all()
    for kind in ("remapping", "conjunctive"):  # a reliable map inside each environment...
        assert (stable[kind] > 0.8).all()
        assert remap[kind].mean().abs() < 0.1  # ...that does not carry over
        assert index[kind].mean() > 0.9
    # one symbol per node: a sensory unit's maps in two environments are unrelated; a
    # conjunctive unit's are dominated by its strongest places, whose sign the symbols
    # there set, so they correlate by chance more widely
    assert (index["remapping"] > 0.6).all()
    assert 0.3 < remap["mixed"].mean() < 0.7 and 0.3 < index["mixed"].mean() < 0.7
    for kind in ("noise", "drift"):
        assert remap[kind].mean().abs() < 0.1 and stable[kind].mean().abs() < 0.15


def test_the_null_finds_kept_maps_and_holds_its_level_for_maps_smooth_or_not():
    grid, at = environments(n_symbols=8)
    acts, kinds = known_units(grid, torch.Generator().manual_seed(1), n_each=40)
    node, _, env, walk = observed(grid, at)
    g = torch.Generator().manual_seed(2)
    null = remap_null(acts, at, node, env, 36, n_shuffles=199, generator=g)
    scores = remapping_scores(acts[at], node, env, walk, 36)
    torch.testing.assert_close(null.observed, scores.remap_r)
    p = by_kind(null.p_values, kinds)
    assert (p["stable"] < 0.01).all()
    # units with no layout kept across environments: p-values of a valid null (about 5%
    # below 0.05), also for the drift units, whose maps are smooth noise
    for kind in ("remapping", "noise", "drift"):
        assert (p[kind] < 0.05).float().mean() < 0.15, kind
        assert 0.3 < p[kind].mean() < 0.7, kind


def test_a_function_of_time_alone_keeps_no_layout():
    """Units of the step index only are unchanged by sequence shifts: p = 1."""
    grid, at = environments()
    t = torch.arange(at.shape[1], dtype=torch.float64)
    acts = torch.stack([torch.cos(0.05 * t), torch.exp(-((t - 40) ** 2) / 50)], -1)
    acts = acts.expand(at.shape[0], -1, -1)
    node, _, env, _ = observed(grid, at)
    null = remap_null(acts, at, node, env, 36, n_shuffles=50)
    assert (null.p_values == 1).all()


def test_bad_samples_are_refused_with_the_expected_shapes():
    grid, at = environments()
    node, _, env, walk = observed(grid, at)
    activity = torch.randn(len(node), 2)
    with pytest.raises(ValueError, match=r"activity must be \[samples, units\]"):
        remapping_scores(activity[:, 0], node, env, walk, 36)
    with pytest.raises(ValueError, match=rf"walk must be \[samples={len(node)}\]"):
        remapping_scores(activity, node, env, walk[:-1], 36)
    with pytest.raises(ValueError, match="at least 2 environments, got 1"):
        remapping_scores(activity, node, torch.zeros_like(env), walk, 36)
    with pytest.raises(ValueError, match=r"positions must lie in \[0, 8\)"):
        remapping_scores(activity, node, env, walk, 8)
    with pytest.raises(ValueError, match="walk indices must be >= 0"):
        remapping_scores(activity, node, env, walk - 1, 36)
    acts = torch.randn(*at.shape, 2)
    with pytest.raises(ValueError, match=r"acts \[sequences, pos, units\] and mask"):
        remap_null(acts[0], at, node, env, 36)
    with pytest.raises(ValueError, match=rf"position must be \[samples={len(node)}\]"):
        remap_null(acts, at, node[:-1], env, 36)
