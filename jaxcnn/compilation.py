"""The persistent compilation cache: a second run of the same config loads its compiled programs
from `config.compilation_cache_dir` instead of compiling them again."""

from __future__ import annotations

import pathlib

import jax

from jaxcnn.errors import JaxcnnError


def enable_compilation_cache(directory: str | pathlib.Path, min_compile_time_s: float = 0.0) -> None:
    """Caches every compiled program taking at least `min_compile_time_s` to compile in `directory`.

    Call it before the first compilation of the programs to cache. JAX's default threshold (1 s)
    would skip most of jaxcnn's small programs, hence 0 by default.
    """
    path = pathlib.Path(directory).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JaxcnnError(f"compilation_cache_dir '{path}' cannot be created: {e.strerror}; "
                          "pass a writable directory or '' to turn the cache off") from e
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# XLA:CPU (jax 0.10.2) hands convolutions, and element-wise/reduce regions around them, to YNNPACK
# by default. On the project's 2-core CPU YNNPACK's convolution gradients were 2-3x slower than
# XLA's own (Eigen) ones (Flax-example CNN, conv 14x14x32->64, batch 128: kernel gradient 9.1 ms
# against 3.7 ms) and its fusions materialise broadcast constants every step; its dots are kept.
# Measured per model in README.md, "Speed".
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def compiler_options(backend: str | None = None) -> dict[str, str] | None:
    """The XLA options jaxcnn compiles its training and evaluation programs with on `backend`
    (default: JAX's default backend): `CPU_COMPILER_OPTIONS` on CPU, XLA's defaults elsewhere.

    They are per program (`jax.jit(..., compiler_options=...)`), so other JAX code in the process,
    such as the benchmark's `baseline`, keeps XLA's defaults. Every program that must give bitwise
    equal results (one step per call and fused steps) is compiled with the same options.
    """
    return dict(CPU_COMPILER_OPTIONS) if (backend or jax.default_backend()) == "cpu" else None
