"""The "native" scan: the selective scan as a C++ loop (``native.cpp``), built for this
machine on first use by :mod:`lab.native`, with autograd Functions around
its forward and backward kernels; also the mixer's causal depthwise conv + SiLU.

Work is split into tasks of one batch element and 16 channels, the channels being the
vector lanes, so every step of the recurrence is elementwise across lanes and a task's
state [N, 16] stays in the L1 cache; the backward pass recomputes the states segment by
segment from checkpoints saved every 16 steps, so nothing of the size of the trajectory is
stored unless ``with_states`` asks for it. Float32 on CPU only; ``native_error()`` says why
it cannot be built on a machine (the model then uses the "fast" scan).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from lab.native import build, build_error
from models.vmap import per_member

SOURCE = Path(__file__).with_name("native.cpp")


def _extension():
    return build("cogmap_mamba_scan", SOURCE)


def native_error() -> str | None:
    """Why the native scan cannot be built here (None: it can)."""
    return build_error("cogmap_mamba_scan", SOURCE)


class _NativeScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, signed, with_states):
        width = x.shape[-1]
        pad = -width % _extension().lanes  # channels come in blocks of `lanes`
        x, dt, A_t, D = (_pad_channels(t, pad) for t in (x, dt, A.t(), D))  # A_t [N, E]
        B, C = B.contiguous(), C.contiguous()
        y, checkpoints, states = _extension().scan_forward(x, dt, A_t, B, C, D, signed, with_states)
        ctx.save_for_backward(x, dt, A_t, B, C, D, checkpoints)
        ctx.signed, ctx.width = signed, width
        ctx.set_materialize_grads(False)
        if pad:  # copies, not views: a hook may modify the trajectory in place
            y, states = y[..., :width].contiguous(), states[:, :, :width].contiguous()
        return (y, states) if with_states else y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_states=None):
        x, dt, A_t, B, C, D, checkpoints = ctx.saved_tensors
        width, pad = ctx.width, x.shape[-1] - ctx.width
        empty = x.new_empty(0)
        grad_y = empty if grad_y is None else _pad_channels(grad_y, pad)
        if grad_states is None:
            grad_states = empty
        else:  # [b, L, E, N]: channels are the second to last axis
            grad_states = _pad_channels(grad_states.transpose(-1, -2), pad).transpose(-1, -2)
            grad_states = grad_states.contiguous()
        grad_x, grad_dt, grad_A_t, grad_B, grad_C, grad_D = _extension().scan_backward(
            x, dt, A_t, B, C, D, checkpoints, grad_y, grad_states, ctx.signed
        )
        return (
            grad_x[..., :width], grad_dt[..., :width], grad_A_t[:, :width].t(), grad_B, grad_C,
            grad_D[:width], None, None,
        )  # fmt: skip


def _pad_channels(tensor: torch.Tensor, pad: int) -> torch.Tensor:
    """``tensor`` [..., E] contiguous, with ``pad`` zero channels appended (no copy when it
    is contiguous and needs none)."""
    return F.pad(tensor, (0, pad)).contiguous() if pad else tensor.contiguous()


class _NativeConvSilu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        if x.stride(-1) != 1:
            x = x.contiguous()
        w_t = weight.t().contiguous()  # [K, E]
        bias = x.new_empty(0) if bias is None else bias.contiguous()
        ctx.save_for_backward(x, w_t, bias)
        ctx.has_bias = bias.numel() > 0
        return _extension().conv_forward(x, w_t, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, w_t, bias = ctx.saved_tensors
        grad_x, grad_w_t, grad_bias = _extension().conv_backward(
            x, w_t, bias, grad_out.contiguous()
        )
        return grad_x, grad_w_t.t(), grad_bias if ctx.has_bias else None


@per_member
def native_conv_silu(x, weight, bias):
    """silu(causal depthwise conv of x) [batch, L, E] from x [batch, L, E] (channels
    contiguous; rows may be strided), weight [E, K] and bias [E] or None (float32, CPU):
    ``silu(conv1d(x.transpose(1, 2))[..., :L].transpose(1, 2))`` of a depthwise Conv1d."""
    return _NativeConvSilu.apply(x, weight, bias)


@per_member
def native_scan(x, dt, A, B, C, D=None, signed: bool = False, with_states: bool = False):
    """y_t = C_t . h_t + D x_t [batch, L, E] from x, dt [batch, L, E], A [E, N],
    B, C [batch, L, N] and D [E] (None: no skip term), float32 on CPU; with
    ``with_states`` also the trajectory h [batch, L, E, N]. Same values and gradients as
    the reference scan."""
    D = x.new_zeros(x.shape[-1]) if D is None else D
    return _NativeScan.apply(x, dt, A, B, C, D, signed, with_states)
