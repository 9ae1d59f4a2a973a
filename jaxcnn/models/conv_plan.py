"""A convolution plan: which implementation each convolution shape uses, in training and forward only.

`model.conv_impl="auto"` leaves the choice to the plan that `jaxcnn.core.autotune` measured on the
machine the run is on; the plan is a model attribute (`conv_plan`), a tuple of
`(signature, context, impl)` triples, so every trace of the model (the train, evaluate and predict
calls, exports) computes the same convolutions. A convolution the plan does not name (no plan:
another backend, a model built outside a run) takes `im2col.resolve_conv_impl`'s default.

The signature is the convolution's shape without the batch: spatial input size, channels,
features, kernel, strides, padding, dilation, groups and dtype. Data-parallel runs see the same
signature whether their trace is global (sharded jit) or per device (pmap, split members).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

TRAIN, FORWARD = "train", "forward"  # the contexts: differentiated, or only run forward
Plan = tuple[tuple[str, str, str], ...]  # (signature, context, impl)

_recording: contextvars.ContextVar[list | None] = contextvars.ContextVar("jaxcnn_conv_recording", default=None)


def signature(shape: Sequence[int], features: int, kernel: Sequence[int], strides: Sequence[int], padding: Any,
              dilation: Sequence[int], groups: int, dtype: Any) -> str:
    """The batch-free key of a convolution of an NHWC input of `shape`."""
    size = lambda values: "x".join(map(str, values))
    return (f"{size(shape[1:-1])}x{shape[-1]}->{features} k{size(kernel)} s{size(strides)} p{padding} "
            f"d{size(dilation)} g{groups} {getattr(dtype, '__name__', str(dtype))}")


def context_of(train: bool) -> str:
    return TRAIN if train else FORWARD


def lookup(plan: Plan, key: str, context: str) -> str | None:
    """The implementation `plan` names for convolution `key` in `context`, or None."""
    return next((impl for sig, ctx, impl in plan if sig == key and ctx == context), None)


def record(key: str, in_channels: int, poolable: bool = False) -> None:
    """Notes a convolution traced while `recorded()` is active (the tuner's shape survey);
    `poolable`: it can be computed together with the pool after it (`jaxcnn.models.pooled`)."""
    seen = _recording.get()
    if seen is not None and all(key != k for k, *_ in seen):
        seen.append((key, in_channels, poolable))


@contextlib.contextmanager
def recorded() -> Iterator[list[tuple[str, int, bool]]]:
    """The `(signature, input channels per group, poolable)` of each distinct convolution traced
    inside, in order."""
    seen: list[tuple[str, int, bool]] = []
    token = _recording.set(seen)
    try:
        yield seen
    finally:
        _recording.reset(token)
