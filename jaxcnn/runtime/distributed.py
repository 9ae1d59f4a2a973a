"""Several processes: joining JAX's distributed runtime, and which process is process 0.

Every process runs the same loop over a mesh of all processes' devices (`jaxcnn.core.executor`); only
the writers ask which process they are in (`jaxcnn.files.writers`).
"""

from __future__ import annotations

import json
import socket
import sys
import time
from typing import Any

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
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise JaxcnnError(f"--coordinator must be HOST:PORT (e.g. 10.0.0.1:1234), got '{coordinator}'")
        if timeout_s < 1:
            raise JaxcnnError(f"--init-timeout must be a whole number of seconds >= 1, got {timeout_s}")
        if process_id != 0:  # process 0 starts the coordinator; the others must reach it
            wait_for_coordinator(host.strip("[]"), int(port), timeout_s)
    local_device_ids = cluster.parse_local_devices(local_devices)
    launcher = cluster.detect_launcher() if auto_detect else None
    if launcher in ("SLURM", "Open MPI"):  # JAX would abort on a coordinator it cannot reach: probe it
        probe_detected_coordinator(local_device_ids, timeout_s)
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


def wait_for_coordinator(host: str, port: int, timeout_s: float) -> None:
    """Returns once a TCP connection to the coordinator opens, or raises one line after `timeout_s`.

    Why: JAX's client aborts the whole process (SIGABRT, a C++ stack dump) when it cannot reach the
    coordinator in time, so nothing could report it in one line; a plain socket, tried until the
    same timeout, finds that out first. Process 0 may start later than the others: hence the retries.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, timeout_s)):
                return
        except OSError as e:
            error = e
        if time.monotonic() + 0.25 >= deadline:
            break
        time.sleep(0.25)
    raise JaxcnnError(f"the coordinator {host}:{port} could not be reached within {timeout_s} s "
                      f"({error.strerror or error}); start process 0 (--process-id 0) with the same --coordinator, "
                      "check the address and port, or raise --init-timeout")


def probe_detected_coordinator(local_device_ids: list[int] | None, timeout_s: int) -> None:
    """`wait_for_coordinator` for the address JAX detects from SLURM's or Open MPI's variables (read
    from the environment alone), when this process is not the coordinator."""
    from jax._src.clusters import ClusterEnv  # the detection `jax.distributed.initialize` runs next

    address, _, process_id, _ = ClusterEnv.auto_detect_unset_distributed_params(
        None, None, None, local_device_ids, None, timeout_s)
    host, sep, port = (address or "").rpartition(":")
    if sep and port.isdigit() and process_id not in (None, 0):
        wait_for_coordinator(host.strip("[]"), int(port), timeout_s)


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


def all_processes_json(value: Any) -> list[Any]:
    """`value` (anything JSON holds) of every process, in process order: each process's own part of
    a checkpoint, which process 0 writes. Every process must call it at the same point."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(value).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([raw.size], np.int32))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:raw.size] = raw
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [json.loads(bytes(row[:int(n)]).decode()) for row, n in zip(rows, sizes)]
