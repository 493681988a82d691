"""glibc malloc settings for a process that runs XLA:CPU programs over and over.

XLA:CPU allocates a program's buffers at every execution. glibc hands allocations above its
mmap threshold (32 MiB at most) out as fresh ``mmap`` regions and gives them back to the kernel
when freed, so every train step touched its buffers' pages for the first time again: a
15-epoch resnet18 run on 32-px images took 4.6 million page faults, 14 of its 76 CPU seconds
in the kernel (docs/performance.md, "Page faults"). Kept in malloc's heap, the same memory is
reused from step to step.

The price is that freed memory stays with the process (its resident size stays at its peak),
which is what a training or benchmarking process wants; ``jaxvision``'s command line calls
``keep_freed_memory`` for its commands, and a user's own training script may call it too.
Importing jaxvision changes nothing.
"""
from __future__ import annotations

import ctypes
import os
import sys

# glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
OPT_OUT = "JAXVISION_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Serves every allocation of this process from malloc's heap (no ``mmap`` per buffer) and
    never trims the heap's top back to the kernel. True when glibc took both settings; False,
    changing nothing, on another C library or platform, or with ``JAXVISION_KEEP_FREED_MEMORY=0``
    in the environment."""
    if os.environ.get(OPT_OUT, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # musl has a mallopt that ignores every option
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # glibc returns 1 for an accepted option
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
