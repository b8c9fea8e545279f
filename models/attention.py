"""Causal self-attention with a positional scheme, fused unless a hook needs the pattern.

:class:`PositionalAttention` is TransformerLens's ``NativeAttention`` (same ``q/k/v/o``
projections, initialisation, scale and rotary tables) with two changes:

* **Positional schemes** (:data:`POSITIONAL`). ``learned`` (a position table added to the
  embeddings; nothing here), ``nope`` (causal mask only), ``rope`` (TransformerLens's
  ``NativeRotary`` on queries and keys), ``alibi`` and ``hard_alibi`` (an additive bias on
  the scores, :meth:`PositionalAttention.positional_bias`).
* **Two paths to the same numbers.** When nothing hooks ``attn.hook_attn_scores`` or
  ``attn.hook_pattern`` (TransformerLens hooks from ``run_with_cache`` / ``run_with_hooks`` /
  ``add_hook``, or plain PyTorch hooks on those HookPoints), attention runs as one fused
  ``scaled_dot_product_attention`` call (``is_causal`` or the bias as a float mask).
  Otherwise the scores and pattern are materialised, fired through the hooks (so a hook
  can read or patch them) and multiplied out explicitly.

Scores as hooked: ``q.k / sqrt(d_head) + bias`` with ``-inf`` where a key is not visible
(the future, or outside a Hard-ALiBi window), as HookedTransformer had them. The bridge
would otherwise fire ``hook_attn_scores`` with the post-softmax pattern; this module fires
it itself with the real scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from transformer_lens import TransformerBridgeConfig
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge.generalized_components.alibi_utils import build_alibi_slopes
from transformer_lens.model_bridge.sources.native import NativeAttention
from transformer_lens.model_bridge.sources.native.model import NativeRotary

from models.vmap import folded

POSITIONAL = ("learned", "nope", "rope", "alibi", "hard_alibi")
"""Positional schemes; only ``learned`` has a position table."""

_BIASED = ("alibi", "hard_alibi")


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi's per-head slopes m_h [head] (Press et al. 2022): 2^(-8h/n) for h = 1..n when
    n is a power of two, else those of the power of two below interleaved with the odd
    ones of the next (TransformerLens's ``build_alibi_slopes``)."""
    return build_alibi_slopes(n_heads, torch.device("cpu"))


def hard_alibi_windows(n_heads: int) -> torch.Tensor:
    """Hard-ALiBi windows [head]: head h < n_heads // 2 sees the last h + 1 tokens (itself
    and the h before it); the other heads see everything (NoPE, window inf).

    Jelassi et al. 2024 mask some heads to the last m_h tokens and leave the rest NoPE; their
    code masks half of the heads (``num_masked_heads`` = 8 of 16) with windows 1, 2, ...: the
    short windows hash the last few tokens (an n-gram) and the NoPE heads look that n-gram
    up earlier in the string, which is how a 2-layer model copies without positions.
    """
    if n_heads < 2:
        raise ValueError(f"hard_alibi needs n_heads >= 2 (windowed + NoPE heads), got {n_heads}")
    windows = torch.full((n_heads,), math.inf)
    n_windowed = n_heads // 2
    windows[:n_windowed] = torch.arange(1, n_windowed + 1, dtype=windows.dtype)
    return windows


@dataclass(frozen=True)
class BridgeHooks:
    """The owning AttentionBridge's HookPoints that this module fires itself."""

    attn_scores: HookPoint
    rot_q: HookPoint | None
    rot_k: HookPoint | None


def is_hooked(hook_point: nn.Module | None) -> bool:
    """Whether anything (TransformerLens or plain PyTorch hooks) reads or patches the value
    passing through ``hook_point``."""
    if hook_point is None:
        return False
    return bool(
        hook_point._forward_hooks
        or hook_point._forward_pre_hooks
        or hook_point._backward_hooks
        or hook_point._backward_pre_hooks
    )


