"""Every way of running a step composes: parallel {none, pmap, sharded} × steps_per_call {1, 5} ×
input {device, host} × processes {1, 2} all train to the single-device per-step parameters; several
processes checkpoint together, stop together, and resume on any topology.

Multi-device runs happen in subprocesses (tests/parallel_worker.py), each with its own simulated
CPU device count, since the count must be set before JAX starts."""

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO
from jaxcnn.core import executor
from jaxcnn.runtime import distributed
from jaxcnn.config import load_config
from jaxcnn.errors import JaxcnnError
from jaxcnn.commands.saved import load_saved_model
from jaxcnn.files.writers import read_jsonl, without_timing

WORKER = str(REPO / "tests" / "parallel_worker.py")
GRID_1 = [f"mlp-{p}-{k}-{i}" for p, k, i in itertools.product(("none", "pmap", "sharded"), (1, 5), ("device", "host"))]
GRID_2 = [cell for cell in GRID_1 if not cell.startswith("mlp-none")]  # none is one device: refused below
REFERENCE = "mlp-none-1-device"


def device_env(num_devices: int) -> dict[str, str]:
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(num_devices), "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("XLA_FLAGS", None)
    return env


def worker(num_devices: int, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, WORKER, *args], env=device_env(num_devices), cwd=REPO,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_processes(*args: str, timeout: int = 600) -> list[str]:
    """Runs the worker as 2 processes of one device each; returns their stdouts."""
    address = f"127.0.0.1:{free_port()}"
    processes = [subprocess.Popen([sys.executable, WORKER, "distributed", address, "2", str(i), *args],
                                  env=device_env(1), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for i in range(2)]
    outputs = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=timeout)
        assert process.returncode == 0, stderr[-3000:]
        outputs.append(stdout)
    return outputs


def variables(workdir) -> dict[str, np.ndarray]:
    """The parameters and batch statistics of the run's last checkpoint, as flat numpy arrays."""
    state = load_saved_model(workdir, "latest").state
    tree = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def max_abs_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def records(workdir):
    return [without_timing(r) for r in read_jsonl(workdir / "metrics.jsonl")]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """Every cell trained for 20 steps: on one process with 2 devices, and on 2 processes."""
    out = tmp_path_factory.mktemp("grid")
    worker(2, "train", str(out / "p1"), *GRID_1, "bn_cnn-none-1-device", "bn_cnn-pmap-1-device",
           "bn_cnn-sharded-5-host")
    two_processes(str(out / "p2"), *GRID_2)
    return out


