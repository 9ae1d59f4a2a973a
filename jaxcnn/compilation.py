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
