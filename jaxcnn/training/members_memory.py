"""Will a run of members fit? One member's memory, measured once, times the members.

The training call of a one-member stack is compiled once (one step) and XLA's memory analysis
read: its temporary buffers (activations, gradients, optimizer updates) plus its outputs (the
member's state and totals) are one member's share; the data placed on the device (the training
pool and the test split) is shared by all. A run whose estimate exceeds the memory available (on a
CPU the host's `MemAvailable`, on an accelerator its memory limit less what is in use) is refused
in one line before anything is written. `JAXCNN_MEMORY_LIMIT_MB` replaces the available memory
(tests; a machine shared with other work).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import jax
import numpy as np

from jaxcnn.errors import JaxcnnError

MEMORY_LIMIT_ENV = "JAXCNN_MEMORY_LIMIT_MB"
MIB = 2**20


def available_bytes(device: jax.Device) -> int | None:
    """Memory available to a run on `device` (None: unknown, no check)."""
    raw = os.environ.get(MEMORY_LIMIT_ENV, "")
    if raw:
        try:
            return int(float(raw) * MIB)
        except ValueError as e:
            raise JaxcnnError(f"{MEMORY_LIMIT_ENV} must be a number of MiB, got {raw!r}") from e
    if device.platform == "cpu":
        meminfo = pathlib.Path("/proc/meminfo")
        if not meminfo.is_file():
            return None
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
        return None
    stats = device.memory_stats() or {}
    return stats["bytes_limit"] - stats.get("bytes_in_use", 0) if "bytes_limit" in stats else None


def member_bytes(program: Any, one_member: tuple, best_copy: bool) -> int:
    """One member's bytes: the compiled one-step training call of a one-member stack (`one_member`:
    its arguments), temporaries plus outputs; with `best_copy`, its parameters once more."""
    analysis = program.lower(*one_member, num_steps=1).compile().memory_analysis()
    if analysis is None:
        return 0
    state = one_member[0]
    best = sum(np.dtype(x.dtype).itemsize * x.size for x in jax.tree.leaves((state.params, state.batch_stats)))
    return int(analysis.temp_size_in_bytes + analysis.output_size_in_bytes + (best if best_copy else 0))


def check_fits(num_members: int, per_member: int, shared: int, available: int | None) -> None:
    """Refuses a run whose estimate (`num_members` × `per_member` + `shared` bytes) exceeds `available`."""
    if available is None or per_member <= 0:
        return
    needed = num_members * per_member + shared
    if needed <= available:
        return
    most = max(0, (available - shared) // per_member)
    raise JaxcnnError(f"{num_members} members need about {needed / MIB:,.0f} MiB ({per_member / MIB:,.2f} MiB per "
                      f"member, measured on one, plus {shared / MIB:,.0f} MiB of data), more than the "
                      f"{available / MIB:,.0f} MiB available; use at most {most} members (fewer seeds or sweep values)")
