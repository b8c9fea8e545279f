"""The scan backends of the Mamba mixer behind one small interface.

A backend computes the two parts of a Mamba-1 layer that have fast kernels:

  conv_silu(x, weight, bias)   SiLU of the causal depthwise conv, x [batch, L, E] ->
                               [batch, L, E] (weight [E, 1, K], bias [E] or None, as nn.Conv1d)
  scan(x, dt, A, B, C, D, h0, signed, with_states)
                               y = C . h + D x [batch, L, E] and, with ``with_states``,
                               the trajectory h [batch, L, E, N] (else None); x, dt
                               [batch, L, E], A [E, N], B, C [batch, L, N], D [E], h0
                               [batch, E, N] the state before the first step (None: zeros)

and says whether it can serve a call (:class:`ScanCall`), and why not. Which backend runs,
falling back and warning when one cannot, is :mod:`models.mamba.dispatch`'s business.

  reference  the recurrence as an autograd loop (:func:`models.mamba.scan.reference_scan`)
  fast       plain PyTorch: the fused scan of :mod:`models.mamba.fused` when neither the
             trajectory nor h0 is asked for, else the chunked scan of
             :mod:`models.mamba.scan`; serves every call (the fallback)
  native     C++ kernels for CPUs (:mod:`models.mamba.native`), float32, no h0
  compiled   the chunked scan with its chunk kernels compiled by torch.compile
             (:mod:`models.mamba.compiled`)
  triton     the lab's Triton kernels (:mod:`models.mamba.triton_scan`): CUDA, or CPU
             tensors through Triton's interpreter
  cuda       mamba-ssm's ``selective_scan_fn`` and causal-conv1d's ``causal_conv1d_fn``:
             CUDA, positive transitions, no trajectory, no h0
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.mamba.compiled import compiled_kernels
from models.mamba.fused import fused_selective_scan
from models.mamba.native import native_conv_silu, native_error, native_scan
from models.mamba.scan import readout, reference_scan, selective_scan, transition


@dataclass(frozen=True)
class ScanCall:
    """What one forward pass of a mixer asks of its backend (everything a backend's
    ability to serve it may depend on, apart from sizes)."""

    device: str
    """Device type of the inputs: "cpu", "cuda", ..."""
    dtype: torch.dtype
    signed: bool
    """Signed transitions 2 exp(dt A) - 1 (else exp(dt A))."""
    with_states: bool
    """The trajectory is read or patched (``hook_ssm_state`` is hooked)."""
    initial_state: bool
    """An initial state h0 is given."""
    grad: bool
    """Autograd will differentiate the call."""


def describe(error: BaseException) -> str:
    """``"TypeName: first line of the message"``."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


class ScanBackend:
    """The interface; the defaults are the plain PyTorch conv and no reason to refuse."""

    name: str

    def unusable(self, call: ScanCall) -> str | None:
        """Why this backend cannot serve ``call`` (None: it can)."""
        return None

    def conv_silu(self, x, weight, bias):
        length, width = x.shape[1], weight.shape[-1]
        x = F.conv1d(x.transpose(1, 2), weight, bias, padding=width - 1, groups=x.shape[-1])
        return F.silu(x[..., :length].transpose(1, 2).contiguous())

    def scan(self, x, dt, A, B, C, D, h0, signed, with_states):
        raise NotImplementedError


class ReferenceScan(ScanBackend):
    name = "reference"

    def scan(self, x, dt, A, B, C, D, h0, signed, with_states):
        decay = transition(dt, A, signed)[0]  # [batch, L, E, N]
        states = reference_scan(decay, (dt * x)[..., None] * B[:, :, None, :], h0)
        return readout(states, C) + D * x, states if with_states else None


class FastScan(ScanBackend):
    name = "fast"

    def scan(self, x, dt, A, B, C, D, h0, signed, with_states):
        if not with_states and h0 is None:
            return fused_selective_scan(x, dt, A, B, C, signed) + D * x, None
        out = selective_scan(x, dt, A, B, C, signed, with_states=with_states, h0=h0)
        y, states = out if with_states else (out, None)
        return y + D * x, states


