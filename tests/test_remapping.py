"""Remapping across environments: the vectorised scores against a loop-by-loop NumPy
reference, and against units whose behaviour across environments is known (stable on the
structure, remapping with the symbols, conjunctive, mixed, noise); the null for remap_r."""

import math

import numpy as np
import pytest
import torch

from analysis.remapping import map_correlation, remap_null, remapping_scores
from tasks import build_task

N_ENVS, WALKS = 4, 6


def environments(seed=0, n_envs=N_ENVS, walks=WALKS, **fields):
    """Observation tokens of graph_nav walks in several environments: node, symbol, env,
    walk [n] and the task."""
    task = build_task("graph_nav", {"width": 6, "height": 6, "n_steps": 60, **fields})
    batch = task.sample_environments(n_envs, walks, torch.Generator().manual_seed(seed))
    at = batch.latents["is_obs"]
    pick = {k: batch.latents[k][at] for k in ("node", "env", "walk")}
    return pick["node"], batch.inputs[at], pick["env"], pick["walk"], task


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
    node, symbol, env, walk, task = environments(seed=1)
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
    node, _, env, walk, _ = environments()
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


def known_units(node, symbol, g, n_each=20, noise=0.3):
    """[n, 5 * n_each] units of known behaviour across environments, and their kinds."""
    n = len(node)

    def table(*shape):
        return torch.randn(n_each, *shape, generator=g)

    place, sensory = table(36)[:, node].T, table(8)[:, symbol].T
    gain = table(8)
    gain = gain - gain.mean(1, keepdim=True)  # zero mean over the alphabet
    conjunctive = place * gain[:, symbol].T  # a place's tuning, signed by the symbol there
    mixed = (table(36)[:, node].T + table(8)[:, symbol].T) / math.sqrt(2)
    pure = torch.randn(n, n_each, generator=g)
    units = torch.cat([place, sensory, conjunctive, mixed], 1)
    units = units + noise * torch.randn(units.shape, generator=g)
    kinds = ["stable", "remapping", "conjunctive", "mixed", "noise"]
    return torch.cat([units, pure], 1), [k for k in kinds for _ in range(n_each)]


def by_kind(values, kinds):
    return {k: values[[i for i, x in enumerate(kinds) if x == k]] for k in dict.fromkeys(kinds)}


def test_structural_units_keep_their_maps_sensory_and_conjunctive_ones_remap():
    node, symbol, env, walk, _ = environments(n_symbols=8)
    activity, kinds = known_units(node, symbol, torch.Generator().manual_seed(0))
    scores = remapping_scores(activity, node, env, walk, 36)
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
    assert remap["noise"].mean().abs() < 0.1 and stable["noise"].mean().abs() < 0.1


def test_the_null_finds_kept_maps_and_stays_at_its_level_for_the_rest():
    node, symbol, env, walk, _ = environments(n_symbols=8)
    activity, kinds = known_units(node, symbol, torch.Generator().manual_seed(1), n_each=40)
    g = torch.Generator().manual_seed(2)
    null = remap_null(activity, node, env, 36, n_shuffles=199, generator=g)
    scores = remapping_scores(activity, node, env, walk, 36)
    torch.testing.assert_close(null.observed, scores.remap_r)
    p = by_kind(null.p_values, kinds)
    assert (p["stable"] < 0.01).all()
    # remapping and noise units: p-values of a valid null (about 5% below 0.05)
    for kind in ("remapping", "noise"):
        assert (p[kind] < 0.05).float().mean() < 0.15
        assert 0.35 < p[kind].mean() < 0.65
    assert null.null.abs().mean() < 0.2  # the dealt maps correlate about 0


def test_the_null_deals_values_only_over_the_bins_an_environment_visited():
    """Environment 0 visits nodes 0..17, environment 1 only nodes 0..2: every dealt pair of
    maps still overlaps on exactly nodes 0..2, so every null value is defined (dealing over
    all bins would move environment 1's three bins off environment 0's most of the time)."""
    node, _, env, _, _ = environments()
    keep = ((env == 0) & (node < 18)) | ((env == 1) & (node < 3))
    activity = torch.randn(int(keep.sum()), 3, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    null = remap_null(activity, node[keep], env[keep], 36, n_shuffles=200, generator=g)
    assert torch.isfinite(null.null).all()
    assert len(null.null.unique()) > 20


def test_bad_samples_are_refused_with_the_expected_shapes():
    node, _, env, walk, _ = environments()
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
