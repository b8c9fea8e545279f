"""Transformer: TransformerLens 4.x bridge around a TL-native model, built from config.

Hook names are TransformerLens's (``hook_embed``, ``hook_pos_embed``,
``blocks.{i}.hook_resid_pre``, ``blocks.{i}.attn.hook_pattern``, ``blocks.{i}.hook_resid_post``,
...). Continuous inputs ([batch, pos, d_input]) go through the shared
:class:`models.embedding.InputEmbedding` projection and enter the bridge as embeddings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from transformer_lens import TransformerBridge, TransformerBridgeConfig  # noqa: E402

from models.embedding import InputEmbedding  # noqa: E402


@dataclass
class TransformerConfig:
    d_model: int = 64
    """Residual stream width (= n_heads * d_head)."""
    n_layers: int = 2
    n_heads: int = 4
    d_mlp: int | None = None
    """MLP hidden width; None means 4 * d_model."""
    act_fn: str = "gelu"
    n_ctx: int = 256
    """Longest sequence (learned absolute position embeddings)."""
    d_vocab: int | None = None
    """Input token vocabulary (set from the task)."""
    d_input: int | None = None
    """Continuous input features (set from the task instead of d_vocab)."""
    d_vocab_out: int = 2
    """Output logits (set from the task)."""
    seed: int = 0

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not a multiple of n_heads={self.n_heads}")


def build_transformer(config: TransformerConfig) -> TransformerBridge:
    """A TransformerBridge with pre-LayerNorm blocks, seeded initialisation."""
    c = config
    bridge_config = TransformerBridgeConfig(
        d_model=c.d_model,
        d_head=c.d_model // c.n_heads,
        n_heads=c.n_heads,
        n_layers=c.n_layers,
        n_ctx=c.n_ctx,
        d_vocab=c.d_vocab if c.d_vocab is not None else 1,
        d_vocab_out=c.d_vocab_out,
        d_mlp=c.d_mlp or 4 * c.d_model,
        act_fn=c.act_fn,
        normalization_type="LN",
        seed=c.seed,
    )
    bridge = TransformerBridge.boot_native(bridge_config)
    if c.d_input is not None:
        _add_input_projection(bridge, c.d_model, c.d_input, c.seed)
    return bridge


def _add_input_projection(bridge: TransformerBridge, d_model: int, d_input: int, seed: int):
    """Route continuous features [batch, pos, d_input] through a learned projection.

    The bridge takes float [batch, pos, d_model] input as embeddings (position
    embeddings are still added), so the projection is applied in front of its forward.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        projection = InputEmbedding(d_model, d_input=d_input)
    # The bridge delegates parameters() and state_dict() to the wrapped model.
    bridge.original_model.add_module("input_proj", projection)
    forward = bridge.forward

    def forward_features(inputs: torch.Tensor, *args, **kwargs):
        return forward(projection(inputs), *args, **kwargs)

    bridge.forward = forward_features
