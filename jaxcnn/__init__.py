"""jaxcnn: train, evaluate and compare MLP and CNN image classifiers with JAX, Flax, Optax and Orbax.

The names below are imported on first use, so that `import jaxcnn.cli` (the `jaxcnn` command) is
quick and can install its Ctrl-C handling before JAX loads.
"""

import importlib
from typing import Any

_EXPORTS = {"Callback": "jaxcnn.api", "CallbackFailed": "jaxcnn.api", "Dataset": "jaxcnn.data", "JaxcnnError": "jaxcnn.errors", "Model": "jaxcnn.api",
            "base_config": "jaxcnn.config", "create_model": "jaxcnn.models", "load": "jaxcnn.api",
            "load_config": "jaxcnn.config", "load_dataset": "jaxcnn.data", "register_dataset": "jaxcnn.data",
            "register_model": "jaxcnn.models", "train": "jaxcnn.api", "train_and_evaluate": "jaxcnn.training.loop"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jaxcnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
