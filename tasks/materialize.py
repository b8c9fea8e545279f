"""Materialise a task into a HuggingFace ``datasets.Dataset``, cached on disk.

Columns: ``inputs``, ``targets`` and one per latent, each row one sequence
(``set_format("torch")``). The cache key is a hash of the task name, its config, the number
of sequences and the seed, so a changed config never reads a stale dataset. The dataset is
written to a temporary directory next to its final place and renamed, so an interrupted
run leaves nothing half-written. Nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from tasks.base import Batch, Task

CACHE_VERSION = 1
"""Bump when the generation of any task changes, to invalidate old caches."""


def cache_key(task: Task, n_sequences: int, seed: int) -> str:
    """Hex digest identifying (task name, config, n_sequences, seed, CACHE_VERSION)."""
    blob = json.dumps(
        {
            "task": task.name,
            "config": dataclasses.asdict(task.config),
            "n": n_sequences,
            "seed": seed,
            "version": CACHE_VERSION,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def materialize(
    task: Task,
    n_sequences: int,
    seed: int,
    cache_dir: str | os.PathLike = "runs/cache/datasets",
    batch_size: int = 512,
):
    """``n_sequences`` sequences of ``task`` (one generator seeded by ``seed``, drawn in
    batches of ``batch_size``) as a ``datasets.Dataset`` in torch format, cached under
    ``cache_dir/<task name>-<hash>``; the second call loads the cache."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets

    if n_sequences < 1:
        raise ValueError(f"n_sequences must be at least 1, got {n_sequences}")
    path = Path(cache_dir) / f"{task.name}-{cache_key(task, n_sequences, seed)}"
    if path.exists():
        ds = datasets.load_from_disk(str(path))
        ds.set_format("torch")
        return ds

    generator = torch.Generator().manual_seed(seed)
    chunks: list[Batch] = []
    left = n_sequences
    while left > 0:
        chunks.append(task.sample(min(batch_size, left), generator))
        left -= chunks[-1].batch_size
    columns = {
        "inputs": _cat([b.inputs for b in chunks]),
        "targets": _cat([b.targets for b in chunks]),
    }
    for name in chunks[0].latents:
        if name in columns:
            raise ValueError(f"latent {name!r} clashes with a dataset column name")
        columns[name] = _cat([b.latents[name] for b in chunks])
    features = datasets.Features({k: _feature(v) for k, v in columns.items()})
    ds = datasets.Dataset.from_dict({k: list(v) for k, v in columns.items()}, features=features)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        ds.save_to_disk(str(tmp / "data"))
        try:
            os.rename(tmp / "data", path)
        except OSError:
            if not path.exists():  # lost a race to another writer: theirs is identical
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ds = datasets.load_from_disk(str(path))
    ds.set_format("torch")
    return ds


def dataset_batch(rows: dict[str, torch.Tensor]) -> Batch:
    """A :class:`Batch` from a slice of a materialised dataset, e.g. ``ds[0:64]``."""
    rows = dict(rows)
    return Batch(rows.pop("inputs"), rows.pop("targets"), rows)


def _cat(tensors: list[torch.Tensor]) -> np.ndarray:
    width = max(t.shape[1] for t in tensors)
    if any(t.shape[1] != width for t in tensors):
        raise ValueError("batches of different lengths cannot be stacked into one dataset")
    return torch.cat(tensors).numpy()


def _feature(array: np.ndarray):
    import datasets

    dtype = {np.bool_: "bool"}.get(array.dtype.type, str(array.dtype))
    shape = array.shape[1:]
    if len(shape) == 1:
        return datasets.Sequence(datasets.Value(dtype), length=shape[0])
    cls = {2: datasets.Array2D, 3: datasets.Array3D, 4: datasets.Array4D}[len(shape)]
    return cls(shape=shape, dtype=dtype)
