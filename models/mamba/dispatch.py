"""Which scan backend (:mod:`models.mamba.backends`) serves a mixer's forward pass, and
falling back, with one warning per reason, when one cannot.

A request names a backend or "auto"; it becomes a chain of backends tried in order:

  auto on CUDA        cuda (mamba-ssm) -> triton -> compiled -> fast
  auto on CPU         native -> fast (float32 from zeros; other dtypes and calls from an
                      initial state, which native does not take: fast)
  a backend in the    that backend and the rest of the chain after it
  device's auto chain
  any other backend   that backend -> fast ("reference" and "fast" alone: they serve all)

A backend is skipped when it says it cannot serve the call (no CUDA, state hooked, not
built...). Where it can, the first use of each of its kernels per call configuration
(:class:`models.mamba.backends.ScanCall`: device, dtype, transitions, state hooked, initial
state, gradients) is a trial on detached copies of the real inputs: forward and, when the
call will be differentiated, backward, compared with the fast backend on the same copies.
A kernel that fails to build, trace or run there, or disagrees, is marked unusable for
that configuration and the next backend of the chain serves the call, so the step in
progress, its backward included, never meets it. A later forward failure (say, at a new
shape) is caught the same way and the call recomputed; only a backward failure after a
passed trial would surface. Every fallback warns once per message, naming the reason.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from models.mamba.backends import BACKENDS, ScanBackend, ScanCall, describe

SCANS = ("auto", *BACKENDS)
TRUSTED = ("reference", "fast")
"""The definitions: never tried, never replaced (an error in them is a bug)."""
OP_INPUTS = {"conv_silu": ("x", "weight", "bias"), "scan": ("x", "dt", "A", "B", "C", "D", "h0")}
OP_OUTPUTS = {"conv_silu": ("out",), "scan": ("y", "states")}


def auto_chain(call: ScanCall) -> tuple[str, ...]:
    if call.device == "cuda":
        return ("cuda", "triton", "compiled", "fast")
    if call.device == "cpu" and call.dtype == torch.float32 and not call.initial_state:
        return ("native", "fast")
    return ("fast",)


def scan_chain(requested: str, call: ScanCall) -> tuple[str, ...]:
    """The backends tried, in order, for a request ("auto" or a backend's name)."""
    if requested not in SCANS:
        raise ValueError(f"unknown scan {requested!r}; valid: {list(SCANS)}")
    auto = auto_chain(call)
    if requested == "auto":
        return auto
    if requested in TRUSTED:
        return (requested,)
    if requested in auto:
        return auto[auto.index(requested) :]
    return (requested, "fast")


@dataclass
class Verdicts:
    """What this process has learnt about the backends."""

    failed: dict[tuple[str, ScanCall], str] = field(default_factory=dict)
    """(backend, call) -> why it failed."""
    tried: set[tuple[str, str, ScanCall]] = field(default_factory=set)
    """(backend, kernel, call) whose trial passed."""
    warned: set[str] = field(default_factory=set)
    """Warnings issued."""


VERDICTS = Verdicts()


class ChosenScan:
    """The backend serving one forward pass; its kernels are guarded (see the module)."""

    def __init__(self, requested: str, call: ScanCall):
        self.requested, self.call = requested, call
        self.chain = scan_chain(requested, call)
        self.index = -1
        self._next()

    @property
    def name(self) -> str:
        return self.chain[self.index]

    def conv_silu(self, x, weight, bias):
        """SiLU(causal depthwise conv of x) [batch, L, E] (see :mod:`models.mamba.backends`)."""
        return self._run("conv_silu", (x, weight, bias))

    def scan(self, x, dt, A, B, C, D, h0, signed: bool, with_states: bool):
        """(y [batch, L, E], the trajectory [batch, L, E, N] or None)."""
        return self._run("scan", (x, dt, A, B, C, D, h0), signed, with_states)

    def _next(self, reason: str | None = None) -> None:
        """Move on to the next backend of the chain that can serve the call, warning why
        the current one (failed for ``reason``) and each skipped one cannot."""
        while True:
            if reason is not None:
                self._warn(f"the {self.name} scan cannot run ({reason}); using the "
                           f"{self.chain[self.index + 1]} scan")  # fmt: skip
            self.index += 1
            backend = BACKENDS[self.name]
            reason = VERDICTS.failed.get((self.name, self.call)) or backend.unusable(self.call)
            if reason is None:
                return

    def _warn(self, message: str) -> None:
        message = f"scan={self.requested!r}: {message}"
        if message not in VERDICTS.warned:
            VERDICTS.warned.add(message)
            warnings.warn(message, stacklevel=5)

    def _fail(self, reason: str) -> None:
        VERDICTS.failed[(self.name, self.call)] = reason
        self._next(reason)

    def _run(self, op: str, tensors: tuple, *flags):
        while True:
            backend = BACKENDS[self.name]
            if self.name in TRUSTED:
                return getattr(backend, op)(*tensors, *flags)
            key = (self.name, op, self.call)
            if _overrides(backend, op) and key not in VERDICTS.tried and not _vmapped():
                reason = _trial(backend, op, tensors, flags, self.call.grad)
                if reason is not None:
                    self._fail(reason)
                    continue
                VERDICTS.tried.add(key)
            try:
                return getattr(backend, op)(*tensors, *flags)
            except torch.OutOfMemoryError:
                raise
            except Exception as error:  # a kernel that fails later than its trial
                self._fail(f"{op} failed: {describe(error)}")


def _vmapped() -> bool:
    """Whether the call runs inside ``torch.func.vmap`` (seed-batched training), where a
    trial cannot run (it differentiates copies and reads numbers out); the seed-batched
    trainer takes a step with one member alone first, so the kernels are tried outside it."""
    return torch._C._are_functorch_transforms_active()


def _overrides(backend: ScanBackend, op: str) -> bool:
    return getattr(type(backend), op) is not getattr(ScanBackend, op)


def _weights(t: torch.Tensor) -> torch.Tensor:
    """Fixed, varied output weights of a trial's loss (no random numbers drawn)."""
    return torch.cos(torch.arange(t.numel(), device=t.device, dtype=torch.float32)).view(t.shape)


def _trial(backend: ScanBackend, op: str, tensors: tuple, flags: tuple, grad: bool) -> str | None:
    """Why ``op`` of ``backend`` cannot be trusted with inputs like ``tensors`` (None: it
    can): it raises, forward or backward, or its outputs or gradients differ from the fast
    backend's on the same inputs by more than float rounding."""
    results = []
    for candidate in (backend, BACKENDS["fast"]):
        copies = [None if t is None else t.detach().clone() for t in tensors]
        for copy, t in zip(copies, tensors, strict=True):
            if copy is not None and grad and t.requires_grad:
                copy.requires_grad_()
        stage = "forward"
        try:
            with torch.enable_grad() if grad else nullcontext():
                out = getattr(candidate, op)(*copies, *flags)
                outs = out if isinstance(out, tuple) else (out,)
                wanted = {
                    f"grad {name}": t
                    for name, t in zip(OP_INPUTS[op], copies, strict=True)
                    if t is not None and t.requires_grad
                }
                grads = ()
                if wanted:
                    stage = "backward"
                    loss = sum((o.float() * _weights(o)).sum() for o in outs if o is not None)
                    grads = torch.autograd.grad(loss, list(wanted.values()), allow_unused=True)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:
            if candidate is not backend:
                raise
            return f"{op} {stage} failed: {describe(error)}"
        named = {
            n: None if o is None else o.detach() for n, o in zip(OP_OUTPUTS[op], outs, strict=True)
        }
        named.update(zip(wanted, grads, strict=False))  # no grads: forward only
        results.append(named)
    got, want = results
    tolerance = 1e-3 if tensors[0].dtype in (torch.float32, torch.float64) else 3e-2
    for name, value in want.items():
        if value is None:
            continue
        if got.get(name) is None:
            return f"{op} computed no {name}"
        gap = float((got[name].float() - value.float()).abs().max()) if value.numel() else 0.0
        scale = 1 + float(value.float().abs().max()) if value.numel() else 1.0
        if not gap <= tolerance * scale:  # also catches NaN
            return f"{op}'s {name} differs from the fast scan's by {gap:.2g} (scale {scale:.2g})"
    return None


def choose_scan(requested: str, call: ScanCall) -> ChosenScan:
    """The backend for one forward pass asking ``call`` of a scan ``requested``."""
    return ChosenScan(requested, call)
