"""A run of members on several devices, with the host feed, and on two processes: the same loop
as a single run, so members go wherever a single run goes. Each member must end where the same
run of members on one device ends (multi-device runs happen in subprocesses, tests/parallel_worker.py)."""

import json

import jax
import numpy as np
import pytest

from jaxcnn.commands.saved import load_saved_model
from jaxcnn.files.writers import read_jsonl
from test_parallel import two_processes, worker

REFERENCE = "mlp-none-1-device-members-val"


def member_variables(workdir, member: int) -> dict[str, np.ndarray]:
    state = load_saved_model(workdir, "latest", member).state
    tree = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def largest_member_difference(a, b) -> float:
    return max(float(np.max(np.abs(x - y))) for m in range(4)
               for x, y in zip(member_variables(a, m).values(), member_variables(b, m).values()))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("one-device")
    worker(1, "train", str(out), REFERENCE)
    return out / REFERENCE


@pytest.mark.parametrize("num_devices, cells", [
    (2, ["mlp-sharded-1-device-members-val", "mlp-pmap-5-host-members-val"]),
    (4, ["mlp-sharded-5-host-members-val", "bn_cnn-pmap-1-device-members-val"]),
])
def test_members_on_several_devices_end_where_they_end_on_one(num_devices, cells, reference, tmp_path):
    bn_reference = REFERENCE.replace("mlp", "bn_cnn")  # parallel=none: one device of the same process
    worker(num_devices, "train", str(tmp_path), *cells, *([bn_reference] if num_devices == 4 else []))
    for cell in cells:
        workdir = tmp_path / cell
        expected = reference if cell.startswith("mlp") else tmp_path / bn_reference
        assert largest_member_difference(workdir, expected) < 1e-5, cell
        records = read_jsonl(workdir / "metrics.jsonl")
        assert {r["member"] for r in records if r["event"] == "test"} == {0, 1, 2, 3}
        assert all((workdir / "members" / str(m) / "predictions.npz").is_file() for m in range(4))
        assert len(json.loads((workdir / "certificate.json").read_text())["members"]) == 4


def test_members_on_two_processes_end_where_they_end_on_one_device(reference, tmp_path):
    cell = "mlp-sharded-1-host-members-val"
    two_processes(str(tmp_path), cell)
    assert largest_member_difference(tmp_path / cell, reference) < 1e-5


def test_a_member_alone_on_its_device_is_bitwise_its_single_run(tmp_path):
    """4 members on 4 devices: each device trains its one member as the single run's program (no
    cross-device traffic), so member 0 (seed 0) ends bitwise where the single run of seed 0 ends.
    (The synthetic data is drawn from the run's seed, so only member 0 shares its single run's data.)"""
    worker(4, "train", str(tmp_path), "tiny-sharded-1-device-members")
    worker(1, "train", str(tmp_path), "tiny-none-1-device")
    mine = member_variables(tmp_path / "tiny-sharded-1-device-members", 0)
    single = load_saved_model(tmp_path / "tiny-none-1-device", "latest").state
    theirs = jax.device_get({"params": single.params, "batch_stats": single.batch_stats})
    assert all(np.array_equal(a, b) for a, b in zip(mine.values(), jax.tree.leaves(theirs)))
