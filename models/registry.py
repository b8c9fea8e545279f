"""Model registry: every architecture behind one constructor and one hook interface.

All models map inputs [batch, pos] (token ids) or [batch, pos, d_input] (features) to
logits [batch, pos, d_vocab_out], support ``run_with_cache`` / ``run_with_hooks``, and name
their layer outputs ``blocks.{i}.hook_resid_post`` (inputs ``blocks.{i}.hook_resid_pre``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from models.lstm import HookedLSTM, LSTMConfig
from models.mamba import MambaConfig, MambaLM
from models.stepping import LSTMStepper, MambaStepper, Stepper, TransformerStepper
from models.transformer import TransformerConfig, build_transformer

MODELS: dict[str, tuple[type, Callable[[Any], nn.Module]]] = {
    "transformer": (TransformerConfig, build_transformer),
    "lstm": (LSTMConfig, HookedLSTM),
    "mamba": (MambaConfig, MambaLM),
}
STEPPERS: dict[str, type[Stepper]] = {
    "transformer": TransformerStepper,
    "lstm": LSTMStepper,
    "mamba": MambaStepper,
}
"""Each architecture's stepper (:mod:`models.stepping`): the model one time step at a time
from an explicit state, for state patching through time (``probes.causal.patching``)."""


def model_config(name: str, fields: dict[str, Any] | None = None):
    """The config dataclass of model ``name`` from ``fields``; unknown fields are errors."""
    config_cls = _lookup(name)[0]
    fields = dict(fields or {})
    valid = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(fields) - valid)
    if unknown:
        raise ValueError(
            f"unknown model {name!r} config field(s) {unknown}; valid: {sorted(valid)}"
        )
    return config_cls(**fields)


def build_model(name: str, config: Any = None) -> nn.Module:
    """Build model ``name`` from its config dataclass or a dict of its fields."""
    config_cls, build = _lookup(name)
    if not isinstance(config, config_cls):
        config = model_config(name, config)
    return build(config)


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device`` (moved only if it is not there: the TransformerLens bridge
    prints a line on every ``.to``)."""
    if all(p.device == torch.device(device) for p in model.parameters()):
        return model
    return model.to(device)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _lookup(name: str):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {sorted(MODELS)}")
    return MODELS[name]
