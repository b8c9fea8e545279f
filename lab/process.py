"""Process-wide settings of every process that trains or probes runs: the command line
(``python -m studies``) and each sweep worker apply them once, before any stage."""

from __future__ import annotations

import torch

from lab.allocator import keep_freed_memory


def prepare_process() -> None:
    """Flush denormals to zero (decaying SSM states reach them, and they are slow on CPU) and
    keep freed memory in the process (large activations are reused, not faulted in again
    every step; :func:`lab.allocator.keep_freed_memory`)."""
    torch.set_flush_denormal(True)
    keep_freed_memory()
