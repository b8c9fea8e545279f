"""Checkpoints in safetensors (never pickle): weights, AdamW state, step and RNG state.

One file holds tensors named ``model/<param>``, ``optim/<index>/<key>`` and
``rng/torch``; the step, the optimizer's param groups and the run's identity go in the
file's string metadata. Files are written to a temporary path and renamed, so a crash
never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from lab.io import atomic_write


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, or does not match the model."""


def save_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, meta: dict
) -> None:
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optim = optimizer.state_dict()
    for index, state in optim["state"].items():
        for key, value in state.items():
            tensors[f"optim/{index}/{key}"] = torch.as_tensor(value).cpu().contiguous()
    tensors["rng/torch"] = torch.get_rng_state()
    metadata = {
        "step": str(step),
        "param_groups": json.dumps(optim["param_groups"]),
        "meta": json.dumps(meta),
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    expect_meta: dict | None = None,
) -> int:
    """Load weights (and optimizer + RNG state) from ``path`` into ``model``; return the step.

    Raises CheckpointError naming the file when it is unreadable or does not fit the
    model, or when its metadata differs from ``expect_meta`` on any key given there.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        tensors = load_file(path)
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
        step = int(metadata["step"])
        meta = json.loads(metadata["meta"])
        param_groups = json.loads(metadata["param_groups"])
    except (SafetensorError, OSError, KeyError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable cogmap checkpoint ({error})") from error
    for key, expected in (expect_meta or {}).items():
        if meta.get(key) != expected:
            raise CheckpointError(
                f"{path}: checkpoint was written for {key}={meta.get(key)!r}, expected {expected!r}"
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
        optimizer.load_state_dict({"state": state, "param_groups": param_groups})
        torch.set_rng_state(tensors["rng/torch"])
    return step
