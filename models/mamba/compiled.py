"""The "compiled" scan: the chunk kernels of :mod:`models.mamba.scan`, compiled by torch.compile.

Each kernel is T unrolled time steps of elementwise ops and reductions over the state axis,
so Inductor fuses a whole chunk into one loop nest over (batch, channel) that keeps the
state in registers: C++/OpenMP on CPU, Triton on CUDA (the path for GPUs without
mamba-ssm). Kernels are compiled on first use (about 25 s on 2 CPU cores, a few seconds once
Inductor's on-disk cache has them), once per dtype, device, transition type and set of
gradients, with symbolic sizes. Where torch.compile cannot build or trace them, the first
use fails in its trial (:mod:`models.mamba.dispatch`) and the model falls back.
"""

from __future__ import annotations

import functools

import torch

from models.mamba.scan import ChunkKernels, chunk_backward, chunk_forward


@functools.cache
def compiled_kernels() -> ChunkKernels:
    """The chunk kernels wrapped in ``torch.compile`` (compiled lazily, with symbolic sizes
    so that other batch sizes and model widths reuse them), in chunks of 4 steps: in 4 to
    32, the fewer steps, the faster the backward kernel on CPU (its per-step buffers stay
    in cache) and the shorter the compile."""
    # one graph per transition type, gradient set and first/later chunk: more than
    # dynamo's default limit of 8 graphs per function
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    compile_ = functools.partial(torch.compile, fullgraph=True, dynamic=True)
    return ChunkKernels(compile_(chunk_forward), compile_(chunk_backward), chunk=4)
