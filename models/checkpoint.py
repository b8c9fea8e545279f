"""Checkpoints in safetensors (never pickle): weights, AdamW state, the step, the run config
and the training totals, with a checksum.

Tensors are named ``model/<param>`` and ``optim/<index>/<key>``. One string metadata
entry, ``cogmap``, holds canonical JSON: ``step``, ``param_groups``, ``run`` (the resolved
run config), ``fingerprint`` (of ``run``, see :func:`lab.provenance.fingerprint``),
``totals`` (the training loop's running sums) and ``checksum``: sha256 of the rest of that
JSON and of every tensor's name, dtype, shape and bytes. Loading verifies the checksum (a
damaged file is refused by name, never trained over) and, when asked, the fingerprint (a
checkpoint of another config is refused, naming the fields that differ).

There is no RNG state: training draws every batch from its own generator
(:mod:`lab.streams`) and nothing else random, so checkpoints of same-seed runs are
byte-identical (one metadata entry, because safetensors writes several in random order).
Files are written to a temporary path and renamed, so a crash never leaves a half-written
checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from lab.io import write_tensors
from lab.provenance import canonical, differences, fingerprint

META_KEY = "cogmap"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, damaged, or does not match the model or run."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint says besides its tensors."""

    step: int
    run: dict[str, Any]
    """The resolved run config it was trained from."""
    fingerprint: str
    totals: dict[str, Any]
    """The training loop's running sums at ``step`` (see :mod:`models.train`)."""


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    run: dict[str, Any],
    totals: dict[str, Any],
) -> None:
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optim = optimizer.state_dict()
    for index, state in optim["state"].items():
        for key, value in state.items():
            tensors[f"optim/{index}/{key}"] = torch.as_tensor(value).cpu().contiguous()
    meta = {
        "step": step,
        "param_groups": optim["param_groups"],
        "run": run,
        "fingerprint": fingerprint(run),
        "totals": totals,
    }
    meta["checksum"] = checksum(tensors, canonical(meta))
    write_tensors(path, tensors, metadata={META_KEY: canonical(meta)})


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    expect_run: dict[str, Any] | None = None,
) -> CheckpointInfo:
    """Load weights (and the optimizer state) from ``path`` into ``model``.

    Raises CheckpointError naming the file when it is unreadable or damaged (checksum),
    when it was written for another run config than ``expect_run``, or when it does not fit
    the model. The checksum and the run config are checked before anything is loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    retrain = "delete the run directory and train it again"
    try:
        with safe_open(path, framework="pt") as f:
            text = (f.metadata() or {}).get(META_KEY)
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        meta = None if text is None else json.loads(text)
        stored = None if meta is None else meta.pop("checksum")
    except (SafetensorError, OSError, KeyError, ValueError, AttributeError) as error:
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(error).__name__}: {error}); {retrain}"
        ) from error
    if meta is None:
        raise CheckpointError(
            f"{path}: has no checksum or run fingerprint (written by an older lab, or not by "
            f"the lab); {retrain}"
        )
    if checksum(tensors, canonical(meta)) != stored:
        raise CheckpointError(
            f"{path}: damaged (its checksum does not match its contents); restore it from a "
            "copy, or delete the run directory and train it again"
        )
    info = CheckpointInfo(meta["step"], meta["run"], meta["fingerprint"], meta["totals"])
    if expect_run is not None and info.fingerprint != fingerprint(expect_run):
        changed = ", ".join(differences(info.run, expect_run)) or "nothing visible"
        raise CheckpointError(
            f"{path}: written for another run config (fingerprint {info.fingerprint[:12]}) "
            f"than this run's ({fingerprint(expect_run)[:12]}); they differ in {changed}"
        )
    weights = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit the model ({error})") from error
    if optimizer is not None:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim/"):
                _, index, name = key.split("/", 2)
                state.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return info


def checksum(tensors: dict[str, torch.Tensor], text: str) -> str:
    """sha256 of ``text`` and of every tensor's name, dtype, shape and bytes (by name)."""
    digest = hashlib.sha256(text.encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"\n{name} {tensor.dtype} {list(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
