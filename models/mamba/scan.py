"""Selective-scan backends of the Mamba-1 SSM. All compute the same recurrence

    h_t = a_t * h_{t-1} + dt_t B_t x_t,      y_t = C_t . h_t        h: [batch, d_inner, d_state]

per channel e and state n, with the transition a_t = exp(dt_t A) in (0, 1) (Mamba-1's
"positive" eigenvalues) or a_t = 2 exp(dt_t A) - 1 in (-1, 1) ("signed": Grazzi et al.
2024, "Unlocking state-tracking in linear RNNs through negative eigenvalues").

  reference_scan    the recurrence from materialised decay and drive, an autograd loop
                    (the executable definition)
  selective_scan    y = C . h from the scan's inputs, never storing the state trajectory
                    unless asked to return it too (for hook_ssm_state)

selective_scan runs time in chunks of ``chunk`` steps with a hand-written backward pass: only
the states at chunk starts are kept, states and decays are recomputed chunk by chunk, and the
state and its gradient are carried across chunk boundaries. Each chunk is one call of a chunk
kernel: plain tensor code with a few small ops per time step, which runs as it is (``EAGER``)
or compiled by ``torch.compile`` (:mod:`models.mamba.compiled`), which fuses a whole chunk
into one loop nest with the state kept in registers. Chunks are slices of the inputs as they
are, batch-major with the state axis innermost: x, dt [batch, T, E], B, C [batch, T, N],
A [E, N], states [batch, E, N]; the trajectory is [batch, L, E, N].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from models.vmap import per_member

EIGENVALUES = ("positive", "signed")


def transition(dt: torch.Tensor, A: torch.Tensor, signed: bool):
    """(a, da/d(dt A)) for dt [..., E] and A [E, N], both [..., E, N]: a = exp(dt A), or
    2 exp(dt A) - 1 when ``signed``."""
    decay = torch.exp(dt[..., None] * A)
    return (2 * decay - 1, 2 * decay) if signed else (decay, decay)


def reference_scan(
    decay: torch.Tensor, drive: torch.Tensor, h0: torch.Tensor | None = None
) -> torch.Tensor:
    """The recurrence h_t = decay_t * h_{t-1} + drive_t written out step by step, autograd
    differentiating the loop, from h_{-1} = h0 [batch, E, N] (None: zeros).
    decay, drive, result: [batch, L, E, N]."""
    state = torch.zeros_like(drive[:, 0]) if h0 is None else h0
    states = []
    for a, u in zip(decay.unbind(1), drive.unbind(1), strict=True):
        state = a * state + u
        states.append(state)
    return torch.stack(states, dim=1)


# ---- chunk kernels: T steps from the state before the chunk, a few ops per step


def chunk_forward(h, dt, x, B, C, A, signed: bool, y, states=None):
    """One chunk from the state h [b, E, N] before it; dt, x [b, T, E], B, C [b, T, N].
    Writes y = C . h into ``y`` [b, T, E] (and the chunk's states into ``states``
    [b, T, E, N] when given); returns the chunk's last state [b, E, N]. Outputs are written
    in place, so a compiled kernel stores straight into the caller's full-length tensors."""
    hs, ys = [], []
    for t in range(dt.shape[1]):
        a, _ = transition(dt[:, t], A, signed)
        h = a * h + (dt[:, t] * x[:, t])[..., None] * B[:, t, None, :]
        hs.append(h)
        ys.append((h * C[:, t, None, :]).sum(-1))
    y.copy_(torch.stack(ys, 1))
    if states is not None:
        states.copy_(torch.stack(hs, 1))
    return h


def chunk_backward(
    h, g, dt, x, B, C, A, grad_A, signed: bool, grads, grad_y=None, grad_states=None
):  # fmt: skip
    """Gradients of one chunk of :func:`chunk_forward` (its states recomputed from h), given
    grad_y [b, T, E] and/or grad_states [b, T, E, N] (None: no gradient), and g [b, E, N]:
    dL/dh at the chunk's last step through the later steps (a_T g_T).

    The reverse recurrence is g_t = C_t grad_y_t + grad_states_t + a_{t+1} g_{t+1}. Writes
    grad_x, grad_dt [b, T, E], grad_B, grad_C [b, T, N] into ``grads`` (four tensors of
    those shapes); returns grad_A plus this chunk's part [b, E, N] (summed over the batch
    by the caller) and a_0 g_0 for the previous chunk."""
    length = dt.shape[1]
    states, steps = [h], []
    for t in range(length):
        a, da = transition(dt[:, t], A, signed)
        states.append(a * states[-1] + (dt[:, t] * x[:, t])[..., None] * B[:, t, None, :])
        steps.append((a, da))
    # per-step gradients, appended from the last step back (only list appends: Dynamo
    # traces them on every torch version, item assignment it did not on some)
    grad_x, grad_dt, grad_B, grad_C = [], [], [], []
    for t in reversed(range(length)):
        a, da = steps[t]
        if grad_y is not None:
            g = g + C[:, t, None, :] * grad_y[:, t, :, None]
            grad_C.append((states[t + 1] * grad_y[:, t, :, None]).sum(1))
        if grad_states is not None:
            g = g + grad_states[:, t]
        grad_dtx = (g * B[:, t, None, :]).sum(-1)  # dL/d(dt x)_t
        grad_B.append((g * (dt[:, t] * x[:, t])[..., None]).sum(1))
        grad_decay = g * states[t] * da  # dL/d(dt A)_t
        grad_dt.append((grad_decay * A).sum(-1) + grad_dtx * x[:, t])
        grad_x.append(grad_dtx * dt[:, t])
        grad_A = grad_A + grad_decay * dt[:, t, :, None]
        g = a * g
    out_x, out_dt, out_B, out_C = grads
    out_x.copy_(torch.stack(grad_x[::-1], 1))
    out_dt.copy_(torch.stack(grad_dt[::-1], 1))
    out_B.copy_(torch.stack(grad_B[::-1], 1))
    if grad_y is not None:
        out_C.copy_(torch.stack(grad_C[::-1], 1))
    else:
        out_C.zero_()
    return grad_A, g


