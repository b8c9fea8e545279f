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


class _FusedSelectiveScan(torch.autograd.Function):
    """y_t = C_t . h_t with the recurrence above, from the scan's inputs directly.

    x, dt [batch, L, E], A [E, N], B, C [batch, L, N] -> y [batch, L, E] (no D x term).
    Time runs in chunks of ``chunk`` steps whose [chunk, batch, E, N] buffers stay in the
    CPU cache; only the state trajectory is kept for the backward pass (the decays are
    recomputed chunk by chunk), and the state and its gradient are carried across chunk
    boundaries.
    """

    @staticmethod
    def forward(ctx, x, dt, A, B, C, chunk):
        x_l, dt_l = (rearrange(t, "b l e -> l b e").contiguous() for t in (x, dt))
        B_l, C_l = (rearrange(t, "b l n -> l b n").contiguous() for t in (B, C))
        length = x_l.shape[0]
        states = x_l.new_empty(length, *x_l.shape[1:], A.shape[1])  # [L, b, E, N]
        y = torch.empty_like(x_l)
        for t0 in range(0, length, chunk):
            t1 = min(t0 + chunk, length)
            decay = torch.exp(dt_l[t0:t1, ..., None] * A)
            h = states[t0:t1]
            torch.mul((dt_l[t0:t1] * x_l[t0:t1])[..., None], B_l[t0:t1, :, None, :], out=h)
            if t0 > 0:
                h[0].addcmul_(decay[0], states[t0 - 1])
            for t in range(1, t1 - t0):
                h[t].addcmul_(decay[t], h[t - 1])
            torch.sum(h * C_l[t0:t1, :, None, :], dim=-1, out=y[t0:t1])
        ctx.chunk = chunk
        ctx.save_for_backward(x_l, dt_l, A, B_l, C_l, states)
        return rearrange(y, "l b e -> b l e")

    @staticmethod
    def backward(ctx, grad_y):
        x_l, dt_l, A, B_l, C_l, states = ctx.saved_tensors
        gy = rearrange(grad_y, "b l e -> l b e")
        length, chunk = x_l.shape[0], ctx.chunk
        grad_x, grad_dt = torch.empty_like(x_l), torch.empty_like(dt_l)
        grad_B, grad_C = torch.empty_like(B_l), torch.empty_like(C_l)
        grad_A = torch.zeros_like(A)
        carry = None  # (decay, dL/dh) of the first step of the later chunk
        for t0 in reversed(range(0, length, chunk)):
            t1 = min(t0 + chunk, length)
            decay = torch.exp(dt_l[t0:t1, ..., None] * A)
            h = states[t0:t1]
            g = gy[t0:t1, ..., None] * C_l[t0:t1, :, None, :]  # dL/dh from the readout
            torch.sum(h * gy[t0:t1, ..., None], dim=2, out=grad_C[t0:t1])
            if carry is not None:
                g[-1].addcmul_(*carry)
            for t in range(t1 - t0 - 2, -1, -1):
                g[t].addcmul_(decay[t + 1], g[t + 1])  # now dL/dh_t = dL/d(drive_t)
            carry = (decay[0], g[0])
            dtx = dt_l[t0:t1] * x_l[t0:t1]
            grad_dtx = (g * B_l[t0:t1, :, None, :]).sum(-1)
            torch.sum(g * dtx[..., None], dim=2, out=grad_B[t0:t1])
            # d decay_t = g_t h_{t-1}; through exp(dt A): d(dt A) = d decay * decay
            grad_decay = torch.empty_like(g)
            torch.mul(g[1:], h[:-1], out=grad_decay[1:])
            if t0 > 0:
                torch.mul(g[0], states[t0 - 1], out=grad_decay[0])
            else:
                grad_decay[0] = 0
            grad_decay *= decay
            grad_dt[t0:t1] = (grad_decay * A).sum(-1) + grad_dtx * x_l[t0:t1]
            grad_A += (grad_decay * dt_l[t0:t1, ..., None]).sum((0, 1))
            grad_x[t0:t1] = grad_dtx * dt_l[t0:t1]
        return (
            rearrange(grad_x, "l b e -> b l e"),
            rearrange(grad_dt, "l b e -> b l e"),
            grad_A,
            rearrange(grad_B, "l b n -> b l n"),
            rearrange(grad_C, "l b n -> b l n"),
            None,
        )


def fused_selective_scan(x, dt, A, B, C, chunk: int | None = None) -> torch.Tensor:
    """The CPU training path when nothing reads the state trajectory: y = C . h
    [batch, L, E] (without the D x skip), same values and gradients as the reference.
    ``chunk`` time steps are processed at a time; by default as many as keep one
    [chunk, batch, E, N] buffer near 1 MB."""
    if chunk is None:
        per_step = x.shape[0] * x.shape[2] * A.shape[1] * x.element_size()
        chunk = max(1, (1 << 20) // per_step)
    return _FusedSelectiveScan.apply(x, dt, A, B, C, chunk)