class NativeScan(ScanBackend):
    name = "native"

    def unusable(self, call):
        if call.device != "cpu":
            return f"the model is on {call.device}, the native scan runs on CPU"
        if call.dtype != torch.float32:
            return f"the model is {call.dtype}, the native scan is float32 only"
        if call.initial_state:
            return "the native kernel takes no initial state"
        error = native_error()
        return None if error is None else f"it cannot be built here: {error}"

    def conv_silu(self, x, weight, bias):
        return native_conv_silu(x, weight.squeeze(1), bias)

    def scan(self, x, dt, A, B, C, D, h0, signed, with_states):
        if not with_states:  # the kernel adds D x itself
            return native_scan(x, dt, A, B, C, D, signed), None
        y, states = native_scan(x, dt, A, B, C, None, signed, with_states=True)
        return y + D * x, states


class CompiledScan(ScanBackend):
    name = "compiled"

    def scan(self, x, dt, A, B, C, D, h0, signed, with_states):
        kernels = compiled_kernels()
        out = selective_scan(x, dt, A, B, C, signed, None, kernels, with_states, h0)
        y, states = out if with_states else (out, None)
        return y + D * x, states


class TritonScan(ScanBackend):
    name = "triton"

    def unusable(self, call):
        try:
            module = importlib.import_module("models.mamba.triton_scan")
        except Exception as error:  # ImportError, or Triton failing to initialise
            return f"Triton does not import ({describe(error)})"
        if call.device != "cuda" and not (call.device == "cpu" and module.INTERPRETED):
            return (
                f"the model is on {call.device}; the Triton kernels run on CUDA (or on CPU "
                "through Triton's interpreter, TRITON_INTERPRET=1)"
            )
        if call.dtype == torch.float64:
            return "the model is float64; the Triton kernels compute in float32"
        return None

    def scan(self, x, dt, A, B, C, D, h0, signed, with_states):
        from models.mamba.triton_scan import triton_scan

        out = triton_scan(x, dt, A, B, C, D, signed, with_states, h0)
        return out if with_states else (out, None)


class MambaSsmScan(ScanBackend):
    name = "cuda"
    imports = {
        "selective_scan_fn": "mamba_ssm.ops.selective_scan_interface",
        "causal_conv1d_fn": "causal_conv1d",
    }

    def __init__(self):
        self.kernels: dict[str, object] = {}
        self.errors: dict[str, str] = {}

    def kernel(self, name: str):
        """mamba-ssm's ``selective_scan_fn`` or causal-conv1d's ``causal_conv1d_fn``,
        imported on first use; None where it does not import."""
        if name not in self.kernels:
            try:
                self.kernels[name] = getattr(importlib.import_module(self.imports[name]), name)
            except Exception as error:  # ImportError, or CUDA/Triton errors raised at import
                self.kernels[name] = None
                self.errors[name] = describe(error)
        return self.kernels[name]

    def unusable(self, call):
        if call.with_states:
            return "hook_ssm_state is hooked (mamba-ssm's kernel does not return the trajectory)"
        if call.signed:
            return "eigenvalues='signed' (mamba-ssm's kernel only computes exp(dt A))"
        if call.initial_state:
            return "mamba-ssm's kernel takes no initial state"
        if call.device != "cuda":
            return f"the model is on {call.device}, not on a CUDA device"
        if self.kernel("selective_scan_fn") is None:
            return f"mamba-ssm does not import ({self.errors['selective_scan_fn']})"
        return None

    def conv_silu(self, x, weight, bias):
        conv = self.kernel("causal_conv1d_fn")
        if conv is None:
            return super().conv_silu(x, weight, bias)
        # the kernel's layout is [batch, E, L]
        out = conv(x.transpose(1, 2).contiguous(), weight.squeeze(1), bias, activation="silu")
        return out.transpose(1, 2)

    def scan(self, x, dt, A, B, C, D, h0, signed, with_states):
        y = self.kernel("selective_scan_fn")(
            *(t.transpose(1, 2).contiguous() for t in (x, dt)),
            A,
            *(t.transpose(1, 2).contiguous() for t in (B, C)),
            D.float(),
        )  # [batch, E, L]
        return y.transpose(1, 2), None


BACKENDS: dict[str, ScanBackend] = {
    backend.name: backend
    for backend in (
        ReferenceScan(),
        FastScan(),
        NativeScan(),
        CompiledScan(),
        TritonScan(),
        MambaSsmScan(),
    )  # fmt: skip
}
