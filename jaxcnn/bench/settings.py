"""What `jaxcnn bench` measures (`BenchSettings`, its modes and default models), without JAX.

Kept apart from `jaxcnn.bench.throughput` (which imports JAX) so that the command line's grammar
(`jaxcnn.cli_parser`) can show these defaults in `jaxcnn bench --help` without loading JAX;
`jaxcnn.bench.throughput` imports them from here, so they are defined once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

MODES = ("baseline", "step", "fused")
DEFAULT_MODELS = ("mlp", "tiny_cnn", "cnn")


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """What to measure and how long; see `jaxcnn bench --help`."""

    models: Sequence[str] = DEFAULT_MODELS
    modes: Sequence[str] = MODES
    batch_sizes: Sequence[int] = (128,)
    dtypes: Sequence[str] = ("float32",)
    seed: int = 0
    min_time: float = 2.0
    repeats: int = 3
    steps_per_call: int = 20
    fingerprint_steps: int = 10
    eval_batch_size: int = 1000
    num_train: int = 60_000  # one epoch of MNIST, in whole batches: 59,904 images at batch 128
    num_test: int = 5000
    dataset: str = "synthetic"
    data_dir: str | None = None
    conv_impl: str = "auto"  # the step and fused modes' model.conv_impl (the baseline keeps "xla")
