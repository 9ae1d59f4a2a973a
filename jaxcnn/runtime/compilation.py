"""The persistent compilation cache and the XLA options of jaxcnn's programs.

The cache is on by default (`config.compilation_cache_dir = "auto"`): a second run of the same
config loads its compiled programs from the user's cache folder instead of compiling them again.
"""

from __future__ import annotations

import os
import pathlib
import threading

import jax

from jaxcnn.errors import JaxcnnError

CACHE_AUTO = "auto"  # config.compilation_cache_dir: the user cache folder (`default_cache_dir`)
_HIT, _MISS = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"


def default_cache_dir() -> pathlib.Path:
    """`$XDG_CACHE_HOME/jaxcnn`, else `~/.cache/jaxcnn`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base).expanduser() / "jaxcnn"


def _writable_dir(path: pathlib.Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def resolve_cache_dir(setting: str | os.PathLike | None) -> pathlib.Path | None:
    """The folder `config.compilation_cache_dir` names: None for '' (off); for "auto" the user
    cache folder, or None (silently off) where it cannot be created or written, e.g. a read-only
    or missing home; any other value is that folder (created), and one that cannot be created is
    an error naming it."""
    if not setting:
        return None
    if str(setting) == CACHE_AUTO:
        path = default_cache_dir()
        return path if _writable_dir(path) else None
    path = pathlib.Path(setting).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JaxcnnError(f"compilation_cache_dir '{path}' cannot be created: {e.strerror}; "
                          "pass a writable directory or '' to turn the cache off") from e
    return path


def enable_compilation_cache(directory: str | os.PathLike | None, min_compile_time_s: float = 0.0
                             ) -> pathlib.Path | None:
    """Caches every compiled program taking at least `min_compile_time_s` to compile in the folder
    `directory` names (`resolve_cache_dir`: "auto", '' for off, or a path); returns that folder.

    Call it before the process's first compilation: JAX decides once per process whether it uses
    the cache. JAX's default threshold (1 s) would skip most of jaxcnn's small programs, hence 0.
    """
    path = resolve_cache_dir(directory)
    if path is None:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _count_cache_events()
    return path


_counts = {_HIT: 0, _MISS: 0}
_listening = threading.Lock()
_listener_installed = False


def _count_cache_events() -> None:
    """Counts the persistent cache's hits and misses (JAX's monitoring events), once per process."""
    global _listener_installed
    with _listening:
        if _listener_installed:
            return

        def listen(event: str, **_: object) -> None:
            if event in _counts:
                _counts[event] += 1

        jax.monitoring.register_event_listener(listen)
        _listener_installed = True


def cache_counts() -> dict[str, int]:
    """Programs loaded from the persistent cache (`hits`) and compiled and written to it
    (`misses`) in this process so far; both 0 while the cache is off."""
    return {"hits": _counts[_HIT], "misses": _counts[_MISS]}


# XLA:CPU (jax 0.10.2) hands convolutions, and element-wise/reduce regions around them, to YNNPACK
# by default. On the project's 2-core CPU YNNPACK's convolution gradients were 2-3x slower than
# XLA's own (Eigen) ones (Flax-example CNN, conv 14x14x32->64, batch 128: kernel gradient 9.1 ms
# against 3.7 ms) and its fusions materialise broadcast constants every step; its dots are kept.
# Measured per model in README.md, "Speed".
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


# The option sets `jaxcnn.core.autotune` chooses among per program, by measurement: YNNPACK's
# convolutions off ("individual_dot", the default, as measured above), the same with YNNPACK's
# reductions ("dot_and_reduce": BatchNorm's statistics; the speedrun CNN's training step 12% faster
# on an AMD EPYC) or XLA's own defaults ("xla_default": there, forward-only programs with XLA's
# convolutions ran 3x faster).
OPTION_SETS: dict[str, dict[str, str]] = {
    "individual_dot": CPU_COMPILER_OPTIONS,
    "dot_and_reduce": {"xla_cpu_experimental_ynn_fusion_type":
                       "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"},
    "xla_default": {},
}
DEFAULT_SET = "individual_dot"


def compiler_options(backend: str | None = None, option_set: str | None = None) -> dict[str, str] | None:
    """The XLA options jaxcnn compiles a program with on `backend` (default: JAX's default backend):
    on CPU those of `option_set` (`OPTION_SETS`; default `DEFAULT_SET`, or what the run's measured
    plan chose), XLA's defaults elsewhere.

    They are per program (`jax.jit(..., compiler_options=...)`), so other JAX code in the process,
    such as the benchmark's `baseline`, keeps XLA's defaults. Every program that must give bitwise
    equal results (one step per call and fused steps) is compiled with the same options.
    """
    if (backend or jax.default_backend()) != "cpu":
        return None
    return dict(OPTION_SETS[option_set or DEFAULT_SET]) or None
