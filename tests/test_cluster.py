"""Cluster launchers and requeue: `jaxcnn train --distributed` as two local processes under SLURM-like
and Open MPI-like environments ends like the explicit `--coordinator` run; SIGUSR1 to one process
stops both at the same step with a checkpoint, and the same command run again (the requeued job)
ends bitwise equal to the uninterrupted run. A launcher that is only half there is one line."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO
from jaxcnn.commands.saved import load_saved_model
from jaxcnn.errors import JaxcnnError
from jaxcnn.files import checkpoint
from jaxcnn.files.writers import read_jsonl, without_timing
from jaxcnn.runtime import cluster, distributed, stop
from test_parallel import device_env, free_port

# 640 synthetic examples at batch 32: 20 steps an epoch, 60 in all, a checkpoint every 20.
CONFIG = ["dataset.name=synthetic", "dataset.image_shape=(8, 8, 1)", "dataset.num_train=640",
          "dataset.num_test=100", "dataset.val_fraction=0.0", "batch_size=32", "eval_batch_size=64",
          "num_epochs=3", "log_every_steps=5", "schedule.name=constant", "optimizer.name=sgd",
          "optimizer.learning_rate=0.05", "optimizer.momentum=0.9", "model.name=mlp", "model.hidden=(32,)",
          "checkpoint.every_steps=20"]


def slurm_env(i: int, port: int) -> dict[str, str]:
    return {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "127.0.0.1", "SLURM_NTASKS": "2",
            "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i), "JAX_COORDINATOR_PORT": str(port)}


def ompi_env(i: int, port: int) -> dict[str, str]:
    return {"OMPI_MCA_orte_hnp_uri": f"1531576320.0;tcp://127.0.0.1:{free_port()}", "OMPI_COMM_WORLD_SIZE": "2",
            "OMPI_COMM_WORLD_RANK": str(i), "OMPI_COMM_WORLD_LOCAL_RANK": str(i), "JAX_COORDINATOR_PORT": str(port)}


def coordinator_flags(i: int, port: int) -> list[str]:
    return ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)]


def start_two(workdir, launcher, extra_env=None) -> list[subprocess.Popen]:
    """The same `jaxcnn train` command as 2 processes of one CPU device each; `launcher` gives each
    process its environment (SLURM, Open MPI) or its flags (explicit coordinator)."""
    port, processes = free_port(), []
    for i in range(2):
        env = {**device_env(1), **(extra_env or {})}
        flags = coordinator_flags(i, port) if launcher is None else ["--distributed"]
        env.update(launcher(i, port) if launcher is not None else {})
        command = [sys.executable, "-m", "jaxcnn.cli", "train", "--workdir", str(workdir), "--quiet",
                   "--init-timeout", "60", *flags, *[f"--config.{o}" for o in CONFIG]]
        processes.append(subprocess.Popen(command, env=env, cwd=REPO, text=True, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE))
    return processes


def finish(processes) -> list[str]:
    """Waits for every process; each must exit 0. Returns their stderr."""
    errors = []
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
        errors.append(stderr)
    return errors


def committed_steps(workdir) -> list[int]:
    folder = workdir / checkpoint.CHECKPOINT_DIR
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def params_bytes(workdir) -> list[bytes]:
    state = load_saved_model(workdir, "latest").state
    return [np.asarray(leaf).tobytes() for leaf in jax.tree.leaves(jax.device_get(state.params))]


def records(workdir):
    return [without_timing(r) for r in read_jsonl(workdir / "metrics.jsonl")]


def final_test_loss(workdir) -> float:
    return json.loads((workdir / "summary.json").read_text())["test_loss"]


@pytest.fixture(scope="module")
def explicit(tmp_path_factory):
    """The reference: 2 processes joined by --coordinator/--num-processes/--process-id."""
    workdir = tmp_path_factory.mktemp("explicit") / "run"
    finish(start_two(workdir, None))
    return workdir


def test_open_mpi_like_processes_with_distributed_end_like_the_explicit_coordinator_run(explicit, tmp_path):
    finish(start_two(tmp_path / "run", ompi_env))
    assert final_test_loss(tmp_path / "run") == final_test_loss(explicit)
    assert params_bytes(tmp_path / "run") == params_bytes(explicit)


def test_sigusr1_to_one_slurm_process_stops_both_at_one_step_and_the_requeued_command_ends_bitwise(explicit, tmp_path):
    workdir = tmp_path / "run"
    # Delayed saves pace the run so that the signal lands mid-run (a save waits for the one before).
    processes = start_two(workdir, slurm_env, {checkpoint.SAVE_DELAY_ENV: "0.3"})
    deadline = time.monotonic() + 240
    while not committed_steps(workdir):
        assert processes[1].poll() is None and time.monotonic() < deadline, "the run ended before the signal"
        time.sleep(0.02)
    processes[1].send_signal(signal.SIGUSR1)
    errors = finish(processes)
    stopped = [[line for line in e.splitlines() if "stopped after step" in line] for e in errors]
    assert all(len(lines) == 1 for lines in stopped), errors
    assert stopped[1][0].startswith("jaxcnn: SIGUSR1: stopped after step ")  # the one signalled
    assert stopped[0][0].startswith("jaxcnn: a stop signal to another process: stopped after step ")
    step = int(stopped[1][0].split("stopped after step ")[1].split(";")[0])
    assert f"stopped after step {step};" in stopped[0][0]  # both saved the same step
    assert not (workdir / "summary.json").exists() and committed_steps(workdir)[-1] == step < 60

    finish(start_two(workdir, slurm_env))  # the requeued job: the same command again
    assert final_test_loss(workdir) == final_test_loss(explicit)
    assert params_bytes(workdir) == params_bytes(explicit)
    assert records(workdir) == records(explicit)


def test_jax_reads_the_slurm_and_open_mpi_variables_as_jaxcnn_expects(monkeypatch):
    """The installed JAX's own detection (jax/_src/clusters): the coordinator from the node list or
    the launcher URI with JAX_COORDINATOR_PORT, one GPU per process by local rank unless
    `--local-devices all` (an empty list) keeps them all."""
    from jax._src import clusters

    for env, launcher in ((slurm_env(1, 1234), "SLURM"), (ompi_env(1, 1234), "Open MPI")):
        with monkeypatch.context() as m:
            for name in [*cluster.SLURM_VARS, "OMPI_MCA_orte_hnp_uri", "KUBERNETES_SERVICE_HOST"]:
                m.delenv(name, raising=False)
            for name, value in env.items():
                m.setenv(name, value)
            assert cluster.detect_launcher() == launcher
            detect = clusters.ClusterEnv.auto_detect_unset_distributed_params
            assert detect(None, None, None, None, None, 60) == ("127.0.0.1:1234", 2, 1, [1])
            assert detect(None, None, None, cluster.parse_local_devices("all"), None, 60)[3] == []


@pytest.mark.parametrize("env,message", [
    ({"SLURM_JOB_ID": "7"}, "SLURM job 7 detected, but SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, "
                            "SLURM_LOCALID are not set: start every process with srun"),
    ({**slurm_env(2, 1234)}, "SLURM_PROCID=2 is not a process of SLURM_NTASKS=2"),
    ({**slurm_env(0, 1234), "SLURM_NTASKS": "two"}, "SLURM_NTASKS='two' is not a number"),
    ({**slurm_env(0, 1234), "JAX_COORDINATOR_PORT": "99999"}, "JAX_COORDINATOR_PORT must be a port number"),
    ({**ompi_env(0, 1234), "OMPI_MCA_orte_hnp_uri": "15.0;nowhere"}, "has no tcp:// address"),
    ({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, "needs the `kubernetes` package to find the other pods: "
                                              "pip install 'jaxcnn\\[k8s\\]'"),
    ({}, "--distributed found no cluster to join"),
])
def test_a_cluster_that_cannot_be_joined_is_one_line_before_jax_tries(monkeypatch, env, message):
    for name in [*cluster.SLURM_VARS, *cluster.OMPI_VARS, "OMPI_MCA_orte_hnp_uri", "KUBERNETES_SERVICE_HOST",
                 "JAX_COORDINATOR_PORT", "JAX_COORDINATOR_ADDRESS"]:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if "KUBERNETES_SERVICE_HOST" in env and cluster.importlib.util.find_spec("kubernetes"):
        pytest.skip("the kubernetes package is installed here")
    with pytest.raises(JaxcnnError, match=message):
        distributed.initialize_distributed(auto_detect=True, timeout_s=5)


def test_local_devices_is_all_or_gpu_indices():
    assert cluster.parse_local_devices(None) is None
    assert cluster.parse_local_devices("all") == []
    assert cluster.parse_local_devices("0,2") == [0, 2]
    for bad in ("one", "0,0", "1,", "-1"):
        with pytest.raises(JaxcnnError, match="--local-devices must be `all` or distinct GPU indices"):
            cluster.parse_local_devices(bad)


def test_a_process_driving_fewer_gpus_than_its_node_shows_says_so_in_one_line():
    assert cluster.fewer_devices_line(0, 4, 4, 1) is None
    assert cluster.fewer_devices_line(0, 1, None, None) is None  # no NVIDIA GPU
    assert cluster.fewer_devices_line(3, 1, 4, 4) == (
        "jaxcnn: process 3 drives 1 of this node's 4 visible GPUs (4 processes per node, one GPU each)")
    assert cluster.fewer_devices_line(1, 1, 4, None).endswith("for one process per node driving them all, "
                                                               "pass --local-devices all")
    assert cluster.visible_gpus({"CUDA_VISIBLE_DEVICES": "0,1,2"}) == 3
    assert cluster.local_processes({"SLURM_NTASKS_PER_NODE": "4(x2)"}) == 4


def test_the_requeue_signal_is_sigusr1_unless_the_environment_names_another_or_none():
    assert stop.requeue_signal({}) == signal.SIGUSR1
    assert stop.requeue_signal({stop.REQUEUE_SIGNAL_ENV: "usr2"}) == signal.SIGUSR2
    assert stop.requeue_signal({stop.REQUEUE_SIGNAL_ENV: "none"}) is None
    assert stop.requeue_signal({stop.REQUEUE_SIGNAL_ENV: "SIGKILL"}) is None
    assert signal.SIGUSR1 in stop.stop_signals() or os.environ.get(stop.REQUEUE_SIGNAL_ENV)


def test_a_slurm_process_whose_coordinator_is_unreachable_is_one_line_and_exit_2(tmp_path):
    """JAX's client aborts the process (SIGABRT) on an unreachable coordinator; the probe at the
    address JAX detects from SLURM's variables says so in one line first."""
    env = {**device_env(1), **slurm_env(1, free_port())}
    result = subprocess.run([sys.executable, "-m", "jaxcnn.cli", "train", "--distributed", "--workdir",
                             str(tmp_path / "w"), "--init-timeout", "2"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "could not be reached within 2 s" in result.stderr
