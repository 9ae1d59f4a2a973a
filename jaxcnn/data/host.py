"""Host-fed input, for datasets larger than the device-memory budget.

The splits stay in host memory (or memory-mapped `.npy` files, as the TFDS cache is); each step's
batch is gathered on the host and copied to the device by a background thread that keeps
`prefetch` batches ahead, so the copy overlaps the previous steps. The epoch order is the same
(seed, epoch) permutation as on-device input uses, so both give bitwise-identical training.

`place_splits` chooses: `dataset.input` = "device", "host", or "auto" (host when the uint8 splits
exceed `dataset.device_budget_mb`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

import jax
import numpy as np

from jaxcnn.data.device import DeviceSplit, epoch_order, eval_order, put_on_device
from jaxcnn.data.splits import Split
from jaxcnn.errors import JaxcnnError

INPUT_MODES = ("auto", "device", "host")
_END = object()


class HostSplit:
    """A split kept on the host; its steps receive (images, labels[, mask]) already on the device."""

    def __init__(self, split: Split, prefetch: int = 2):
        self.images, self.labels = split.images, split.labels
        self.prefetch = prefetch

    def __len__(self) -> int:
        return len(self.labels)

    def train_inputs(self, seed: int, epoch: int, batch_size: int, start: int = 0) -> Iterator[tuple[jax.Array, ...]]:
        """(images, labels) for each training step of `epoch` from position `start`, in the on-device
        input's order."""
        order = np.asarray(epoch_order(seed, epoch, len(self), batch_size))
        return prefetch_to_device((self._gather(indices) for indices in order[start:]), self.prefetch)

    def eval_inputs(self, batch_size: int) -> Iterator[tuple[jax.Array, ...]]:
        """(images, labels, mask) for each evaluation step; every example once, the last batch padded."""
        order, mask = eval_order(len(self), min(batch_size, len(self)))
        return prefetch_to_device(((*self._gather(o), m) for o, m in zip(order, mask)), self.prefetch)

    @staticmethod
    def train_batch(images: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
        return {"image": images, "label": labels}

    @staticmethod
    def eval_batch(images: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
        return {"image": images, "label": labels, "mask": mask}

    def _gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Reading in ascending order is what a memory-mapped file likes; then restore the batch order.
        ascending = np.argsort(indices, kind="stable")
        images = np.empty((len(indices), *self.images.shape[1:]), np.uint8)
        images[ascending] = self.images[indices[ascending]]
        return images, self.labels[indices]


def prefetch_to_device(batches: Iterable[tuple[np.ndarray, ...]], size: int) -> Iterator[tuple[jax.Array, ...]]:
    """Yields `batches` with each array put on the device, produced by a thread `size` batches ahead.

    An exception in the producer is raised here; closing the iterator early stops the producer.
    """
    slots: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put(tuple(jax.device_put(a) for a in batch)):
                    return
            put(_END)
        except BaseException as e:  # handed to the consumer, which raises it
            put(e)

    thread = threading.Thread(target=produce, name="jaxcnn-prefetch", daemon=True)
    thread.start()
    try:
        while (item := slots.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def split_bytes(*splits: Split) -> int:
    return sum(s.images.nbytes + s.labels.nbytes for s in splits)


def check_input_mode(mode: object) -> None:
    if mode not in INPUT_MODES:
        raise JaxcnnError(f"dataset.input: expected one of {', '.join(INPUT_MODES)}, got {mode!r}; "
                          "auto puts the data on the device when it fits dataset.device_budget_mb")


def choose_input(mode: str, splits: tuple[Split, ...], budget_mb: float) -> str:
    """"device" or "host" for `mode` ("auto" compares the splits' size with `budget_mb`)."""
    check_input_mode(mode)
    if mode != "auto":
        return mode
    return "host" if split_bytes(*splits) > budget_mb * 2**20 else "device"


def place_splits(splits: tuple[Split, ...], mode: str, budget_mb: float) -> tuple[DeviceSplit | HostSplit, ...]:
    """The splits ready for the loop: all on the device, or all fed from the host (see `choose_input`)."""
    if choose_input(mode, splits, budget_mb) == "host":
        return tuple(HostSplit(s) for s in splits)
    return tuple(put_on_device(s) for s in splits)
