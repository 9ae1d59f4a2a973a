"""`config.deterministic`: run-to-run bitwise reproducibility on GPUs, and what a run records of it.

XLA:CPU and XLA:TPU give the same bits every run of the same program on the same devices. XLA:GPU
does not by default: scatter-adds (the gradients of gathers), some reductions, and the cuBLAS/cuDNN
algorithms autotuning may pick, accumulate in an order that varies between runs
(jax-ml/jax#13672). XLA's flag `--xla_gpu_deterministic_ops=true` (jaxlib 0.10.2: "Guarantees
run-to-run determinism on GPU"; it implies `--xla_gpu_exclude_nondeterministic_ops`) switches them
to deterministic, possibly slower, implementations. It is read from `XLA_FLAGS` once, when JAX's
backend starts (the first operation that needs a device), so `apply` must run before that; XLA:CPU
and XLA:TPU ignore it, so it is set on every platform and is a no-op there.

JAX's random numbers need nothing: jax 0.10.2's default PRNG is `threefry2x32` with
`jax_threefry_partitionable` on, whose bits do not depend on the device count or the sharding.
Both are recorded (`record`), with the flags, in every run's certificate (`jaxcnn.files.certificate`).
"""

from __future__ import annotations

import os
import shlex
from typing import Any

import jax
import ml_collections
from jax._src import xla_bridge

from jaxcnn.errors import JaxcnnError

FLAG = "--xla_gpu_deterministic_ops"
GPU_PLATFORMS = ("gpu", "cuda", "rocm")


def flag_value(xla_flags: str) -> str | None:
    """The value `XLA_FLAGS` gives the deterministic-ops flag (its last occurrence), or None."""
    value = None
    for item in shlex.split(xla_flags):
        name, sep, given = item.partition("=")
        if name == FLAG:
            value = given if sep else "true"
    return value


def _is_true(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("true", "1")


def apply(config: ml_collections.ConfigDict | bool) -> bool:
    """With `config.deterministic` (or `config` itself, a bool) true, adds `--xla_gpu_deterministic_ops=true`
    to `XLA_FLAGS` for the backend about to start; returns whether the flag is in effect.

    Call it before anything starts JAX's backend (`jaxcnn train` does, right after reading the
    config). When the backend has already started: on a GPU without the flag, a `JaxcnnError`
    (the flag can no longer take effect); on a CPU or TPU, nothing to do. `XLA_FLAGS` setting the
    flag to false with `deterministic` true is a contradiction, also refused.
    """
    wanted = config if isinstance(config, bool) else bool(config.deterministic)
    flags = os.environ.get("XLA_FLAGS", "")
    value = flag_value(flags)
    if not wanted:
        return _is_true(value)
    if value is not None and not _is_true(value):
        raise JaxcnnError(f"deterministic is true but XLA_FLAGS sets {FLAG}={value}; remove it from "
                          "XLA_FLAGS or set --config.deterministic=false")
    if value is not None:
        return True
    if xla_bridge.backends_are_initialized():
        platform = jax.default_backend()
        if platform in GPU_PLATFORMS:
            raise JaxcnnError(
                f"deterministic is true but JAX's {platform} backend already started without {FLAG}=true "
                f"(XLA_FLAGS={flags!r}); call jaxcnn.runtime.determinism.apply(config) before any JAX operation, "
                f"or start Python with XLA_FLAGS=\"{FLAG}=true\"")
        return False  # XLA:CPU and XLA:TPU are deterministic without it
    os.environ["XLA_FLAGS"] = f"{flags} {FLAG}=true".strip()
    return True


def record(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What decides the bits of a run besides the config and the library versions: for
    `certificate.json`."""
    flags = os.environ.get("XLA_FLAGS", "")
    return {"deterministic": bool(config.deterministic),
            "deterministic_ops_flag": _is_true(flag_value(flags)),
            "xla_flags": flags,
            "prng_impl": str(jax.config.jax_default_prng_impl),
            "threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
            "default_matmul_precision": jax.config.jax_default_matmul_precision}
