"""The files jaxcnn writes: strict JSON (non-finite numbers as null), atomic whole-file writes, and
the checks that refuse, before any work, a workdir or output file that could not be written."""

import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.files import writers
from jaxcnn.config import config_to_json, load_config
from jaxcnn.errors import JaxcnnError
from jaxcnn.files.writers import (MetricsWriter, check_output_file, check_output_paths, check_writable, read_jsonl,
                            to_builtin, write_json, write_text_atomic)


def strict_loads(text):
    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_are_written_as_null_in_metrics_jsonl(tmp_path):
    writer = MetricsWriter(tmp_path)
    writer.write({"event": "train", "step": 1, "loss": float("nan"), "accuracy": np.float32(np.inf),
                  "learning_rate": jnp.asarray(-jnp.inf), "per_class": np.array([0.5, np.nan])})
    writer.close()
    [record] = [strict_loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert record == {"event": "train", "step": 1, "loss": None, "accuracy": None, "learning_rate": None,
                      "per_class": [0.5, None]}


def test_write_json_writes_strict_json_with_null_for_non_finite_numbers(tmp_path):
    write_json(tmp_path / "summary.json", {"test_loss": np.float64(np.nan), "nested": {"x": [1.0, -math.inf]}})
    assert strict_loads((tmp_path / "summary.json").read_text()) == {"test_loss": None, "nested": {"x": [1.0, None]}}


def test_tensorboard_conversion_keeps_non_finite_numbers():
    assert math.isnan(to_builtin({"loss": np.float32(np.nan)}, finite=False)["loss"])
    assert to_builtin({"loss": np.float32(np.nan)}) == {"loss": None}


def test_config_json_written_through_write_json_is_the_same_text_as_config_to_json(tmp_path):
    config = load_config("digits_cnn")
    write_json(tmp_path / "config.json", config.to_dict())
    assert (tmp_path / "config.json").read_text() == config_to_json(config) + "\n"


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old\n")

    def disk_full(path):
        path.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(JaxcnnError, match="cannot write '.*summary.json': No space left on device"):
        writers._replace_atomically(target, disk_full)
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["summary.json"]


def test_write_text_atomic_onto_a_folder_is_one_line_and_leaves_no_temporary_file(tmp_path):
    (tmp_path / "config.json").mkdir()
    with pytest.raises(JaxcnnError, match="cannot write '.*config.json'"):
        write_text_atomic(tmp_path / "config.json", "{}\n")
    assert os.listdir(tmp_path) == ["config.json"]


def test_atomic_writes_replace_the_file_and_leave_nothing_else(tmp_path):
    write_text_atomic(tmp_path / "config.json", "{}\n")
    write_text_atomic(tmp_path / "config.json", '{"a": 1}\n')
    assert (tmp_path / "config.json").read_text() == '{"a": 1}\n' and os.listdir(tmp_path) == ["config.json"]


@pytest.mark.parametrize("name, make, expected", [
    ("config.json", "folder", "is a folder, but jaxcnn writes the resolved config to a file there"),
    ("metrics.jsonl", "folder", "is a folder, but jaxcnn writes the metrics records to a file there"),
    ("summary.json", "folder", "is a folder, but jaxcnn writes the run's summary to a file there"),
    ("predictions.npz", "folder", "is a folder, but jaxcnn writes the test predictions to a file there"),
    ("checkpoints", "file", "is a file, but jaxcnn writes the checkpoints into a folder there"),
    ("events", "file", "is a file, but jaxcnn writes the TensorBoard event files into a folder there"),
])
def test_an_output_path_in_the_way_is_refused_in_one_line_naming_it(tmp_path, name, make, expected):
    path = tmp_path / name
    path.mkdir() if make == "folder" else path.write_text("x")
    with pytest.raises(JaxcnnError) as error:
        check_output_paths(tmp_path)
    message = str(error.value)
    assert f"'{path}' {expected}" in message and "\n" not in message


def test_a_workdir_that_is_a_file_is_refused_by_the_output_check(tmp_path):
    (tmp_path / "run").write_text("x")
    with pytest.raises(JaxcnnError, match="workdir '.*run' is a file, expected a folder"):
        check_output_paths(tmp_path / "run")


def test_a_missing_or_finished_workdir_passes_the_output_check(tmp_path):
    check_output_paths(tmp_path / "new")
    for name in ("config.json", "metrics.jsonl", "summary.json", "predictions.npz"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "checkpoints").mkdir()
    check_output_paths(tmp_path)


def test_check_writable_creates_nothing_for_a_new_workdir(tmp_path):
    check_writable(tmp_path / "runs" / "new")
    check_writable(tmp_path)
    assert os.listdir(tmp_path) == []


def test_an_unwritable_workdir_is_one_line_naming_the_folder_and_the_os_error(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(writers.os, "open", refuse)
    with pytest.raises(JaxcnnError, match=f"workdir '{tmp_path}' is not writable: Permission denied"):
        check_writable(tmp_path)
    with pytest.raises(JaxcnnError, match=f"it would be created in '{tmp_path}'\\): Permission denied"):
        check_writable(tmp_path / "new" / "run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders: the test above injects the error")
def test_a_read_only_workdir_is_refused(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(JaxcnnError, match="is not writable: Permission denied"):
            check_writable(tmp_path)
    finally:
        tmp_path.chmod(0o700)


def test_a_workdir_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(JaxcnnError, match="cannot be created: '.*file' is a file"):
        check_writable(tmp_path / "file" / "run")


def test_check_output_file_refuses_a_missing_folder_a_folder_and_an_unwritable_folder(tmp_path, monkeypatch):
    check_output_file(tmp_path / "bench.json", "--json")
    assert os.listdir(tmp_path) == []
    with pytest.raises(JaxcnnError, match="is not an existing folder"):
        check_output_file(tmp_path / "missing" / "bench.json", "--json")
    (tmp_path / "out").mkdir()
    with pytest.raises(JaxcnnError, match="--json '.*out' is a folder"):
        check_output_file(tmp_path / "out", "--json")
    monkeypatch.setattr(writers.os, "open", lambda *a, **k: (_ for _ in ()).throw(OSError(30, "Read-only file system")))
    with pytest.raises(JaxcnnError, match="cannot write in '.*': Read-only file system"):
        check_output_file(tmp_path / "bench.json", "--json")


def test_read_jsonl_names_the_line_a_check_refuses(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"a": 1}\n\n{"a": 2}\n')
    assert read_jsonl(tmp_path / "m.jsonl") == [{"a": 1}, {"a": 2}]
    with pytest.raises(JaxcnnError, match="line 3: a is 2"):
        read_jsonl(tmp_path / "m.jsonl", check=lambda r: f"a is {r['a']}" if r["a"] == 2 else None)
