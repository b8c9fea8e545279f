"""The eager CPU training path of the SSM when nothing reads the state trajectory: a fused
selective scan that computes y_t = C_t . h_t from the scan's inputs, with the recurrence of
:mod:`models.mamba.scan` (positive or signed transitions).

x, dt [batch, L, E], A [E, N], B, C [batch, L, N] -> y [batch, L, E] (no D x term).
Internally time leads and E is the contiguous axis ([L, batch, N, E]), so every contraction
over N or E is a fast reduction or a batched mat-vec, and each time step of the recurrence
is one fused ``addcmul_`` on a contiguous slice. Time runs in chunks whose
[chunk, batch, N, E] work buffers are allocated once and stay in the CPU cache; only the
state trajectory is kept for the backward pass (transitions are recomputed chunk by chunk),
and the state and its gradient are carried across chunk boundaries. At the sizes the lab
trains (batch 16-64, L 48-128, E 64-128) this is faster than the per-step chunk kernels of
:func:`models.mamba.scan.selective_scan` run eagerly (``benchmarks/bench_mamba.py``).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from einops import rearrange

from models.vmap import per_member


@contextmanager
def _one_thread():
    """Run the per-time-step ops on one thread: each is one small [batch, N, E] slice, and
    on shared cores a multi-threaded small op can stall a whole scheduler slice waiting for
    its partner thread."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _transition(dt_chunk, A_t, signed: bool, out, slope=None):
    """a = exp(dt A) (or 2 exp(dt A) - 1) of dt_chunk [k, b, E] and A_t [N, E] into ``out``
    [k, b, N, E]; returns (a, da/d(dt A)): the slope exp(dt A) is ``a`` itself when
    positive, 2 exp(dt A) written into ``slope`` when signed (None: not needed)."""
    torch.mul(dt_chunk[:, :, None, :], A_t, out=out).exp_()
    if not signed:
        return out, out
    if slope is not None:
        torch.mul(out, 2.0, out=slope)
    return out.mul_(2.0).sub_(1.0), slope


class _FusedSelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, signed, chunk):
        x_l, dt_l = (rearrange(t, "b l e -> l b e").contiguous() for t in (x, dt))
        B_l, C_l = (rearrange(t, "b l n -> l b n").contiguous() for t in (B, C))
        A_t = A.t().contiguous()  # [N, E]
        length = x_l.shape[0]
        states = x_l.new_empty(length, x_l.shape[1], A_t.shape[0], x_l.shape[2])  # [L, b, N, E]
        y = torch.empty_like(x_l)  # [L, b, E]
        dtx = dt_l * x_l
        decay_buf = x_l.new_empty(min(chunk, length), *states.shape[1:])
        for t0 in range(0, length, chunk):
            t1 = min(t0 + chunk, length)
            decay, _ = _transition(dt_l[t0:t1], A_t, signed, decay_buf[: t1 - t0])
            h = states[t0:t1]
            torch.mul(dtx[t0:t1, :, None, :], B_l[t0:t1, :, :, None], out=h)  # the drive
            with _one_thread():
                if t0 > 0:
                    h[0].addcmul_(decay[0], states[t0 - 1])
                for t in range(1, t1 - t0):
                    h[t].addcmul_(decay[t], h[t - 1])
            torch.matmul(C_l[t0:t1, :, None, :], h, out=y[t0:t1, :, None, :])
        ctx.signed, ctx.chunk = signed, chunk
        ctx.save_for_backward(x_l, dt_l, A_t, B_l, C_l, states)
        return rearrange(y, "l b e -> b l e")

    @staticmethod
    def backward(ctx, grad_y):
        x_l, dt_l, A_t, B_l, C_l, states = ctx.saved_tensors
        gy = rearrange(grad_y, "b l e -> l b e").contiguous()
        length, chunk, signed = x_l.shape[0], ctx.chunk, ctx.signed
        dtx = dt_l * x_l
        grad_dtx, grad_dt = torch.empty_like(x_l), torch.empty_like(dt_l)
        grad_B, grad_C = torch.empty_like(B_l), torch.empty_like(C_l)
        grad_A_t = torch.zeros_like(A_t)
        buf_shape = (min(chunk, length), *states.shape[1:])
        decay_buf, g_buf, tmp_buf = (states.new_empty(buf_shape) for _ in range(3))
        slope_buf = states.new_empty(buf_shape) if signed else None  # positive: slope = decay
        next_decay, next_g = states.new_empty(buf_shape[1:]), states.new_empty(buf_shape[1:])
        for t0 in reversed(range(0, length, chunk)):
            t1 = min(t0 + chunk, length)
            k = t1 - t0
            g, tmp = g_buf[:k], tmp_buf[:k]
            slope_out = slope_buf[:k] if signed else None
            decay, slope = _transition(dt_l[t0:t1], A_t, signed, decay_buf[:k], slope_out)
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
            # dL/d(dt A)_t = g_t * h_{t-1} * da/d(dt A)_t  (h_{-1} = 0)
            torch.mul(g[1:], h[:-1], out=tmp[1:])
            if t0 > 0:
                torch.mul(g[0], states[t0 - 1], out=tmp[0])
            else:
                tmp[0].zero_()
            tmp.mul_(slope)
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
            None,
        )


@per_member
def fused_selective_scan(x, dt, A, B, C, signed: bool = False, chunk: int | None = None):
    """y = C . h [batch, L, E] (without the D x skip) from x, dt [batch, L, E], A [E, N],
    B, C [batch, L, N]; same values and gradients as the reference. ``chunk`` time steps at
    a time; by default as many as keep one [chunk, batch, N, E] buffer near 1 MB."""
    if chunk is None:
        per_step = x.shape[0] * x.shape[2] * A.shape[1] * x.element_size()
        chunk = max(1, (1 << 20) // per_step)
    return _FusedSelectiveScan.apply(x, dt, A, B, C, signed, chunk)