@dataclass(frozen=True)
class ChunkKernels:
    """The chunk kernels a chunked scan calls (as written, or compiled) and the chunk
    length they run fastest at (at batch 64, d_inner 128, d_state 16 on CPU)."""

    forward: Callable = chunk_forward
    backward: Callable = chunk_backward
    chunk: int = 16


EAGER = ChunkKernels()


# ---- the chunked scan


def _chunk(tensor: torch.Tensor, start: int, chunk: int) -> torch.Tensor:
    """tensor[:, start : start + chunk], zero-padded to ``chunk`` steps past the end (a
    padded step has dt = 0: a = 1 and no drive, so it leaves the state alone). Full chunks
    are views, so no input is copied."""
    piece = tensor[:, start : start + chunk]
    if piece.shape[1] < chunk:
        padding = piece.new_zeros(piece.shape[0], chunk - piece.shape[1], *piece.shape[2:])
        return torch.cat([piece, padding], 1)
    return piece


class _Outputs:
    """Where the chunk kernels write: views into full-length outputs [b, L, ...] for full
    chunks, a padded buffer for a last partial chunk (copied into place by ``done``)."""

    def __init__(self, outputs: tuple[torch.Tensor, ...], start: int, chunk: int):
        self.outputs, self.start = outputs, start
        self.views = tuple(out[:, start : start + chunk] for out in outputs)
        self.padded = self.views[0].shape[1] < chunk
        if self.padded:
            self.views = tuple(
                out.new_empty(out.shape[0], chunk, *out.shape[2:]) for out in outputs
            )

    def done(self):
        if self.padded:
            for out, view in zip(self.outputs, self.views, strict=True):
                out[:, self.start :] = view[:, : out.shape[1] - self.start]


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, h0, signed, chunk, kernels, with_states):
        (batch, length, d_inner), d_state = x.shape, A.shape[1]
        y = torch.empty_like(x)
        states = x.new_empty(batch, length, d_inner, d_state) if with_states else None
        h = x.new_zeros(batch, d_inner, d_state) if h0 is None else h0
        starts = []
        for t0 in range(0, length, chunk):
            starts.append(h)
            out = _Outputs((y, states) if with_states else (y,), t0, chunk)
            inputs = (_chunk(t, t0, chunk) for t in (dt, x, B, C))
            h = kernels.forward(h, *inputs, A, signed, *out.views)
            out.done()
        ctx.save_for_backward(x, dt, A, B, C)
        ctx.starts = starts  # [b, E, N] each: the state before each chunk
        ctx.signed, ctx.chunk, ctx.kernels = signed, chunk, kernels
        ctx.set_materialize_grads(False)
        return (y, states) if with_states else y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_states=None):
        x, dt, A, B, C = ctx.saved_tensors
        chunk = ctx.chunk
        g, grad_A = torch.zeros_like(ctx.starts[0]), torch.zeros_like(ctx.starts[0])
        grads = tuple(torch.empty_like(t) for t in (x, dt, B, C))
        for i in reversed(range(len(ctx.starts))):
            t0 = i * chunk
            out = _Outputs(grads, t0, chunk)
            inputs = (_chunk(t, t0, chunk) for t in (dt, x, B, C))
            grad_outputs = (
                None if grad is None else _chunk(grad, t0, chunk) for grad in (grad_y, grad_states)
            )
            grad_A, g = ctx.kernels.backward(
                ctx.starts[i], g, *inputs, A, grad_A, ctx.signed, out.views, *grad_outputs
            )
            out.done()
        grad_x, grad_dt, grad_B, grad_C = grads
        grad_h0 = g if ctx.needs_input_grad[5] else None  # dL/dh_{-1} = a_0 g_0
        return grad_x, grad_dt, grad_A.sum(0), grad_B, grad_C, grad_h0, None, None, None, None


@per_member
def selective_scan(
    x, dt, A, B, C, signed: bool = False, chunk: int | None = None,
    kernels: ChunkKernels = EAGER, with_states: bool = False, h0: torch.Tensor | None = None,
):  # fmt: skip
    """y_t = C_t . h_t [batch, L, E] (without the D x skip) from x, dt [batch, L, E],
    A [E, N], B, C [batch, L, N] and the state before the first step h0 [batch, E, N]
    (None: zeros), running time in chunks of ``chunk`` steps (default: the kernels' own).

    With ``with_states`` also the state trajectory h [batch, L, E, N], else it is never
    stored. Gradients flow from y and from the trajectory, which may be modified in place
    (the backward pass does not read it), to every input, h0 included."""
    chunk = chunk or kernels.chunk
    return _SelectiveScan.apply(x, dt, A, B, C, h0, signed, chunk, kernels, with_states)


def readout(states: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """y[b, l, e] = sum_n states[b, l, e, n] C[b, l, n], as one batched mat-vec."""
    return (states @ C[..., None]).squeeze(-1)
