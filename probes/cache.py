"""Cache chosen hooks' activations to disk, shard by shard, with the latents beside them.

A store is a directory of ``shard00000.safetensors`` files (tensors ``act/<hook>``
[batch, pos, d] and ``latent/<name>`` [batch, pos, ...]) and an ``index.json`` written
last: a store without an index is incomplete and is never read.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from lab.io import replace_dir
from tasks import Batch, Task


def layer_hooks(n_layers: int) -> list[str]:
    """The residual stream at every depth: the input of block 0, then each block's output."""
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(n_layers)]


@torch.no_grad()
def model_activations(model, batch: Batch, hooks: list[str]) -> dict[str, torch.Tensor]:
    """Activations of ``hooks`` for one batch: name -> [batch, pos, d] (float32, on CPU)."""
    missing = [h for h in hooks if h not in model.hook_dict]
    if missing:
        raise KeyError(f"model has no hook(s) {missing}; valid hooks: {sorted(model.hook_dict)}")
    _, cache = model.run_with_cache(batch.inputs, names_filter=lambda name: name in hooks)
    return {h: cache[h].float().cpu() for h in hooks}


def iterate_batches(
    task: Task, n_sequences: int, batch_size: int, generator_for
) -> Iterator[Batch]:
    """``n_sequences`` sequences in batches; ``generator_for(index)`` seeds batch ``index``."""
    for index, start in enumerate(range(0, n_sequences, batch_size)):
        yield task.sample(min(batch_size, n_sequences - start), generator_for(index))


@dataclass
class ActivationStore:
    path: Path
    hooks: list[str]
    latents: list[str]
    n_shards: int
    n_sequences: int

    @classmethod
    def open(cls, path: Path) -> ActivationStore:
        index = Path(path) / "index.json"
        if not index.is_file():
            raise FileNotFoundError(f"{index}: no complete activation store (run `make probe`)")
        return cls(Path(path), **json.loads(index.read_text()))

    def shards(self) -> Iterator[dict[str, torch.Tensor]]:
        for i in range(self.n_shards):
            yield load_file(self.path / f"shard{i:05d}.safetensors")

    @staticmethod
    def shard_acts(shard: dict[str, torch.Tensor], hooks: list[str]) -> dict[str, torch.Tensor]:
        """hook -> [batch, pos, d] of one shard."""
        return {h: shard[f"act/{h}"] for h in hooks}

    @staticmethod
    def shard_latents(shard: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """latent name -> [batch, pos, ...] of one shard."""
        return {k[len("latent/") :]: v for k, v in shard.items() if k.startswith("latent/")}

    def load(self, hook: str, latents: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """All of one hook ([sequences, pos, d]) and the named latents, concatenated."""
        if hook not in self.hooks:
            raise KeyError(f"{self.path}: hook {hook!r} not cached; cached: {self.hooks}")
        acts, lats = [], {name: [] for name in latents}
        for shard in self.shards():
            acts.append(shard[f"act/{hook}"])
            for name in latents:
                lats[name].append(shard[f"latent/{name}"])
        return torch.cat(acts), {k: torch.cat(v) for k, v in lats.items()}


def cache_activations(
    model,
    batches: Iterator[Batch],
    hooks: list[str],
    out_dir: Path,
    device: torch.device,
    progress: bool = True,
) -> ActivationStore:
    """Run ``model`` over ``batches`` and write the store to ``out_dir`` (replacing it)."""
    model.eval()
    shards = (
        (model_activations(model, batch.to(device), hooks), batch.latents)
        for batch in tqdm(batches, desc=f"cache {Path(out_dir).parent.name}", disable=not progress)
    )
    return write_store(shards, hooks, out_dir)


def write_store(
    shards: Iterable[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]],
    hooks: list[str],
    out_dir: Path,
) -> ActivationStore:
    """Write (acts: hook -> [batch, pos, d], latents: name -> [batch, pos, ...]) shards as a
    store at ``out_dir``: into a temporary directory, the index last, then renamed over
    whatever was there."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n_shards = n_sequences = 0
    latent_names: list[str] = []
    for acts, latents in shards:
        tensors = {f"act/{h}": acts[h].contiguous() for h in hooks}
        tensors.update({f"latent/{k}": v.contiguous() for k, v in latents.items()})
        save_file(tensors, tmp / f"shard{n_shards:05d}.safetensors")
        latent_names = sorted(latents)
        n_shards += 1
        n_sequences += next(iter(latents.values())).shape[0]
    index = {
        "hooks": hooks,
        "latents": latent_names,
        "n_shards": n_shards,
        "n_sequences": n_sequences,
    }
    (tmp / "index.json").write_text(json.dumps(index, indent=2))
    replace_dir(tmp, out_dir)
    return ActivationStore(out_dir, **index)
