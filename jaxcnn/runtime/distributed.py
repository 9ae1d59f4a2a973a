"""Several processes: joining JAX's distributed runtime, and which process is process 0.

Every process runs the same loop over a mesh of all processes' devices (`jaxcnn.core.executor`); only
the writers ask which process they are in (`jaxcnn.files.writers`).
"""

from __future__ import annotations

import sys

import jax
import numpy as np

from jaxcnn.errors import JaxcnnError
from jaxcnn.runtime import cluster

def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, auto_detect: bool = False,
                           local_devices: str | None = None, timeout_s: int = 300) -> bool:
    """Joins JAX's distributed runtime before any device is used; returns whether it did.

    Either all of `coordinator` ("HOST:PORT"), `num_processes` and `process_id` are given, or
    `auto_detect` asks JAX to read them from the cluster environment it recognises (SLURM, Open
    MPI, Kubernetes JobSets, Cloud TPU pods). With neither, nothing happens (one process).
    `local_devices` is `--local-devices` (`jaxcnn.runtime.cluster.parse_local_devices`): which of
    the node's GPUs this process drives.
    """
    given = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    if not auto_detect and all(v is None for v in given.values()):
        return False
    if not auto_detect:
        missing = [flag for flag, value in given.items() if value is None]
        if missing:
            raise JaxcnnError(f"multi-process training needs --coordinator, --num-processes and "
                              f"--process-id together; missing {', '.join(missing)}")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise JaxcnnError(f"--process-id must be in [0, {num_processes}) and --num-processes >= 1, "
                              f"got --process-id {process_id} --num-processes {num_processes}")
        host, sep, port = coordinator.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise JaxcnnError(f"--coordinator must be HOST:PORT (e.g. 10.0.0.1:1234), got '{coordinator}'")
    local_device_ids = cluster.parse_local_devices(local_devices)
    launcher = cluster.detect_launcher() if auto_detect else None
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id, local_device_ids=local_device_ids,
                                   initialization_timeout=timeout_s)
    except (RuntimeError, ValueError) as e:  # unreachable coordinator, timeout, no cluster found
        if auto_detect:
            raise cluster.not_initialised(launcher, e) from e
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise JaxcnnError(f"jax.distributed.initialize failed ({first_line}); check --coordinator, "
                          f"--num-processes and --process-id, and that every process was started") from e
    return True


def note_local_devices() -> None:
    """Says in one line on stderr when this process drives fewer GPUs than its node shows. Called
    once the backend may start (after `determinism.apply`)."""
    if jax.process_count() == 1 or jax.default_backend() != "gpu":
        return
    line = cluster.fewer_devices_line(jax.process_index(), jax.local_device_count(), cluster.visible_gpus(),
                                      cluster.local_processes())
    if line:
        print(line, file=sys.stderr, flush=True)


def is_main_process() -> bool:
    """Process 0: the only one that writes logs, metrics and summaries."""
    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    """Whether `flag` is set in any process; every process must call it at the same point."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array([flag], np.int32))))


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
