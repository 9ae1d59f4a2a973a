"""Host-fed input: the same training as on-device input, bit for bit; the automatic choice; prefetching."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from jaxcnn import models
from jaxcnn.core import losses, optim
from jaxcnn.config import config_from_json, load_config
from jaxcnn.data import Split, load_dataset
from jaxcnn.core.build import prepare_fn
from jaxcnn.data.feed import DeviceFeed, HostFeed, make_feeds
from jaxcnn.data.host import choose_input, prefetch
from jaxcnn.core.evaluation import evaluate
from jaxcnn.core.executor import Executor, gather
from jaxcnn.data.normalization import channel_stats
from jaxcnn.errors import JaxcnnError
from jaxcnn.training.loop import train_and_evaluate
from jaxcnn.core.state import create_train_state
from jaxcnn.files.writers import read_jsonl, without_timing
from test_augment import AUGMENTED

# Dropout and augmentation on, per-channel statistics measured: every source of step randomness
# and the recorded normalisation take part in the comparison.
RUN = AUGMENTED + ["model.dropout=0.2", "dataset.per_channel_stats=true"]


def test_host_fed_and_on_device_training_are_bitwise_identical(tmp_path):
    summaries = {mode: train_and_evaluate(load_config("digits_cnn", RUN + [f"dataset.input={mode}"]),
                                          tmp_path / mode, quiet=True) for mode in ("device", "host")}
    assert summaries["device"]["input"] == "device" and summaries["host"]["input"] == "host"
    records = {mode: [without_timing(r) for r in read_jsonl(tmp_path / mode / "metrics.jsonl")]
               for mode in summaries}
    assert records["device"] == records["host"] and len(records["host"]) > 4
    for key in ("test_loss", "test_accuracy", "best_val_loss"):
        assert summaries["device"][key] == summaries["host"][key]


def test_per_channel_statistics_are_measured_on_train_and_recorded(tmp_path):
    summary = train_and_evaluate(load_config("digits_cnn", RUN + ["num_epochs=1"]), tmp_path / "w", quiet=True)
    config = load_config("digits_cnn", RUN)
    train = load_dataset("synthetic", val_fraction=config.dataset.val_fraction, seed=config.seed,
                         image_shape=(8, 8, 3), num_train=256, num_test=64).train
    mean, std = channel_stats(train.images)
    recorded = config_from_json((tmp_path / "w" / "config.json").read_text())
    assert recorded.dataset.mean == mean and recorded.dataset.std == std and len(mean) == 3
    assert summary["normalization"] == {"mean": mean, "std": std}
    assert json.loads((tmp_path / "w" / "summary.json").read_text())["normalization"]["std"] == list(std)


def random_split(n: int) -> Split:
    rng = np.random.default_rng(0)
    return Split(rng.integers(0, 256, (n, 6, 6, 2), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32))


def test_host_fed_evaluation_equals_on_device_evaluation():
    split = random_split(203)
    model = models.create_model("mlp", 10, hidden=(8,))
    tx = optim.create_optimizer({**optim.default_optimizer_config(), "name": "sgd"},
                                optim.default_schedule_config(), 1, 1)
    state = create_train_state(model, tx, losses.make_classification_loss("cross_entropy", 10), (6, 6, 2), seed=0)
    executor = Executor("none")
    prepare = prepare_fn((0.5, 0.4), (0.2, 0.3))
    calls = executor.compile(prepare, prepare, "cross_entropy", 5)
    on_device = evaluate(calls, state, DeviceFeed(split, executor), batch_size=50)
    host_fed = evaluate(calls, state, HostFeed(split, executor), batch_size=50)
    assert host_fed == on_device and host_fed["count"] == 203


def test_host_batches_follow_the_on_device_order():
    split = random_split(100)
    executor = Executor("none")
    plan = [(0, 2), (2, 4)]
    device_calls = list(DeviceFeed(split, executor).train_calls(3, 2, 16, plan))
    host_calls = list(HostFeed(split, executor).train_calls(3, 2, 16, plan))
    assert len(host_calls) == len(device_calls) == 2
    for (position, n), (device_inputs, start), (host_inputs, host_start) in zip(plan, device_calls, host_calls):
        assert int(start) == position and int(host_start) == 0
        for j in range(n):
            expected = gather(device_inputs, position + j)
            got = gather(host_inputs, j)
            np.testing.assert_array_equal(got["image"], expected["image"])
            np.testing.assert_array_equal(got["label"], expected["label"])


def test_auto_input_picks_host_when_the_splits_exceed_the_budget():
    splits = (random_split(1000),)  # 72,000 + 4,000 bytes
    assert choose_input("auto", splits, budget_mb=0.05) == "host"
    assert choose_input("auto", splits, budget_mb=1.0) == "device"
    assert choose_input("host", splits, budget_mb=1.0) == "host"
    assert isinstance(make_feeds(splits, "auto", 0.05, Executor("none"))[0], HostFeed)
    with pytest.raises(JaxcnnError, match=r"\(dataset\.input\); expected one of: auto, device, grain, host"):
        choose_input("gpu", splits, 1.0)


def test_prefetch_raises_the_producers_error():
    def batches():
        yield (np.zeros(2),)
        raise RuntimeError("disk gone")

    stream = prefetch(batches(), lambda item: item, size=2)
    next(stream)
    with pytest.raises(RuntimeError, match="disk gone"):
        next(stream)


def test_closing_the_prefetcher_early_stops_its_thread():
    produced = []

    def batches():
        for i in range(1000):
            produced.append(i)
            yield (np.full(3, i),)

    before = threading.active_count()
    stream = prefetch(batches(), lambda item: item, size=2)
    assert int(next(stream)[0][0]) == 0
    stream.close()
    assert threading.active_count() == before and len(produced) < 10
