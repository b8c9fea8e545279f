"""Transformer: TransformerLens 4.x bridge around a TL-native model, built from config.

Hook names are TransformerLens's (``hook_embed``, ``blocks.{i}.hook_resid_pre``,
``blocks.{i}.attn.hook_q/k/v/z``, ``attn.hook_attn_scores``, ``attn.hook_pattern``,
``blocks.{i}.hook_resid_post``, ...; ``hook_pos_embed`` only with learned positions,
``attn.hook_rot_q/k`` only with RoPE). Continuous inputs ([batch, pos, d_input]) go through
the shared :class:`models.embedding.InputEmbedding` projection and enter the bridge as
embeddings.

The model is what ``TransformerBridge.boot_native`` builds (``NativeModel``, initialised by
``initialize_native_model``, wrapped by ``build_bridge_from_module``), done here in those
same steps so that each block's ``NativeAttention`` can be swapped for
:class:`models.attention.PositionalAttention` (a positional scheme, and fused attention when
nothing hooks the pattern) and the position table dropped for schemes that have none.
Nothing else of the bridge changes.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from transformer_lens import TransformerBridge, TransformerBridgeConfig  # noqa: E402
from transformer_lens.model_bridge.sources import build_bridge_from_module  # noqa: E402
from transformer_lens.model_bridge.sources.native import (  # noqa: E402
    NativeModel,
    initialize_native_model,
)

from models.attention import POSITIONAL, PositionalAttention  # noqa: E402
from models.embedding import InputEmbedding  # noqa: E402

TL_POSITIONAL_TYPE = {
    "learned": "standard",
    "nope": "none",
    "rope": "rotary",
    "alibi": "alibi",
    "hard_alibi": "alibi",
}
"""TransformerLens's ``positional_embedding_type`` for each scheme (TL reads it only to
know whether there is a position table, and rotary hooks)."""


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
    """Longest sequence (the size of the position table for "learned")."""
    positional: str = "learned"
    """How attention knows positions: "learned" (absolute position embeddings), "nope"
    (causal mask only), "rope" (rotary queries and keys), "alibi" (linear distance bias),
    "hard_alibi" (half the heads see only the last few tokens, the rest NoPE); see
    models/attention.py."""
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
        if self.positional not in POSITIONAL:
            raise ValueError(f"unknown positional {self.positional!r}; valid: {list(POSITIONAL)}")
        if self.positional == "hard_alibi" and self.n_heads < 2:
            raise ValueError("positional='hard_alibi' needs n_heads >= 2 (windowed + NoPE heads)")
        if self.d_model % self.d_model_multiple:
            raise ValueError(
                f"positional='rope' rotates pairs of dimensions: d_head = d_model / n_heads must "
                f"be even, got d_model={self.d_model}, n_heads={self.n_heads}"
            )

    @property
    def d_model_multiple(self) -> int:
        """d_model is a multiple of this (n_heads; 2 * n_heads for RoPE's pairs)."""
        return self.n_heads * (2 if self.positional == "rope" else 1)


def build_transformer(config: TransformerConfig) -> TransformerBridge:
    """A TransformerBridge with pre-LayerNorm blocks, seeded initialisation."""
    c = config
    native_config = TransformerBridgeConfig(
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
        positional_embedding_type="rotary" if c.positional == "rope" else "standard",
        seed=c.seed,
    )
    with torch.random.fork_rng(devices=[]):  # as boot_native: the caller's RNG is untouched
        model = NativeModel(native_config)
        for block in model.layers:
            block.attn = PositionalAttention(native_config, c.positional, rotary=model.rotary)
        if c.positional != "learned":
            model.pos = None
        initialize_native_model(model, native_config)

    bridge_config = copy.deepcopy(native_config)
    bridge_config.positional_embedding_type = TL_POSITIONAL_TYPE[c.positional]

    def drop_position_table(adapter):
        if model.pos is None:
            adapter.component_mapping.pop("pos_embed", None)

    bridge = build_bridge_from_module(
        model,
        architecture="TransformerLensNative",
        tl_config=bridge_config,
        model_name="native",
        post_adapter_hook=drop_position_table,
    )
    for block in bridge.blocks:
        block.attn.original_component.bind_hooks(block.attn)
    if c.d_input is not None:
        _add_input_projection(bridge, c.d_model, c.d_input, c.seed)
    return bridge


def _add_input_projection(bridge: TransformerBridge, d_model: int, d_input: int, seed: int):
    """Route continuous features [batch, pos, d_input] through a learned projection.

    The bridge takes float [batch, pos, d_model] input as embeddings (position
    embeddings, if any, are still added), so the projection is applied in front of its
    forward.
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
