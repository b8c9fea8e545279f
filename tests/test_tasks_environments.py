"""Environments that share structure but not symbols (Task.sample_environments): walks of
one environment see one symbol per place, environments redraw the symbols, and the shared
sampler leaves Task.sample's batches as they were."""

import dataclasses
import hashlib

import pytest
import torch

from tasks import TASKS, EnvironmentMaps, build_task

WITH_ENVIRONMENTS = [
    ("graph_nav", {"width": 4, "height": 3, "n_steps": 30}),
    ("graph_nav_hex", {"width": 4, "height": 3, "n_steps": 30}),
    ("graph_nav", {"width": 4, "height": 4, "layout": "two_rooms", "n_steps": 30}),
    ("linear_track", {"n_positions": 6, "n_steps": 30}),
    ("linear_track", {"n_positions": 6, "n_steps": 30, "show_actions": False}),
]


def symbol_table(batch, spec: EnvironmentMaps) -> dict[tuple[int, int], set[int]]:
    """(env, place) -> the symbols shown there, read off the observation tokens."""
    at = batch.latents[spec.at] if spec.at else torch.ones_like(batch.inputs, dtype=torch.bool)
    table: dict[tuple[int, int], set[int]] = {}
    for env, place, symbol in zip(
        batch.latents["env"][at].tolist(),
        batch.latents[spec.latent][at].tolist(),
        batch.inputs[at].tolist(),
        strict=True,
    ):
        table.setdefault((env, place), set()).add(symbol)
    return table


@pytest.mark.parametrize(("name", "fields"), WITH_ENVIRONMENTS)
def test_walks_of_an_environment_share_its_symbols_and_environments_redraw_them(name, fields):
    task = build_task(name, fields)
    (spec,) = task.environment_maps()
    batch = task.sample_environments(3, 4, torch.Generator().manual_seed(0))
    assert batch.inputs.shape == (12, task.seq_len)
    env, walk = batch.latents["env"], batch.latents["walk"]
    assert env.shape == walk.shape == batch.inputs.shape
    assert torch.equal(env[:, 0], torch.arange(3).repeat_interleave(4))
    assert torch.equal(walk[:, 0], torch.arange(4).repeat(3))
    assert (env == env[:, :1]).all() and (walk == walk[:, :1]).all()
    env_id = batch.latents["env_id"]
    assert (env_id == env_id[:, :1]).all()
    assert len(env_id[:, 0].unique()) == 3
    assert torch.equal(env_id[:, 0].unique_consecutive(), env_id[::4, 0])

    table = symbol_table(batch, spec)
    assert all(len(symbols) == 1 for symbols in table.values())  # one symbol per place
    maps = {e: {p: s.pop() for (e_, p), s in table.items() if e_ == e} for e in range(3)}
    for a, b in ((0, 1), (0, 2), (1, 2)):
        shared = maps[a].keys() & maps[b].keys()
        assert len(shared) >= 3
        assert any(maps[a][p] != maps[b][p] for p in shared)  # the symbols were redrawn
    assert batch.latents[spec.latent][batch.latents[spec.at]].max() < spec.n_bins


@pytest.mark.parametrize(("name", "fields"), WITH_ENVIRONMENTS)
def test_one_walk_per_environment_is_exactly_sample(name, fields):
    """sample and sample_environments share the walk and the symbol draw: with one walk per
    environment they draw the same numbers in the same order."""
    task = build_task(name, fields)
    plain = task.sample(5, torch.Generator().manual_seed(3))
    grouped = task.sample_environments(5, 1, torch.Generator().manual_seed(3))
    assert torch.equal(plain.inputs, grouped.inputs)
    assert torch.equal(plain.targets, grouped.targets)
    assert set(grouped.latents) == set(plain.latents) | {"env", "walk"}
    for key, value in plain.latents.items():
        assert torch.equal(value, grouped.latents[key]), key


@pytest.mark.parametrize("name", sorted(TASKS))
def test_a_task_declares_environment_maps_exactly_when_it_samples_environments(name):
    fields = {f.name for f in dataclasses.fields(TASKS[name][0])}
    task = build_task(name, {"n_steps": 24} if "n_steps" in fields else {})
    batch = task.sample_environments(2, 2, torch.Generator().manual_seed(0))
    specs = task.environment_maps()
    assert isinstance(specs, tuple)
    assert (batch is None) == (specs == ())
    for spec in specs:
        for latent in (spec.latent, spec.env, spec.walk, spec.at):
            assert latent is None or latent in batch.latents


def test_bad_environment_counts_are_refused():
    task = build_task("graph_nav", {"width": 3, "height": 3})
    for n_envs, walks in ((0, 2), (2, 0)):
        with pytest.raises(ValueError, match="n_envs >= 1 and walks_per_env >= 1"):
            task.sample_environments(n_envs, walks, torch.Generator())


SAMPLE_DIGESTS = {
    "graph_nav": "798258ebda09e53e",
    "graph_nav_hex": "f60ddc8b071cf09d",
    "linear_track": "6c5bf96edbf56f02",
}
"""sha256 (first 16 hex digits) of ``sample(3, Generator().manual_seed(0))`` at default
configs, computed with the samplers as they were before sample_environments shared their
code: runs made before must see the same data."""


@pytest.mark.parametrize("name", sorted(SAMPLE_DIGESTS))
def test_sample_draws_what_it_drew_before_environments_shared_its_code(name):
    batch = build_task(name, {}).sample(3, torch.Generator().manual_seed(0))
    digest = hashlib.sha256()
    for tensor in [batch.inputs, batch.targets, *(batch.latents[k] for k in sorted(batch.latents))]:
        digest.update(tensor.contiguous().numpy().tobytes())
    assert digest.hexdigest()[:16] == SAMPLE_DIGESTS[name]
