"""Which cluster launcher started this process, read from its environment, for `--distributed`.

JAX detects the cluster itself (`jax.distributed.initialize()` with no arguments; jax/_src/clusters:
Open MPI, then SLURM, then Cloud TPU, then Kubernetes, in that order). This module reads the same
variables first for two reasons: a launcher that is half there (an `sbatch` script that runs
`jaxcnn` without `srun`, a Kubernetes pod without the `kubernetes` package, a mistyped port) must
stop in one line naming the fix, never JAX's "coordinator_address should be defined" or a C++
abort; and the other lines (which GPUs a process drives) need to name the launcher. It imports
nothing heavy: the command checks the environment before JAX starts.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from typing import Mapping

from jaxcnn.errors import JaxcnnError

SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
OMPI_VARS = ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK")
NO_CLUSTER = ("--distributed found no cluster to join: none of SLURM (srun), Open MPI (mpirun), Kubernetes "
              "(with `pip install 'jaxcnn[k8s]'`) or a Cloud TPU VM was detected; without a launcher pass "
              "--coordinator, --num-processes and --process-id")


def detect_launcher(environ: Mapping[str, str] = os.environ) -> str | None:
    """The launcher JAX will pick, in JAX's order (Open MPI before SLURM), or None (maybe a TPU VM,
    which JAX detects through its metadata server, or nothing). Raises `JaxcnnError` for one that is
    only half there, before JAX reads it."""
    if "OMPI_MCA_orte_hnp_uri" in environ:
        _check_ints(environ, OMPI_VARS, "Open MPI", "start the processes with mpirun")
        _check_rank(environ, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")
        if "tcp://" not in environ["OMPI_MCA_orte_hnp_uri"] and "tcp6://" not in environ["OMPI_MCA_orte_hnp_uri"]:
            raise JaxcnnError(f"Open MPI detected, but OMPI_MCA_orte_hnp_uri has no tcp:// address to take the "
                              f"coordinator from: '{environ['OMPI_MCA_orte_hnp_uri']}'")
        return _with_port("Open MPI", environ)
    if "SLURM_JOB_ID" in environ:
        missing = [name for name in SLURM_VARS if name not in environ]
        if missing:
            raise JaxcnnError(f"SLURM job {environ['SLURM_JOB_ID']} detected, but {', '.join(missing)} "
                              f"{'is' if len(missing) == 1 else 'are'} not set: start every process with srun "
                              "(`srun jaxcnn train --distributed ...`), not from the batch script itself")
        _check_ints(environ, SLURM_VARS[2:], "SLURM", "start every process with srun")
        _check_rank(environ, "SLURM_PROCID", "SLURM_NTASKS")
        return _with_port("SLURM", environ)
    if "KUBERNETES_SERVICE_HOST" in environ:
        if importlib.util.find_spec("kubernetes") is None:
            raise JaxcnnError("Kubernetes detected, but --distributed needs the `kubernetes` package to find the "
                              "other pods: pip install 'jaxcnn[k8s]'")
        return _with_port("Kubernetes", environ)
    return None


def not_initialised(launcher: str | None, error: Exception) -> JaxcnnError:
    """JAX's failure to join the cluster it was asked to detect, as one line."""
    if launcher is None:
        return JaxcnnError(NO_CLUSTER)
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return JaxcnnError(f"--distributed under {launcher}: jax.distributed.initialize failed ({first_line}); check "
                       "that every process was started and that the coordinator's port (JAX_COORDINATOR_PORT) is free")


def _check_ints(environ: Mapping[str, str], names: tuple[str, ...], launcher: str, fix: str) -> None:
    """JAX reads these with int(): a bad value would be a traceback inside JAX."""
    bad = [f"{name}='{environ.get(name, '')}'" for name in names if not environ.get(name, "").isdigit()]
    if bad:
        raise JaxcnnError(f"{launcher} detected, but {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not "
                          f"a number: {fix}")


def _check_rank(environ: Mapping[str, str], rank: str, size: str) -> None:
    if not 0 <= int(environ[rank]) < int(environ[size]) or int(environ[size]) < 1:
        raise JaxcnnError(f"{rank}={environ[rank]} is not a process of {size}={environ[size]}")


def _with_port(launcher: str, environ: Mapping[str, str]) -> str:
    """JAX_COORDINATOR_PORT overrides the port JAX derives from the job id; an impossible one would
    abort in C++ rather than fail."""
    port = environ.get("JAX_COORDINATOR_PORT")
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise JaxcnnError(f"JAX_COORDINATOR_PORT must be a port number in 1..65535, got '{port}'")
    return launcher


def parse_local_devices(text: str | None) -> list[int] | None:
    """`--local-devices`: None leaves JAX's choice (under SLURM and Open MPI one GPU per process, the
    one of index SLURM_LOCALID / OMPI_COMM_WORLD_LOCAL_RANK; elsewhere all of them); `all` drives
    every GPU of the node from this process (an empty list, which JAX takes as no restriction);
    `0,1` those GPUs."""
    if text is None:
        return None
    if text.strip() == "all":
        return []
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts):
        raise JaxcnnError(f"--local-devices must be `all` or distinct GPU indices like 0,1,2,3, got '{text}'")
    return [int(p) for p in parts]


def visible_gpus(environ: Mapping[str, str] = os.environ) -> int | None:
    """The node's GPUs this process could drive: CUDA_VISIBLE_DEVICES when it lists them, else the
    NVIDIA driver's count; None when neither says (no NVIDIA GPU, or not Linux)."""
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None and listed.strip() not in ("", "all"):
        return len([d for d in listed.split(",") if d.strip()])
    found = glob.glob("/proc/driver/nvidia/gpus/*")
    return len(found) or None


def local_processes(environ: Mapping[str, str] = os.environ) -> int | None:
    """How many processes the launcher started on this node, when it says."""
    for name in ("OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE", "LOCAL_WORLD_SIZE"):
        value = environ.get(name, "").split("(")[0]
        if value.isdigit():
            return int(value)
    return None


def fewer_devices_line(process: int, local: int, visible: int | None, per_node: int | None) -> str | None:
    """One line when this process drives fewer GPUs than the node shows: right for one process per
    GPU, a mistake (jax-ml/jax#16788) when one process per node was meant to drive them all."""
    if visible is None or local >= visible:
        return None
    if per_node is not None and per_node * local >= visible:
        return (f"jaxcnn: process {process} drives {local} of this node's {visible} visible GPUs "
                f"({per_node} processes per node, one GPU each)")
    return (f"jaxcnn: process {process} drives {local} of this node's {visible} visible GPUs; for one process "
            "per node driving them all, pass --local-devices all")
