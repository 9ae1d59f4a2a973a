"""The bench layer: throughput, time to accuracy, members against single runs, the plain-Flax yardstick."""

import importlib
from typing import Any

_EXPORTS = {"BenchSettings": "jaxcnn.bench.throughput", "run_benchmark": "jaxcnn.bench.throughput"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Imported on first use, so that importing one module of this layer does not import them all."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
