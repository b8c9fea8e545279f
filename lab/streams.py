"""Random streams and devices: every batch a stage draws is a pure function of
(seed, stream, index), so runs are reproducible and resumable, and no two stages ever
share data by accident."""

from __future__ import annotations

import torch

TRAIN, EVAL, PROBE, CENSUS, CAUSAL, REFERENCE = range(6)
"""Stream ids: training batches, evaluation batches, held-out probe/census environments
(activations are cached from these), shuffle nulls, causal interventions, the sample the
reference predictors are fit on (:mod:`tasks.reference`)."""


def generator(seed: int, stream: int, index: int) -> torch.Generator:
    """The CPU generator of batch ``index`` of ``stream`` for run seed ``seed``."""
    return torch.Generator().manual_seed((seed * 1_000_003 + stream) * 1_000_033 + index)


def resolve_device(name: str) -> torch.device:
    """ "auto" (CUDA when available, else CPU), "cpu" or "cuda"."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r}; valid: 'auto', 'cpu', 'cuda', 'cuda:N'")
    return torch.device(name)
