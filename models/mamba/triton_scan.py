"""The "triton" scan: the selective scan of :mod:`models.mamba.scan` as two Triton kernels,
forward and backward, for GPUs (and, slowly, for CPU tensors through Triton's interpreter,
``TRITON_INTERPRET=1`` set before this module is imported: how the tests run it).

    h_t = a_t * h_{t-1} + dt_t x_t B_t,   y_t = C_t . h_t + D x_t,   h_{-1} = h0 (or 0)
    a_t = exp(dt_t A) ("positive") or 2 exp(dt_t A) - 1 ("signed")

One program per (batch element, block of BLOCK_E channels) keeps its state [BLOCK_E, N] in
registers and runs the whole time loop itself, in float32 whatever the input dtype. Every
CHUNK steps the forward kernel writes the state before the chunk (a checkpoint,
[batch, L / CHUNK, E, N]); it writes the state trajectory [batch, L, E, N] only when asked
(for ``hook_ssm_state``). The backward kernel walks the chunks from the last: it recomputes
the chunk's states from its checkpoint into a scratch tile of its own, then runs the
reverse recurrence g_t = C_t dy_t + dL/dh_t + a_{t+1} g_{t+1} over them, accumulating the
gradients of A and D in registers. Gradients of B and C (summed over channels) are written
per channel block and of A and D per batch element, and summed here, so results do not
depend on the order in which programs run (no atomics). Steps past the end of the last
chunk are masked: dt = 0 there, so a = 1 and the state and its gradient pass unchanged.
The kernels call Triton's builtins only (``tl.full``, ``tl.reduce``, not the jit helpers
``tl.zeros``, ``tl.sum`` of triton.language): the interpreter runs those helpers only if
TRITON_INTERPRET was set before Triton was first imported, and torch imports it at its own
import. Layouts: x, dt [batch, L, E] and B, C [batch, L, N] with unit stride on the last axis (any
other strides, e.g. the slices of in_proj's and x_proj's outputs), A [E, N], D [E],
h0 [batch, E, N].
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable
from triton.runtime.interpreter import InterpretedFunction

from models.vmap import per_member

CHUNK = 16
"""Time steps between checkpoints (the backward recomputes this many at a time)."""


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _sum(values, axis: tl.constexpr):
    """``tl.sum`` (see the note on builtins above)."""
    return tl.reduce(values, axis, _add)


@triton.jit
def _transition(dtA, SIGNED: tl.constexpr):
    """(a, da/d(dt A)) of dt A."""
    decay = tl.exp(dtA)
    if SIGNED:
        return 2.0 * decay - 1.0, 2.0 * decay
    return decay, decay


@triton.jit
def _forward_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, h0_ptr,
    y_ptr, states_ptr, checkpoints_ptr,
    length, d_inner, d_state, n_chunks,
    x_sb, x_st, dt_sb, dt_st, B_sb, B_st, C_sb, C_st,
    SIGNED: tl.constexpr, HAS_H0: tl.constexpr, WITH_STATES: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)  # [BLOCK_E] channels
    n = tl.arange(0, BLOCK_N)  # [BLOCK_N] state indices
    e_ok, n_ok = e < d_inner, n < d_state
    en_ok = e_ok[:, None] & n_ok[None, :]
    en = e[:, None] * d_state + n[None, :]  # offsets in an [E, N] slab
    slab = d_inner * d_state
    A = tl.load(A_ptr + en, mask=en_ok, other=0.0).to(tl.float32)
    D = tl.load(D_ptr + e, mask=e_ok, other=0.0).to(tl.float32)
    if HAS_H0:
        h = tl.load(h0_ptr + b * slab + en, mask=en_ok, other=0.0).to(tl.float32)
    else:
        h = tl.full([BLOCK_E, BLOCK_N], 0.0, tl.float32)
    # chunk loops are while loops: Triton's interpreter cannot take range(n_chunks) of a
    # runtime argument on numpy >= 2.4
    remaining = n_chunks
    while remaining > 0:
        c = n_chunks - remaining
        tl.store(checkpoints_ptr + (b * n_chunks + c) * slab + en, h, mask=en_ok)
        for k in range(CHUNK):
            t = c * CHUNK + k
            step_ok = t < length
            x = tl.load(x_ptr + b * x_sb + t * x_st + e, mask=e_ok & step_ok, other=0.0)
            dt = tl.load(dt_ptr + b * dt_sb + t * dt_st + e, mask=e_ok & step_ok, other=0.0)
            Bt = tl.load(B_ptr + b * B_sb + t * B_st + n, mask=n_ok & step_ok, other=0.0)
            Ct = tl.load(C_ptr + b * C_sb + t * C_st + n, mask=n_ok & step_ok, other=0.0)
            x, dt = x.to(tl.float32), dt.to(tl.float32)
            a, _ = _transition(dt[:, None] * A, SIGNED)
            h = a * h + (dt * x)[:, None] * Bt.to(tl.float32)[None, :]
            y = _sum(h * Ct.to(tl.float32)[None, :], axis=1) + D * x
            tl.store(y_ptr + (b * length + t) * d_inner + e, y, mask=e_ok & step_ok)
            if WITH_STATES:
                tl.store(states_ptr + (b * length + t) * slab + en, h, mask=en_ok & step_ok)
        remaining -= 1


@triton.jit
def _backward_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, checkpoints_ptr, grad_y_ptr, grad_states_ptr,
    grad_x_ptr, grad_dt_ptr, grad_A_ptr, grad_B_ptr, grad_C_ptr, grad_D_ptr, grad_h0_ptr,
    scratch_ptr,
    batch, length, d_inner, d_state, n_chunks,
    x_sb, x_st, dt_sb, dt_st, B_sb, B_st, C_sb, C_st,
    SIGNED: tl.constexpr, HAS_GRAD_Y: tl.constexpr, HAS_GRAD_STATES: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1)
    e = block * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    e_ok, n_ok = e < d_inner, n < d_state
    en_ok = e_ok[:, None] & n_ok[None, :]
    en = e[:, None] * d_state + n[None, :]
    slab = d_inner * d_state
    A = tl.load(A_ptr + en, mask=en_ok, other=0.0).to(tl.float32)
    D = tl.load(D_ptr + e, mask=e_ok, other=0.0).to(tl.float32)
    # this program's scratch: CHUNK + 1 tiles [BLOCK_E, BLOCK_N], slot k + 1 the state
    # after step k of the chunk, slot 0 the state before it
    tile = BLOCK_E * BLOCK_N
    scratch = scratch_ptr + (b * tl.num_programs(1) + block) * (CHUNK + 1) * tile
    in_tile = tl.arange(0, BLOCK_E)[:, None] * BLOCK_N + n[None, :]
    # per channel block partial sums of grad_B, grad_C: [n_blocks, batch, L, N]
    bc_rows = (block * batch + b) * length
    g = tl.full([BLOCK_E, BLOCK_N], 0.0, tl.float32)  # dL/dh_t through later steps
    grad_A = tl.full([BLOCK_E, BLOCK_N], 0.0, tl.float32)
    grad_D = tl.full([BLOCK_E], 0.0, tl.float32)
    c = n_chunks - 1
    while c >= 0:
        h = tl.load(checkpoints_ptr + (b * n_chunks + c) * slab + en, mask=en_ok, other=0.0)
        tl.store(scratch + in_tile, h)
        for k in range(CHUNK):  # recompute the chunk's states
            t = c * CHUNK + k
            step_ok = t < length
            x = tl.load(x_ptr + b * x_sb + t * x_st + e, mask=e_ok & step_ok, other=0.0)
            dt = tl.load(dt_ptr + b * dt_sb + t * dt_st + e, mask=e_ok & step_ok, other=0.0)
            Bt = tl.load(B_ptr + b * B_sb + t * B_st + n, mask=n_ok & step_ok, other=0.0)
            x, dt = x.to(tl.float32), dt.to(tl.float32)
            a, _ = _transition(dt[:, None] * A, SIGNED)
            h = a * h + (dt * x)[:, None] * Bt.to(tl.float32)[None, :]
            tl.store(scratch + (k + 1) * tile + in_tile, h)
        tl.debug_barrier()
        for j in range(CHUNK):  # the reverse recurrence, last step first
            k = CHUNK - 1 - j
            t = c * CHUNK + k
            step_ok = t < length
            x = tl.load(x_ptr + b * x_sb + t * x_st + e, mask=e_ok & step_ok, other=0.0)
            dt = tl.load(dt_ptr + b * dt_sb + t * dt_st + e, mask=e_ok & step_ok, other=0.0)
            Bt = tl.load(B_ptr + b * B_sb + t * B_st + n, mask=n_ok & step_ok, other=0.0)
            x, dt, Bt = x.to(tl.float32), dt.to(tl.float32), Bt.to(tl.float32)
            h_prev = tl.load(scratch + k * tile + in_tile)
            row = b * length + t
            if HAS_GRAD_Y:
                Ct = tl.load(C_ptr + b * C_sb + t * C_st + n, mask=n_ok & step_ok, other=0.0)
                gy = tl.load(grad_y_ptr + row * d_inner + e, mask=e_ok & step_ok, other=0.0)
                gy = gy.to(tl.float32)
                h_t = tl.load(scratch + (k + 1) * tile + in_tile)
                g += Ct.to(tl.float32)[None, :] * gy[:, None]
                grad_C_t = _sum(h_t * gy[:, None], axis=0)
                tl.store(grad_C_ptr + (bc_rows + t) * d_state + n, grad_C_t, mask=n_ok & step_ok)
                grad_D += gy * x
            if HAS_GRAD_STATES:
                gs = tl.load(grad_states_ptr + row * slab + en, mask=en_ok & step_ok, other=0.0)
                g += gs.to(tl.float32)
            a, da = _transition(dt[:, None] * A, SIGNED)
            grad_dtx = _sum(g * Bt[None, :], axis=1)  # dL/d(dt x)_t
            grad_B_t = _sum(g * (dt * x)[:, None], axis=0)
            tl.store(grad_B_ptr + (bc_rows + t) * d_state + n, grad_B_t, mask=n_ok & step_ok)
            grad_decay = g * h_prev * da  # dL/d(dt A)_t
            grad_dt = _sum(grad_decay * A, axis=1) + grad_dtx * x
            grad_x = grad_dtx * dt
            if HAS_GRAD_Y:
                grad_x += D * gy
            tl.store(grad_x_ptr + row * d_inner + e, grad_x, mask=e_ok & step_ok)
            tl.store(grad_dt_ptr + row * d_inner + e, grad_dt, mask=e_ok & step_ok)
            grad_A += grad_decay * dt[:, None]
            g = a * g
        tl.debug_barrier()  # the next chunk overwrites the scratch
        c -= 1
    tl.store(grad_A_ptr + b * slab + en, grad_A, mask=en_ok)
    tl.store(grad_D_ptr + b * d_inner + e, grad_D, mask=e_ok)
    tl.store(grad_h0_ptr + b * slab + en, g, mask=en_ok)  # dL/dh_{-1} = a_0 g_0


INTERPRETED = isinstance(_forward_kernel, InterpretedFunction)
"""Whether the kernels run through Triton's interpreter (TRITON_INTERPRET=1 at import):
on CPU tensors, slowly."""


def _blocks(d_inner: int, d_state: int, block_e: int | None) -> tuple[int, int]:
    """(BLOCK_E, BLOCK_N): the state axis padded to a power of two, and channels enough
    for a tile of about 256 states (``block_e`` overrides, a power of two)."""
    block_n = triton.next_power_of_2(d_state)
    if block_e is None:
        block_e = max(1, min(triton.next_power_of_2(d_inner), 256 // block_n))
    return block_e, block_n


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` [batch, L, K] with unit stride on its last axis (a copy only if needed)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _strides(*tensors: torch.Tensor) -> list[int]:
    return [s for t in tensors for s in t.stride()[:2]]


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, h0, signed, with_states, chunk, block_e):
        x, dt, B, C = (_rows(t) for t in (x, dt, B, C))
        A, D = A.float().contiguous(), D.float().contiguous()
        (batch, length, d_inner), d_state = x.shape, A.shape[1]
        block_e, block_n = _blocks(d_inner, d_state, block_e)
        chunk = min(chunk, triton.next_power_of_2(length))  # no masked steps past short inputs
        n_chunks = triton.cdiv(length, chunk)
        y = torch.empty_like(x, memory_format=torch.contiguous_format)
        states = x.new_empty(batch, length, d_inner, d_state) if with_states else y
        checkpoints = x.new_empty(batch, n_chunks, d_inner, d_state, dtype=torch.float32)
        h0_in = h0.contiguous() if h0 is not None else checkpoints
        grid = (batch, triton.cdiv(d_inner, block_e))
        _forward_kernel[grid](
            x, dt, A, B, C, D, h0_in, y, states, checkpoints,
            length, d_inner, d_state, n_chunks, *_strides(x, dt, B, C),
            SIGNED=signed, HAS_H0=h0 is not None, WITH_STATES=with_states,
            CHUNK=chunk, BLOCK_E=block_e, BLOCK_N=block_n,
        )  # fmt: skip
        ctx.save_for_backward(x, dt, A, B, C, D, checkpoints)
        ctx.signed, ctx.chunk, ctx.blocks = signed, chunk, (block_e, block_n)
        ctx.dtypes = (A.dtype, B.dtype, C.dtype, D.dtype, None if h0 is None else h0.dtype)
        ctx.set_materialize_grads(False)
        return (y, states) if with_states else y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_states=None):
        x, dt, A, B, C, D, checkpoints = ctx.saved_tensors
        (batch, length, d_inner), d_state = x.shape, A.shape[1]
        block_e, block_n = ctx.blocks
        n_blocks, n_chunks = triton.cdiv(d_inner, block_e), checkpoints.shape[1]
        f32 = {"dtype": torch.float32}
        contiguous = {"memory_format": torch.contiguous_format}  # the kernel's layout
        grad_x, grad_dt = torch.empty_like(x, **contiguous), torch.empty_like(dt, **contiguous)
        # zeros where no gradient reaches them (no grad_y: C has none)
        grad_B = x.new_empty(n_blocks, batch, length, d_state, **f32)
        grad_C = (x.new_empty if grad_y is not None else x.new_zeros)(grad_B.shape, **f32)
        grad_A = x.new_empty(batch, d_inner, d_state, **f32)
        grad_D = x.new_zeros(batch, d_inner, **f32)
        grad_h0 = x.new_empty(batch, d_inner, d_state, **f32)
        scratch = x.new_empty(batch * n_blocks * (ctx.chunk + 1) * block_e * block_n, **f32)
        _backward_kernel[(batch, n_blocks)](
            x, dt, A, B, C, D, checkpoints,
            grad_y.contiguous() if grad_y is not None else x,
            grad_states.contiguous() if grad_states is not None else x,
            grad_x, grad_dt, grad_A, grad_B, grad_C, grad_D, grad_h0, scratch,
            batch, length, d_inner, d_state, n_chunks, *_strides(x, dt, B, C),
            SIGNED=ctx.signed, HAS_GRAD_Y=grad_y is not None,
            HAS_GRAD_STATES=grad_states is not None,
            CHUNK=ctx.chunk, BLOCK_E=block_e, BLOCK_N=block_n,
        )  # fmt: skip
        A_dtype, B_dtype, C_dtype, D_dtype, h0_dtype = ctx.dtypes
        return (
            grad_x, grad_dt, grad_A.sum(0).to(A_dtype), grad_B.sum(0).to(B_dtype),
            grad_C.sum(0).to(C_dtype), grad_D.sum(0).to(D_dtype),
            None if h0_dtype is None else grad_h0.to(h0_dtype), None, None, None, None,
        )  # fmt: skip


@per_member
def triton_scan(
    x, dt, A, B, C, D, signed: bool = False, with_states: bool = False,
    h0: torch.Tensor | None = None, chunk: int = CHUNK, block_e: int | None = None,
):  # fmt: skip
    """y_t = C_t . h_t + D x_t [batch, L, E] from x, dt [batch, L, E], A [E, N],
    B, C [batch, L, N], D [E] and the state before the first step h0 [batch, E, N] (None:
    zeros); with ``with_states`` also the trajectory h [batch, L, E, N]. Same values and
    gradients (of every input, h0 included) as the reference scan, to float32 rounding.
    ``chunk`` (steps between checkpoints, at most the length rounded up to a power of two)
    and ``block_e`` (channels per program, a power of two) only change the schedule."""
    return _TritonScan.apply(x, dt, A, B, C, D, h0, signed, with_states, chunk, block_e)
