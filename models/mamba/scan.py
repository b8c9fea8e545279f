"""Selective-scan backends of the Mamba-1 SSM, all computing the same state trajectory

    h_t = exp(dt_t A) * h_{t-1} + dt_t B_t x_t          h: [batch, d_inner, d_state]

from decay = exp(dt A) and drive = dt B x, both [batch, pos, d_inner, d_state]. Each
returns the whole trajectory [batch, pos, d_inner, d_state], so ``hook_ssm_state`` can read
or patch it and the readout y_t = C_t . h_t stays in ordinary autograd.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from einops import rearrange


@contextmanager
def _one_thread():
    """Run the per-time-step ops on one thread. Each is small (one [batch, E, N] slice),
    so a second thread gains little, and when other processes share the cores every
    multi-threaded op can stall for a scheduler time slice waiting for its partner thread:
    measured 30 us -> 8 ms per op on this project's 2 shared cores."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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
        with _one_thread():
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
        with _one_thread():
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
    Internally time leads and E is the contiguous axis ([L, batch, N, E]), so every
    contraction over N or E is a fast reduction or a batched mat-vec. Time runs in chunks
    of ``chunk`` steps whose [chunk, batch, N, E] work buffers are allocated once and stay
    in the CPU cache; only the state trajectory is kept for the backward pass (the decays
    are recomputed chunk by chunk), and the state and its gradient are carried across chunk
    boundaries. The per-step recurrences run single-threaded (see :func:`_one_thread`).
    """

    @staticmethod
    def forward(ctx, x, dt, A, B, C, chunk):
        x_l, dt_l = (rearrange(t, "b l e -> l b e").contiguous() for t in (x, dt))
        B_l, C_l = (rearrange(t, "b l n -> l b n").contiguous() for t in (B, C))
        A_t = A.t().contiguous()  # [N, E]
        length, batch, d_inner = x_l.shape
        states = x_l.new_empty(length, batch, A_t.shape[0], d_inner)  # [L, b, N, E]
        y = torch.empty_like(x_l)  # [L, b, E]
        dtx = dt_l * x_l
        decay_buf = x_l.new_empty(min(chunk, length), *states.shape[1:])
        for t0 in range(0, length, chunk):
            t1 = min(t0 + chunk, length)
            decay = decay_buf[: t1 - t0]
            torch.mul(dt_l[t0:t1, :, None, :], A_t, out=decay).exp_()
            h = states[t0:t1]
            torch.mul(dtx[t0:t1, :, None, :], B_l[t0:t1, :, :, None], out=h)  # drive
            with _one_thread():
                if t0 > 0:
                    h[0].addcmul_(decay[0], states[t0 - 1])
                for t in range(1, t1 - t0):
                    h[t].addcmul_(decay[t], h[t - 1])
            torch.matmul(C_l[t0:t1, :, None, :], h, out=y[t0:t1, :, None, :])
        ctx.chunk = chunk
        ctx.save_for_backward(x_l, dt_l, A_t, B_l, C_l, states)
        return rearrange(y, "l b e -> b l e")

    @staticmethod
    def backward(ctx, grad_y):
        x_l, dt_l, A_t, B_l, C_l, states = ctx.saved_tensors
        gy = rearrange(grad_y, "b l e -> l b e").contiguous()
        length, chunk = x_l.shape[0], ctx.chunk
        dtx = dt_l * x_l
        grad_dtx, grad_dt = torch.empty_like(x_l), torch.empty_like(dt_l)
        grad_B, grad_C = torch.empty_like(B_l), torch.empty_like(C_l)
        grad_A_t = torch.zeros_like(A_t)
        buf_shape = (min(chunk, length), *states.shape[1:])
        decay_buf, g_buf, tmp_buf = (states.new_empty(buf_shape) for _ in range(3))
        next_decay, next_g = states.new_empty(buf_shape[1:]), states.new_empty(buf_shape[1:])
        for t0 in reversed(range(0, length, chunk)):
            t1 = min(t0 + chunk, length)
            k = t1 - t0
            decay, g, tmp = decay_buf[:k], g_buf[:k], tmp_buf[:k]
            torch.mul(dt_l[t0:t1, :, None, :], A_t, out=decay).exp_()
            h = states[t0:t1]
            gy_c = gy[t0:t1, :, None, :]
            torch.sum(torch.mul(h, gy_c, out=tmp), dim=-1, out=grad_C[t0:t1])
            torch.mul(C_l[t0:t1, :, :, None], gy_c, out=g)  # dL/dh_t from the readout
            with _one_thread():
                if t1 < length:  # the gradient flowing back from the later chunk
                    g[-1].addcmul_(next_decay, next_g)
                for t in range(k - 2, -1, -1):
                    g[t].addcmul_(decay[t + 1], g[t + 1])  # now g_t = dL/d(drive_t)
            next_decay.copy_(decay[0])
            next_g.copy_(g[0])
            torch.matmul(B_l[t0:t1, :, None, :], g, out=grad_dtx[t0:t1, :, None, :])
            torch.sum(torch.mul(g, dtx[t0:t1, :, None, :], out=tmp), dim=-1, out=grad_B[t0:t1])
            # dL/d(dt A)_t = g_t * h_{t-1} * decay_t  (h_{-1} = 0)
            torch.mul(g[1:], h[:-1], out=tmp[1:])
            if t0 > 0:
                torch.mul(g[0], states[t0 - 1], out=tmp[0])
            else:
                tmp[0].zero_()
            tmp.mul_(decay)
            torch.sum(torch.mul(tmp, A_t, out=g), dim=2, out=grad_dt[t0:t1])
            grad_A_t += tmp.mul_(dt_l[t0:t1, :, None, :]).sum((0, 1))
        grad_dt.addcmul_(grad_dtx, x_l)
        grad_x = grad_dtx.mul_(dt_l)
        return (
            rearrange(grad_x, "l b e -> b l e"),
            rearrange(grad_dt, "l b e -> b l e"),
            grad_A_t.t(),
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
