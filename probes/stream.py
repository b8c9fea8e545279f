"""Probe data as a stream of (acts [n, d], labels [n, ...], groups [n]) batches.

Fitting a probe reads its data several times (a summary pass, then sufficient statistics
or one pass per epoch) and never holds more than one batch, so memory does not grow with
the number of samples. A source is anything that can be iterated more than once: a list of
triples, :func:`store_batches` (an activation store on disk, shard by shard) or
:func:`model_batches` (a model run on task batches on demand, e.g. the untrained network).

``groups`` are the units of cross-validation and of the held-out test split: the
``env_id`` latent when the data has one, else the sequence index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from probes.cache import ActivationStore
from probes.ridge import fold_of
from tasks import Batch
from tasks.targets import ProbeTarget

ProbeBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""acts [n, d], labels [n, ...] (the raw latent), groups [n] (int)."""


def probe_rows(
    acts: torch.Tensor, latents: dict[str, torch.Tensor], target: ProbeTarget, first_sequence: int
) -> ProbeBatch:
    """The probed rows of one batch: ``acts`` [batch, pos, *units] at the tokens where
    ``target.at`` holds, units flattened; ``first_sequence`` numbers the sequences when
    there is no ``env_id``."""
    missing = [name for name in (target.latent, target.at) if name and name not in latents]
    if missing:
        raise KeyError(f"batch has no latent(s) {missing}; it has {sorted(latents)}")
    batch, length = acts.shape[:2]
    keep = latents[target.at].bool() if target.at else torch.ones(batch, length, dtype=torch.bool)
    groups = latents.get("env_id")
    if groups is None:
        groups = (first_sequence + torch.arange(batch))[:, None].expand(batch, length)
    return acts.flatten(2)[keep], latents[target.latent][keep], groups[keep]


@dataclass
class StoreBatches:
    """One hook and one target of an :class:`~probes.cache.ActivationStore`, read shard by
    shard (only the tensors needed)."""

    store: ActivationStore
    hook: str
    target: ProbeTarget

    def __iter__(self) -> Iterator[ProbeBatch]:
        wanted = [self.target.latent, self.target.at, "env_id"]
        wanted = [name for name in wanted if name and name in self.store.latents]
        first = 0
        for i in range(self.store.n_shards):
            with safe_open(self.store.path / f"shard{i:05d}.safetensors", "pt") as shard:
                acts = shard.get_tensor(f"act/{self.hook}")
                latents = {name: shard.get_tensor(f"latent/{name}") for name in wanted}
            yield probe_rows(acts, latents, self.target, first)
            first += acts.shape[0]


def store_batches(
    store: ActivationStore | str | Path, hook: str, target: ProbeTarget
) -> StoreBatches:
    """Probe data of ``hook`` and ``target`` from an activation store (or its directory)."""
    if not isinstance(store, ActivationStore):
        store = ActivationStore.open(Path(store))
    if hook not in store.hooks:
        raise KeyError(f"{store.path}: hook {hook!r} not cached; cached: {store.hooks}")
    missing = [name for name in (target.latent, target.at) if name and name not in store.latents]
    if missing:
        raise KeyError(f"{store.path}: no latent(s) {missing}; it has {store.latents}")
    return StoreBatches(store, hook, target)


@dataclass
class ModelBatches:
    """A model's activations at one hook, computed batch by batch on every pass."""

    model: torch.nn.Module
    batches: Callable[[], Iterable[Batch]]
    hook: str
    target: ProbeTarget

    @torch.no_grad()
    def __iter__(self) -> Iterator[ProbeBatch]:
        first = 0
        for batch in self.batches():
            _, cache = self.model.run_with_cache(
                batch.inputs, names_filter=lambda name: name == self.hook
            )
            latents = {k: v.cpu() for k, v in batch.latents.items()}
            yield probe_rows(cache[self.hook].float().cpu(), latents, self.target, first)
            first += batch.batch_size


def model_batches(
    model, batches: Callable[[], Iterable[Batch]], hook: str, target: ProbeTarget
) -> ModelBatches:
    """Probe data of ``hook`` of ``model`` run on ``batches()`` (called once per pass, so
    it must give the same batches every time: seed them)."""
    if hook not in model.hook_dict:
        raise KeyError(f"model has no hook {hook!r}; valid: {sorted(model.hook_dict)}")
    return ModelBatches(model.eval(), batches, hook, target)


def folded(
    source: Iterable[ProbeBatch], folds: int, test_fraction: float
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(acts [n, d] float32, labels [n, ...], fold [n]) of each batch of ``source``;
    fold -1 is the held-out test set, 0..folds-1 the cross-validation folds."""
    for acts, labels, groups in source:
        n = acts.shape[0]
        if acts.ndim != 2 or labels.shape[:1] != (n,) or groups.shape != (n,):
            raise ValueError(
                "probe batch: expected acts [n, d], labels [n, ...], groups [n]; got "
                f"{tuple(acts.shape)}, {tuple(labels.shape)}, {tuple(groups.shape)}"
            )
        yield acts.float(), labels, fold_of(groups, folds, test_fraction)
