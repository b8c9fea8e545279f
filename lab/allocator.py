"""Keep freed memory in the process instead of handing it back to the kernel (glibc).

glibc's malloc serves every block of at least M_MMAP_THRESHOLD (dynamic, at most 32 MB on
64-bit) with its own mmap and unmaps it on free, so a training step that allocates a
[batch, L, d_inner, d_state] state trajectory (64 MB at batch 64 x seq 128) page-faults all
of it in again every step: with ``hook_ssm_state`` hooked, a step spent more time in the
kernel than in user code. :func:`keep_freed_memory` makes malloc take every block from its
heap and never trim the heap, so freed blocks are reused. The cost: the process keeps its
peak memory until it exits (right for train and probe commands, which run one job).
Call it once, early, in an entry point; it changes the whole process.
"""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD = -1  # malloc.h: release heap top only above this many free bytes
M_MMAP_MAX = -4  # malloc.h: most blocks served by mmap at once (0: none)
_NEVER_TRIM = 2**31 - 1  # the largest value mallopt's int argument takes


def keep_freed_memory() -> bool:
    """Set glibc's malloc to serve all blocks from its heap and never trim it. Returns
    whether the settings were applied (False on other C libraries, where it does nothing)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, _NEVER_TRIM))
