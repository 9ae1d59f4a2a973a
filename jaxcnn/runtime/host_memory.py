"""Host memory: keep the buffers XLA:CPU frees after every call instead of returning them to the OS.

On CPU, XLA allocates each call's temporaries (one block for all of a program's activations and
gradients, tens of megabytes for the Flax-example CNN at batch 128) with the C library's `malloc`
and frees them when the call ends. glibc serves blocks that large with fresh `mmap`s and unmaps
them when freed, so every step faulted all their pages in again: one call per step trained that
CNN at ~27 ms per step, and at ~16.5 ms with the memory kept (2-core CPU). Fused steps hid most of
it by paying once per call. `mallopt` makes glibc take every block from its heap and keep up to
1 GiB of freed memory for the next call.
"""

from __future__ import annotations

import ctypes
import sys

# glibc's mallopt parameters (malloc.h) and the values set.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
TRIM_THRESHOLD_BYTES = 2**30  # up to 1 GiB of freed memory stays in the process


def keep_freed_host_memory() -> bool:
    """Makes glibc serve every block from its heap (no per-block `mmap`) and keep up to 1 GiB of
    freed memory for reuse. Process-wide and idempotent; returns False where the C library is not
    glibc (macOS, musl) and nothing was changed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
