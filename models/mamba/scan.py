"""Selective-scan backends of the Mamba-1 SSM, all computing the same state trajectory

    h_t = exp(dt_t A) * h_{t-1} + dt_t B_t x_t          h: [batch, d_inner, d_state]

from decay = exp(dt A) and drive = dt B x, both [batch, pos, d_inner, d_state]. Each
returns the whole trajectory [batch, pos, d_inner, d_state], so ``hook_ssm_state`` can read
or patch it and the readout y_t = C_t . h_t stays in ordinary autograd.
"""

from __future__ import annotations

import torch
from einops import rearrange


def reference_scan(decay: torch.Tensor, drive: torch.Tensor) -> torch.Tensor:
    """The recurrence written out step by step; autograd differentiates the loop."""
    state = torch.zeros_like(drive[:, 0])
    states = []
    for t in range(drive.shape[1]):
        state = decay[:, t] * state + drive[:, t]
        states.append(state)
    return torch.stack(states, dim=1)


class _SequentialScan(torch.autograd.Function):
    """The same recurrence with a hand-written reverse-time backward.

    Time is the leading axis of every buffer, so each step is one fused ``addcmul`` on a
    contiguous slice with no per-step allocation, forward and backward:
      forward   h_t = a_t * h_{t-1} + u_t
      backward  g_t = dL/dh_t + a_{t+1} * g_{t+1};  dL/du_t = g_t;  dL/da_t = g_t * h_{t-1}
    """

    @staticmethod
    def forward(ctx, decay: torch.Tensor, drive: torch.Tensor) -> torch.Tensor:
        a = rearrange(decay, "b l d n -> l b d n").contiguous()
        u = rearrange(drive, "b l d n -> l b d n").contiguous()
        h = torch.empty_like(u)
        h[0] = u[0]
        for t in range(1, u.shape[0]):
            torch.addcmul(u[t], a[t], h[t - 1], out=h[t])
        ctx.save_for_backward(a, h)
        return rearrange(h, "l b d n -> b l d n")

    @staticmethod
    def backward(ctx, grad_states: torch.Tensor):
        a, h = ctx.saved_tensors
        grad_h = rearrange(grad_states, "b l d n -> l b d n").contiguous()
        g = torch.empty_like(grad_h)
        g[-1] = grad_h[-1]
        for t in range(g.shape[0] - 2, -1, -1):
            torch.addcmul(grad_h[t], a[t + 1], g[t + 1], out=g[t])
        grad_decay = torch.zeros_like(g)
        grad_decay[1:] = g[1:] * h[:-1]
        return (
            rearrange(grad_decay, "l b d n -> b l d n"),
            rearrange(g, "l b d n -> b l d n"),
        )


def fast_scan(decay: torch.Tensor, drive: torch.Tensor) -> torch.Tensor:
    """The CPU training path: same trajectory as :func:`reference_scan`, several times
    faster forward + backward (see ``make bench``)."""
    return _SequentialScan.apply(decay, drive)
