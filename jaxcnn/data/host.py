"""Host-fed input: choosing it (`dataset.input`), and the background thread that feeds it.

`choose_input`: "device", "host", or "auto" (host when the uint8 splits exceed
`dataset.device_budget_mb`). `prefetch` runs the gathering and placing of host batches in a thread
ahead of the calls (`jaxcnn.data.feed.HostFeed`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from jaxcnn.data.splits import Split
from jaxcnn.spec import INPUT_MODES, input_mode  # noqa: F401 (INPUT_MODES re-exported)

_END = object()


def prefetch(items: Iterable[Any], place: Callable[[Any], Any], size: int) -> Iterator[Any]:
    """Yields `place(item)` for each of `items`, produced by a thread `size` items ahead.

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
            for item in items:
                if not put(place(item)):
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
    """Raise unless `mode` is one of `INPUT_MODES` (the check of `DatasetSpec.input`)."""
    input_mode("dataset.input", mode)


def choose_input(mode: str, splits: tuple[Split, ...], budget_mb: float) -> str:
    """"device" or "host" for `mode` ("auto" compares the splits' size with `budget_mb`)."""
    check_input_mode(mode)
    if mode != "auto":
        return mode
    return "host" if split_bytes(*splits) > budget_mb * 2**20 else "device"