class PositionalAttention(NativeAttention):
    """NativeAttention with a positional scheme and a fused path when unhooked.

    Input hidden_states [batch, pos, d_model]; returns (output [batch, pos, d_model], None).
    The bridge's ``hook_pattern`` arrives as ``pattern_fn``; :meth:`bind_hooks` hands over
    ``hook_attn_scores`` (and ``hook_rot_q/k`` for RoPE) once the bridge is built.
    """

    slopes: torch.Tensor
    windows: torch.Tensor

    def __init__(
        self,
        cfg: TransformerBridgeConfig,
        positional: str,
        rotary: NativeRotary | None = None,
    ):
        if positional not in POSITIONAL:
            raise ValueError(f"unknown positional {positional!r}; valid: {list(POSITIONAL)}")
        if (rotary is not None) != (positional == "rope"):
            raise ValueError(f"positional={positional!r} needs rotary tables iff it is 'rope'")
        super().__init__(cfg, rotary=rotary)
        if self.kv_repeats != 1 or self.attn_scores_soft_cap > 0 or not self.causal:
            raise ValueError("PositionalAttention is causal, with no GQA and no soft cap")
        self.positional = positional
        slopes = alibi_slopes(self.n_heads) if positional == "alibi" else torch.zeros(self.n_heads)
        windows = (
            hard_alibi_windows(self.n_heads)
            if positional == "hard_alibi"
            else torch.full((self.n_heads,), math.inf)
        )
        self.register_buffer("slopes", slopes, persistent=False)
        self.register_buffer("windows", windows, persistent=False)
        self.bridge_hooks: BridgeHooks | None = None

    def bind_hooks(self, bridge_attention: nn.Module) -> None:
        """Fire ``bridge_attention``'s score (and rotary) HookPoints from this module."""
        self.bridge_hooks = BridgeHooks(
            attn_scores=bridge_attention.hook_attn_scores,
            rot_q=getattr(bridge_attention, "hook_rot_q", None),
            rot_k=getattr(bridge_attention, "hook_rot_k", None),
        )

    def positional_bias(self, n_pos: int) -> torch.Tensor:
        """Additive score bias [head, query, key]: -m_h (i - j) for ALiBi (0 otherwise) where
        key j is visible from query i (j <= i, and i - j < window_h), -inf elsewhere."""
        positions = torch.arange(n_pos, device=self.slopes.device)
        distance = (positions[:, None] - positions[None, :]).to(self.slopes.dtype)
        bias = -self.slopes[:, None, None] * distance
        visible = (distance >= 0) & (distance < self.windows[:, None, None])
        return bias.masked_fill(~visible, -math.inf)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        pattern_fn: HookPoint | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        if attention_mask is not None:
            raise ValueError("attention_mask (padding) is not supported: inputs are causal")
        hooks = self.bridge_hooks
        if hooks is None:
            raise RuntimeError("PositionalAttention used before bind_hooks(bridge_attention)")
        q, k, v = (
            rearrange(projection(hidden_states), "b p (h d) -> b h p d", h=self.n_heads)
            for projection in (self.q, self.k, self.v)
        )
        if self.rotary is not None:
            q, k = self.rotary.apply_rope(q, k, position_ids=position_ids)
            q, k = hooks.rot_q(q), hooks.rot_k(k)
        if is_hooked(pattern_fn) or is_hooked(hooks.attn_scores):
            z = self._explicit(q, k, v, hooks.attn_scores, pattern_fn)
        else:
            z = self._fused(q, k, v)
        return self.o(rearrange(z, "b h p d -> b p (h d)")), None

    def _fused(self, q, k, v) -> torch.Tensor:
        """z [batch, head, pos, d_head] from one fused kernel."""
        if self.positional in _BIASED:
            # 4-D [1, head, query, key]: CPU's flash kernel takes no 3-D float mask
            bias = self.positional_bias(q.shape[-2]).to(q.dtype)[None]
            return fused_attention(q, k, v, bias, False, 1 / self.scale)
        return fused_attention(q, k, v, None, True, 1 / self.scale)

    def _explicit(self, q, k, v, scores_hook: HookPoint, pattern_fn) -> torch.Tensor:
        """z [batch, head, pos, d_head] through hooked scores and pattern [batch, head, q, k]."""
        bias = self.positional_bias(q.shape[-2]).to(q.dtype)
        scores = scores_hook(torch.einsum("bhqd,bhkd->bhqk", q, k) / self.scale + bias)
        pattern = F.softmax(scores, dim=-1)
        if pattern_fn is not None:
            pattern = pattern_fn(pattern)
        return pattern @ v


@folded
def fused_attention(q, k, v, bias, is_causal: bool, scale: float) -> torch.Tensor:
    """``scaled_dot_product_attention`` of q, k, v [batch, head, pos, d_head] with an additive
    ``bias`` (or None) broadcast over the batch. Under vmap (an ensemble of models) the
    members are folded into the batch: one kernel call, where PyTorch has no batching rule
    for CPU's flash kernel and would loop over the members."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=is_causal, scale=scale)
