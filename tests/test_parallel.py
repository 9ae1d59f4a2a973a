"""Data-parallel strategies: none, pmap and sharded agree; padded evaluation across devices; several
processes; clear errors. Multi-device runs happen in subprocesses (tests/parallel_worker.py), each
with its own simulated CPU device count, since the count must be set before JAX starts."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO
from jaxcnn import losses, models, optim, parallel
from jaxcnn.config import load_config
from jaxcnn.errors import JaxcnnError
from jaxcnn.state import create_train_state

WORKER = str(REPO / "tests" / "parallel_worker.py")


def device_env(num_devices: int) -> dict[str, str]:
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(num_devices), "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("XLA_FLAGS", None)
    return env


def worker(num_devices: int, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, WORKER, *args], env=device_env(num_devices), cwd=REPO,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def load_npz(path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def max_abs_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Final variables after 20 steps, keyed "<model>-<strategy>-<devices>", for an MLP and a BN CNN.
    `none` uses one device whatever the count, so it runs in the 2-device process."""
    out = tmp_path_factory.mktemp("parallel")
    runs = {2: ["none", "pmap", "sharded"], 4: ["pmap", "sharded"]}
    variables = {}
    for devices, strategies in runs.items():
        folder = out / str(devices)
        folder.mkdir()
        worker(devices, "train", str(folder), *strategies)
        for model in ("mlp", "bn_cnn"):
            for strategy in strategies:
                key = f"{model}-{strategy}-{1 if strategy == 'none' else devices}"
                variables[key] = load_npz(folder / f"{model}-{strategy}.npz")
    return variables


@pytest.mark.parametrize("model", ["mlp", "bn_cnn"])
@pytest.mark.parametrize("run", ["pmap-2", "sharded-2", "pmap-4", "sharded-4"])
def test_multi_device_parameters_match_one_device_after_20_steps(trained, model, run):
    reference = trained[f"{model}-none-1"]
    result = trained[f"{model}-{run}"]
    difference = max_abs_difference(reference, result)
    print(f"{model} {run} vs none: max abs difference {difference:.2e}")
    assert difference < 1e-5
    if model == "bn_cnn":  # the BatchNorm statistics span the global batch under every strategy
        assert any("batch_stats" in key for key in result)


def test_twenty_steps_change_the_parameters(trained):
    """Guards the comparison above: equal results must not come from parameters that never moved."""
    model = models.create_model("mlp", 10, hidden=(32,))
    tx = optim.create_optimizer(optim.default_optimizer_config(), optim.default_schedule_config(), 1, 1)
    initial = create_train_state(model, tx, losses.make_classification_loss("cross_entropy", 10),
                                 (8, 8, 1), seed=0).params["Dense_0"]["kernel"]
    trained_kernel = trained["mlp-none-1"]["['params']['Dense_0']['kernel']"]
    assert float(np.max(np.abs(trained_kernel - np.asarray(initial)))) > 1e-3


def test_eval_of_10001_examples_on_4_devices_counts_each_once_with_the_one_device_accuracy():
    results = json.loads(worker(4, "eval").stdout.strip().splitlines()[-1])
    assert set(results) == {"none-1", "pmap-4", "sharded-4"}
    for name in ("pmap-4", "sharded-4"):
        assert results[name]["count"] == 10_001
        assert results[name]["accuracy"] == results["none-1"]["accuracy"]
        assert results[name]["loss"] == pytest.approx(results["none-1"]["loss"], rel=1e-6)
    assert results["none-1"]["count"] == 10_001


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_like_one_process_with_two_devices_and_only_process_0_writes(tmp_path, trained):
    address = f"127.0.0.1:{free_port()}"
    processes = [subprocess.Popen([sys.executable, WORKER, "distributed", str(tmp_path), address, "2", str(i)],
                                  env=device_env(1), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for i in range(2)]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
    reference = trained["bn_cnn-sharded-2"]
    for i in range(2):
        assert max_abs_difference(reference, load_npz(tmp_path / f"process-{i}.npz")) < 1e-5
    assert (tmp_path / "run-0" / "metrics.jsonl").exists()
    assert (tmp_path / "run-0" / "summary.json").exists()
    assert not (tmp_path / "run-1").exists()
    summary = json.loads((tmp_path / "run-0" / "summary.json").read_text())
    assert summary["parallel"] == "sharded" and summary["num_devices"] == 2
    assert summary["test_examples"] == 100  # global metrics: every test example, once


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
        parallel.initialize_distributed(num_processes=2)
    with pytest.raises(JaxcnnError, match="--coordinator must be HOST:PORT"):
        parallel.initialize_distributed("localhost", 2, 0)


def test_no_flags_means_one_process():
    assert parallel.initialize_distributed() is False


def test_unknown_strategy_lists_the_known_ones():
    with pytest.raises(JaxcnnError, match="expected one of: auto, none, pmap, sharded"):
        load_config("digits_cnn", ["parallel=dp"])


def test_auto_is_none_on_one_device():
    assert parallel.resolve("auto") == "none"
    assert parallel.create_strategy("auto").num_devices == 1


@pytest.mark.parametrize("requested, examples, devices, expected",
                         [(1000, 10_001, 4, 1000), (1000, 10_001, 3, 1002), (1000, 5, 4, 8), (7, 100, 1, 7)])
def test_eval_batch_is_a_multiple_of_the_devices(requested, examples, devices, expected):
    strategy = parallel.Strategy(jax.devices()[:1] * devices)  # only the count matters here
    assert strategy.eval_batch_size(requested, examples) == expected


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
        evaluated = json.loads(cli(devices, "eval", "--workdir", str(tmp_path / "w"), "--json").stdout)
        assert evaluated["test_accuracy"] == summary["test_accuracy"]