@pytest.mark.parametrize("processes,cell", [(1, c) for c in GRID_1] + [(2, c) for c in GRID_2])
def test_every_cell_of_the_grid_trains_to_the_single_device_per_step_parameters(grid, processes, cell):
    reference = variables(grid / "p1" / REFERENCE)
    result = variables(grid / f"p{processes}" / cell)
    difference = max_abs_difference(reference, result)
    print(f"{processes} process(es), {cell}: max abs difference {difference:.2e}")
    assert difference < 1e-6
    summary = json.loads((grid / f"p{processes}" / cell / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["test_examples"] == 100
    assert summary["num_devices"] == (1 if "-none-" in cell else 2)
    assert summary["input"] == cell.split("-")[-1]


@pytest.mark.parametrize("cell", ["bn_cnn-pmap-1-device", "bn_cnn-sharded-5-host"])
def test_batch_norm_statistics_span_the_global_batch_under_every_strategy(grid, cell):
    reference = variables(grid / "p1" / "bn_cnn-none-1-device")
    result = variables(grid / "p1" / cell)
    assert any("batch_stats" in key for key in result)
    assert max_abs_difference(reference, result) < 1e-5


def test_twenty_steps_change_the_parameters(grid):
    """Guards the comparisons above: equal results must not come from parameters that never moved."""
    trained = variables(grid / "p1" / REFERENCE)
    config = load_config("digits_cnn", ["model.name=mlp", "model.hidden=(32,)"])
    from jaxcnn.core.build import build

    initial = build(config, 10, 20).init_state(config, (8, 8, 1)).params["Dense_0"]["kernel"]
    assert float(np.max(np.abs(trained["['params']['Dense_0']['kernel']"] - np.asarray(initial)))) > 1e-3


def test_two_processes_write_one_workdir_and_global_metrics(grid):
    workdir = grid / "p2" / "mlp-sharded-5-host"
    assert records(workdir) == records(grid / "p2" / "mlp-sharded-1-device")
    assert [r["step"] for r in read_jsonl(workdir / "metrics.jsonl") if r["event"] == "train"] == [5, 10, 15, 20]
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["20"]


def test_eval_of_10001_examples_counts_each_once_with_the_one_device_accuracy_on_every_strategy_and_feed():
    results = json.loads(worker(4, "eval").stdout.strip().splitlines()[-1])
    assert set(results) == {f"{p}-{n}-{i}" for p, n in (("none", 1), ("pmap", 4), ("sharded", 4))
                            for i in ("device", "host")}
    reference = results["none-1-device"]
    for result in results.values():
        assert result["count"] == 10_001
        assert result["accuracy"] == reference["accuracy"]
        assert result["loss"] == pytest.approx(reference["loss"], rel=1e-6)


# ---------------------------------------------------------------------------- stop and resume


@pytest.fixture(scope="module")
def stopped_runs(tmp_path_factory):
    """A straight 2-process run of 100 steps, and the same run stopped by SIGTERM to process 1
    after step 30 (kept aside, to be resumed in several ways); likewise on one device."""
    out = tmp_path_factory.mktemp("stops")
    two_processes(str(out / "straight"), "mlp-auto-1-device-long")
    two_processes(str(out / "stopped"), "mlp-auto-1-device-long-stop30")
    worker(1, "train", str(out / "straight1"), "mlp-auto-1-device-long")
    worker(1, "train", str(out / "stopped1"), "mlp-auto-1-device-long-stop30")
    return out


def resumable(stopped_runs, name, tmp_path):
    """A copy of a stopped run's workdir, renamed to the cell that resumes it (same config)."""
    copy = tmp_path / "mlp-auto-1-device-long"
    shutil.copytree(stopped_runs / name / "mlp-auto-1-device-long-stop30", copy)
    assert not (copy / "summary.json").exists()
    return copy


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step_and_resuming_is_bitwise(stopped_runs, tmp_path):
    workdir = resumable(stopped_runs, "stopped", tmp_path)
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 30  # both saved the step they agreed on (the next log step), and exited 0
    two_processes(str(tmp_path), "mlp-auto-1-device-long")
    straight = stopped_runs / "straight" / "mlp-auto-1-device-long"
    assert records(workdir) == records(straight)
    for got, want in zip(variables(workdir).values(), variables(straight).values()):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("devices", [2, 1])
def test_a_two_process_checkpoint_resumes_on_one_process(stopped_runs, tmp_path, devices):
    workdir = resumable(stopped_runs, "stopped", tmp_path)
    worker(devices, "train", str(tmp_path), "mlp-auto-1-device-long")
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == 100 and summary["num_devices"] == devices
    straight = variables(stopped_runs / "straight" / "mlp-auto-1-device-long")
    assert max_abs_difference(variables(workdir), straight) < 1e-6


def test_a_one_device_checkpoint_resumes_on_two_processes(stopped_runs, tmp_path):
    workdir = resumable(stopped_runs, "stopped1", tmp_path)
    two_processes(str(tmp_path), "mlp-auto-1-device-long")
    assert json.loads((workdir / "summary.json").read_text())["num_devices"] == 2
    straight = variables(stopped_runs / "straight1" / "mlp-auto-1-device-long")
    assert max_abs_difference(variables(workdir), straight) < 1e-6


def committed_steps(workdir) -> list[int]:
    folder = workdir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def test_kill_9_of_one_process_keeps_the_last_committed_save_and_the_resumed_run_is_bitwise(stopped_runs, tmp_path):
    """The other process then fails (its collective loses its peer) or is stopped; nothing saved is
    lost, and resuming from the last committed step ends like the uninterrupted run."""
    address, cell = f"127.0.0.1:{free_port()}", "mlp-auto-1-device-long"
    processes = [subprocess.Popen([sys.executable, WORKER, "distributed", address, "2", str(i), str(tmp_path), cell],
                                  env=device_env(1), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for i in range(2)]
    deadline = time.monotonic() + 300
    while not committed_steps(tmp_path / cell) and time.monotonic() < deadline:
        time.sleep(0.02)
    processes[1].kill()
    try:
        processes[0].wait(timeout=60)
    except subprocess.TimeoutExpired:
        processes[0].kill()
        processes[0].wait()
    assert processes[1].wait() == -9
    kept = committed_steps(tmp_path / cell)
    if (tmp_path / cell / "summary.json").exists():
        pytest.skip("the run finished before the kill landed")
    assert kept and kept[-1] >= 10
    two_processes(str(tmp_path), cell)
    straight = stopped_runs / "straight" / cell
    assert records(tmp_path / cell) == records(straight)
    for got, want in zip(variables(tmp_path / cell).values(), variables(straight).values()):
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------- bad input


def test_parallel_none_with_two_processes_is_one_line(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    processes = [subprocess.Popen([sys.executable, "-m", "jaxcnn.cli", "train", "--workdir", str(tmp_path / "w"),
                                   "--coordinator", address, "--num-processes", "2", "--process-id", str(i),
                                   "--init-timeout", "60", "--config.parallel=none"],
                                  env=device_env(1), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for i in range(2)]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 2, stderr
        # Gloo (JAX's CPU collectives) announces its connections itself; jaxcnn's own output is one line.
        lines = [line for line in stderr.strip().splitlines() if not line.startswith("[Gloo]")]
        assert len(lines) == 1 and "parallel=none uses one device, but 2 processes were started" in lines[0]


def test_global_batch_of_130_on_4_devices_fails_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jaxcnn.cli", "train", "--workdir", str(tmp_path / "w"),
                             "--config.batch_size=130"], env=device_env(4), cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "batch_size 130 is not divisible by the 4 devices" in lines[0]


def test_partial_multi_process_flags_fail_before_jax_starts():
    with pytest.raises(JaxcnnError, match="needs --coordinator, --num-processes and --process-id together; "
                                          "missing --coordinator, --process-id"):
        distributed.initialize_distributed(num_processes=2)
    with pytest.raises(JaxcnnError, match="--coordinator must be HOST:PORT"):
        distributed.initialize_distributed("localhost", 2, 0)


def test_no_flags_means_one_process():
    assert distributed.initialize_distributed() is False


def test_unknown_strategy_lists_the_known_ones():
    with pytest.raises(JaxcnnError, match="expected one of: auto, none, pmap, sharded"):
        load_config("digits_cnn", ["parallel=dp"])


def test_auto_is_none_on_one_device():
    assert executor.resolve("auto") == "none"
    assert executor.Executor("auto").num_devices == 1


@pytest.mark.parametrize("requested, examples, devices, expected",
                         [(1000, 10_001, 4, 1000), (1000, 10_001, 3, 1002), (1000, 5, 4, 8), (7, 100, 1, 7)])
def test_eval_batch_is_a_multiple_of_the_devices(requested, examples, devices, expected):
    one = executor.Executor("none")
    one.devices = one.devices * devices  # only the count matters here
    assert one.eval_batch_size(requested, examples) == expected


def cli(num_devices: int, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "jaxcnn.cli", *args], env=device_env(num_devices), cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("saved_on, resumed_on", [(2, 1), (1, 2)])
def test_a_checkpoint_saved_on_one_device_count_resumes_and_evaluates_on_another(tmp_path, saved_on, resumed_on):
    run = ["train", "--workdir", str(tmp_path / "w"), "--quiet", "--config.model.name=mlp",
           "--config.schedule.name=constant", "--config.log_every_steps=10"]
    cli(saved_on, *run, "--config.num_epochs=1")
    (tmp_path / "w" / "summary.json").unlink()  # as if stopped after epoch 1
    cli(resumed_on, *run, "--config.num_epochs=2")
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["num_devices"] == resumed_on
    for devices in (1, 2):
        evaluated = json.loads(cli(devices, "eval", "--workdir", str(tmp_path / "w"), "--json", "-").stdout)
        assert evaluated["test_accuracy"] == summary["test_accuracy"]
