"""Run certificates, `jaxcnn verify` and the determinism switch."""

import json
import os
import shutil
import subprocess
import sys

import jax
import pytest

from conftest import REPO
from jaxcnn import cli
from jaxcnn.runtime import determinism
from jaxcnn.files.certificate import CERTIFICATE_FILE, metrics_sha256
from jaxcnn.config import load_config
from jaxcnn.errors import JaxcnnError
from jaxcnn.training.loop import train_and_evaluate
from jaxcnn.commands.ulps import max_ulps
from jaxcnn.commands.verify import verify

# 7 steps per epoch (460 training examples, batch 64), a record every 2 steps, a checkpoint per epoch.
TINY = ["dataset.name=synthetic", "dataset.image_shape=(8, 8, 1)", "dataset.num_train=512", "dataset.num_test=64",
        "model.name=mlp", "model.hidden=(16,)", "num_epochs=2", "log_every_steps=2", "batch_size=64",
        "schedule.name=constant", "optimizer.learning_rate=0.01"]


def env(**extra):
    values = {**os.environ, "JAX_PLATFORMS": "cpu", **extra,
              "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    values.pop("XLA_FLAGS", None)
    return values


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny finished run, copied by the tests that change it."""
    workdir = tmp_path_factory.mktemp("verify") / "run"
    train_and_evaluate(load_config("digits_cnn", TINY), workdir, quiet=True)
    return workdir


def copy_of(finished, tmp_path):
    return shutil.copytree(finished, tmp_path / "copy")


def run_verify(workdir, steps=None):
    said, warned = [], []
    status = verify(workdir, steps, say=said.append, warn=warned.append)
    return status, said, warned


def test_a_run_writes_a_certificate_of_its_parameters_metrics_and_environment(finished):
    cert = json.loads((finished / CERTIFICATE_FILE).read_text())
    assert cert["metrics_sha256"] == metrics_sha256(finished / "metrics.jsonl")
    assert len(cert["params_sha256"]) == 64 and cert["best_params_sha256"] is None
    assert cert["versions"]["jax"] == jax.__version__ and cert["versions"]["numpy"]
    assert (cert["backend"], cert["device_count"], cert["process_count"]) == ("cpu", 1, 1)
    assert cert["compiler_options"] and cert["prng_impl"] == "threefry2x32" and cert["steps"] == 14
    assert cert["deterministic"] is False and "xla_flags" in cert


def test_a_run_verifies_bitwise_on_cpu(finished):
    status, said, warned = run_verify(finished)
    assert status == 0 and said[-1] == "bitwise", said
    assert warned == [] and any("identical" in line for line in said)


def test_an_altered_certificate_and_metrics_file_report_the_differences(finished, tmp_path):
    workdir = copy_of(finished, tmp_path)
    cert = json.loads((workdir / CERTIFICATE_FILE).read_text())
    cert.update(params_sha256="0" * 64, device_kind="TPU v9", xla_flags="--xla_gpu_deterministic_ops=true")
    cert["versions"]["jax"] = "0.0.1"
    (workdir / CERTIFICATE_FILE).write_text(json.dumps(cert))
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    record = json.loads(lines[2])
    record["loss"] += 1e-6
    lines[2] = json.dumps(record)
    (workdir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    status, said, warned = run_verify(workdir)
    assert status == 1 and said[-1] == "differs"
    assert any("checkpoints are identical" in line for line in said), said
    assert any("first difference at record 3 (event train, epoch 1, step 6): loss" in line for line in said), said
    assert {"jax", "device_kind", "xla_flags", "metrics.jsonl"} == {line.split()[0] for line in warned}, warned


def test_a_run_without_certificate_is_checked_through_its_checkpoints_and_metrics(finished, tmp_path):
    workdir = copy_of(finished, tmp_path)
    (workdir / CERTIFICATE_FILE).unlink()
    status, said, warned = run_verify(workdir)
    assert status == 0 and said[-1] == "bitwise"
    assert len(warned) == 1 and "no certificate.json" in warned[0] and "unknown" in warned[0]
    assert any(line.startswith("parameters, final: identical") for line in said), said


def test_verify_steps_re_runs_the_first_steps_and_compares_them(finished):
    status, said, _ = run_verify(finished, steps=7)  # the first epoch's end: a record and a checkpoint
    assert status == 0 and "first 7 steps" in said[0]
    assert any(line.startswith("parameters, step 7: identical") for line in said), said


def test_verify_on_two_devices_warns_and_reports_the_difference(finished):
    result = subprocess.run([sys.executable, "-m", "jaxcnn.cli", "verify", str(finished)], cwd=REPO,
                            env=env(JAX_NUM_CPU_DEVICES="2"), capture_output=True, text=True, timeout=300)
    assert "warning: device_count 1 in the certificate, 2 here" in result.stderr, result.stderr[-2000:]
    assert result.returncode == 1 and result.stdout.splitlines()[-1] == "differs", result.stdout
    assert "ulps" in result.stdout


@pytest.mark.parametrize("args, expected", [
    (["missing-dir"], "is not a folder"),
    (["{w}", "--steps", "0"], "--steps must be between 1 and the 14 steps"),
    (["{w}", "--steps", "15"], "--steps must be between 1 and the 14 steps"),
    (["{w}", "--steps", "1"], "nothing to compare"),
    (["{empty}"], "has no config.json"),
])
def test_bad_verify_inputs_are_one_line_and_exit_2(finished, tmp_path, capsys, args, expected):
    (tmp_path / "empty").mkdir()
    argv = ["verify", *[a.format(w=finished, empty=tmp_path / "empty") for a in args]]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err


def test_a_certificate_that_is_not_json_is_one_line(finished, tmp_path, capsys):
    workdir = copy_of(finished, tmp_path)
    (workdir / CERTIFICATE_FILE).write_text("{not json")
    assert cli.main(["verify", str(workdir)]) == 2
    assert "cannot be read as JSON" in capsys.readouterr().err


def test_ulps_count_the_floats_between_two_values():
    import numpy as np

    one = np.float32(1.0)
    assert max_ulps(np.array([one]), np.array([np.nextafter(one, np.float32(2))])) == 1
    assert max_ulps(np.array([-one]), np.array([np.nextafter(-one, np.float32(0))])) == 1
    assert max_ulps(np.array([0.0], np.float32), np.array([-0.0], np.float32)) == 1
    assert max_ulps(np.array([1.5, 2.0], np.float64), np.array([1.5, 2.0], np.float64)) == 0


# ---------------------------------------------------------------------------- the determinism switch


def test_jaxcnn_train_sets_the_deterministic_flag_before_the_backend_starts():
    code = ("import os, jax; from jaxcnn import cli; from jax._src import xla_bridge; "
            "assert cli.main(['train', '--show-config', '--config.deterministic=true']) == 0; "
            "started = xla_bridge.backends_are_initialized(); jax.numpy.ones(2).block_until_ready(); "
            "print(started, os.environ['XLA_FLAGS'])")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "True --xla_gpu_deterministic_ops=true"


def test_deterministic_after_a_cpu_backend_started_is_a_recorded_no_op(monkeypatch):
    jax.numpy.zeros(1).block_until_ready()
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    config = load_config("digits_cnn", TINY + ["deterministic=true"])
    assert determinism.apply(config) is False and "XLA_FLAGS" not in os.environ
    assert determinism.record(config) | {"prng_impl": None} == {
        "deterministic": True, "deterministic_ops_flag": False, "xla_flags": "", "prng_impl": None,
        "threefry_partitionable": True, "default_matmul_precision": None}


def test_deterministic_after_a_gpu_backend_started_without_the_flag_is_refused(monkeypatch):
    jax.numpy.zeros(1).block_until_ready()
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    with pytest.raises(JaxcnnError, match="backend already started without --xla_gpu_deterministic_ops"):
        determinism.apply(True)
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=true")
    assert determinism.apply(True) is True


def test_deterministic_with_the_flag_set_to_false_is_refused(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=false")
    with pytest.raises(JaxcnnError, match="XLA_FLAGS sets --xla_gpu_deterministic_ops=false"):
        determinism.apply(True)
    assert determinism.apply(False) is False
