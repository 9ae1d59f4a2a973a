"""What a feed hands each compiled call (`executor.gather`), and how calls cover a split: shared by
the feeds (`jaxcnn.data.feed`, `jaxcnn.data.grain_feed`, `jaxcnn.data.members`)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxcnn.data.device import eval_order

# A call's inputs (see `executor.gather`) and its first batch index.
TrainCall = tuple[dict[str, Any], jax.Array]
EvalCall = tuple[dict[str, Any], jax.Array, int]


def chunks(total: int, size: int) -> list[tuple[int, int]]:
    """(start, count) of consecutive pieces of `size` covering `total`; the last may be shorter."""
    return [(start, min(size, total - start)) for start in range(0, total, size)]


def eval_batches(num_examples: int, batch_size: int, max_batches: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`eval_order`, cut to its first `max_batches` batches when that is > 0."""
    order, mask = eval_order(num_examples, batch_size)
    return (order[:max_batches], mask[:max_batches]) if max_batches > 0 else (order, mask)
