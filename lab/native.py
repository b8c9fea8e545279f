"""C++ kernels built for this machine on first use, for the stages that have one
(``models/mamba/native.cpp``, ``analysis/native.cpp``).

``torch.utils.cpp_extension`` compiles a source once (about 30 s on 2 cores) into torch's
extension directory (``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``) and
loads the cached build afterwards; concurrent first uses (sweep workers) wait for one build.
Where no compiler works, :func:`build_error` says why and the caller uses its PyTorch path.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

# -fopenmp: at::parallel_for runs on OpenMP, and the shared object needs libgomp.so.1, which
# resolves to the copy torch has already loaded (one thread pool for torch and the kernels)
FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp"]
# vector instructions by the CPU capability torch detects (not -march=native: a build cached
# in a home directory shared by different machines must run on each of them)
VECTOR_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}


@functools.cache
def build(name: str, source: Path):
    """The extension module ``name`` compiled from ``source`` for this CPU's vector
    capability (raises where it cannot be built)."""
    from torch.utils import cpp_extension

    capability = torch.backends.cpu.get_cpu_capability()
    return cpp_extension.load(
        name=f"{name}_{capability.lower()}", sources=[str(source)],
        extra_cflags=FLAGS + VECTOR_FLAGS.get(capability, []), extra_ldflags=["-fopenmp"],
    )  # fmt: skip


@functools.cache
def build_error(name: str, source: Path) -> str | None:
    """Why ``source`` cannot be built here (no C++ compiler, no ninja...), found by building
    it once; None where it can."""
    try:
        build(name, source)
    except Exception as error:  # OSError, RuntimeError, subprocess errors of the build
        message = str(error).strip().splitlines()
        return f"{type(error).__name__}: {message[0] if message else ''}"
    return None
