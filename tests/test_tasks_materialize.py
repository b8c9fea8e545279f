import torch

from tasks import build_task
from tasks.materialize import cache_key, dataset_batch, materialize


def test_materialize_round_trips_and_loads_from_cache(tmp_path):
    task = build_task("graph_nav", {"width": 3, "height": 3, "n_steps": 8})
    ds = materialize(task, 10, seed=5, cache_dir=tmp_path, batch_size=4)
    assert len(ds) == 10
    assert set(ds.column_names) == {"inputs", "targets", *task.sample(1, torch.Generator()).latents}
    generator = torch.Generator().manual_seed(5)
    first = task.sample(4, generator)
    batch = dataset_batch(ds[0:4])
    assert torch.equal(batch.inputs, first.inputs) and torch.equal(batch.targets, first.targets)
    for name, value in first.latents.items():
        assert batch.latents[name].dtype == value.dtype
        assert torch.equal(batch.latents[name], value), name
    # one directory per (task, config, n, seed), nothing temporary left behind
    entries = list(tmp_path.iterdir())
    assert [p.name for p in entries] == [f"graph_nav-{cache_key(task, 10, 5)}"]
    # the second call reads the cache: a marker file in it survives
    (entries[0] / "marker").write_text("x")
    again = materialize(task, 10, seed=5, cache_dir=tmp_path)
    assert (entries[0] / "marker").exists()
    assert torch.equal(again[:]["inputs"], ds[:]["inputs"])
    # a different config or seed is a different cache entry
    other = build_task("graph_nav", {"width": 3, "height": 3, "n_steps": 8, "n_symbols": 5})
    assert cache_key(other, 10, 5) != cache_key(task, 10, 5) != cache_key(task, 10, 6)


def test_materialize_continuous_task(tmp_path):
    task = build_task("path_integration", {"n_steps": 5, "n_place_cells": 8})
    ds = materialize(task, 3, seed=0, cache_dir=tmp_path)
    batch = dataset_batch(ds[:])
    assert batch.inputs.shape == (3, 5, task.d_input) and batch.inputs.dtype == torch.float32
    assert batch.targets.shape == (3, 5, 8) and batch.latents["pos_xy"].shape == (3, 5, 2)
