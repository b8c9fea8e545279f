"""Batching rules for ``torch.func.vmap`` where PyTorch has none, so that an ensemble of
models (:mod:`models.ensemble`) can run as one vmapped model.

``vmap`` needs a batching rule for every operation it meets. Custom
``torch.autograd.Function`` kernels (the Mamba scans) and fused RNN kernels (``aten::lstm``)
have none and raise; scaled-dot-product attention on CPU has none and falls back to a loop
with a warning. The two decorators here give a function a rule:

* :func:`per_member` calls the function once per member of the vmapped axis, on that
  member's slices, and stacks the results: always exact; it saves nothing inside the
  function, only around it.
* :func:`folded` merges the vmapped axis into the function's leading batch axis and calls it
  once: exact for functions whose outputs at batch index ``i`` depend only on the inputs at
  ``i``, with every vmapped argument batched that way and the others broadcast over it.

Outside ``vmap`` a decorated function is called as it is (same kernels, same numbers).
Autograd records the calls made inside the rule, so gradients flow as they would through
separate calls.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch


def per_member(function: Callable) -> Callable:
    """``function`` with a vmap rule that calls it once per member of the vmapped axis."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if not torch._C._are_functorch_transforms_active():
            return function(*args, **kwargs)
        return _PerMember.apply(_bind(function, kwargs), *args)

    return wrapper


def folded(function: Callable) -> Callable:
    """``function`` with a vmap rule that folds the vmapped axis into its batch axis (dim 0
    of every vmapped tensor argument and of every output)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if not torch._C._are_functorch_transforms_active():
            return function(*args, **kwargs)
        return _Folded.apply(_bind(function, kwargs), *args)

    return wrapper


class _PerMember(torch.autograd.Function):
    @staticmethod
    def forward(function, *args):
        return function(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass  # never differentiated itself: autograd records the calls inside the rule

    @staticmethod
    def vmap(info, in_dims, function, *args):
        # unbind, not select: select's backward writes each member's gradient into a zero
        # tensor of the whole stack; unbind's stacks them once
        members = [
            [a] * info.batch_size if d is None else a.unbind(d)
            for a, d in zip(args, in_dims[1:], strict=True)
        ]
        outputs = [function(*member) for member in zip(*members, strict=True)]
        if isinstance(outputs[0], tuple):
            stacked = tuple(torch.stack(parts) for parts in zip(*outputs, strict=True))
            return stacked, (0,) * len(stacked)
        return torch.stack(outputs), 0


class _Folded(torch.autograd.Function):
    @staticmethod
    def forward(function, *args):
        return function(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass  # never differentiated itself: autograd records the call inside the rule

    @staticmethod
    def vmap(info, in_dims, function, *args):
        members = info.batch_size
        flat = [
            a if d is None else a.movedim(d, 0).flatten(0, 1)
            for a, d in zip(args, in_dims[1:], strict=True)
        ]
        outputs = function(*flat)

        def unfold(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(0, (members, t.shape[0] // members))

        if isinstance(outputs, tuple):
            return tuple(unfold(t) for t in outputs), (0,) * len(outputs)
        return unfold(outputs), 0


def _bind(function: Callable, kwargs: dict) -> Callable:
    """``function`` with its keyword arguments bound (they pass through the rule unbatched,
    so tensors must be positional)."""
    tensors = sorted(k for k, v in kwargs.items() if isinstance(v, torch.Tensor))
    if tensors:
        raise TypeError(f"{function.__name__}: pass tensors positionally under vmap, not {tensors}")
    return functools.partial(function, **kwargs)
