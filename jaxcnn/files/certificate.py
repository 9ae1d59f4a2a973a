"""`certificate.json`: what a run produced, as hashes, and what it ran on, so that `jaxcnn verify`
can re-run it and say whether the reproduction is bitwise.

Written by every run at its end (`training.summary.finish`, through the run's writer: process 0 only):

- `params_sha256`: the final parameters and BatchNorm statistics (`variables_sha256`);
  `best_params_sha256`: those of the best epoch when `early_stopping.restore_best` tested them
  (else null);
- `metrics_sha256`: `metrics.jsonl` without its timing fields (`metrics_sha256`);
- `config_sha256`: the config as `config.json` holds it (`config_to_json`);
- the environment: library versions, backend, device kind and count, process count, `XLA_FLAGS`,
  the compiler options jaxcnn passes (`jaxcnn.runtime.compilation`), the PRNG implementation and
  `deterministic` (`jaxcnn.runtime.determinism.record`);
- for a run of members, `members`: each member's own parameter hashes.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import pathlib
from typing import Any, Iterable, Mapping

import jax
import ml_collections
import numpy as np

from jaxcnn.runtime import determinism
from jaxcnn.runtime.compilation import compiler_options
from jaxcnn.config import config_to_json
from jaxcnn.files.writers import dumps_json, read_jsonl, without_timing

CERTIFICATE_FILE = "certificate.json"
FORMAT = 1
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "jaxcnn")
# The environment fields `jaxcnn verify` compares, one warning line each when they differ.
ENVIRONMENT_KEYS = ("backend", "device_kind", "device_count", "process_count", "xla_flags",
                    "compiler_options", "prng_impl", "threefry_partitionable", "default_matmul_precision")


def host_array(x: Any) -> np.ndarray:
    """A (replicated) device array as NumPy, also when other processes hold parts of it."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_data(0)
    return np.asarray(jax.device_get(x))


def variables_sha256(params: Any, batch_stats: Any) -> str:
    """sha256 over every leaf of {params, batch_stats}, in path order: its path, dtype, shape and
    bytes. Equal digests: bitwise equal variables."""
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path({"params": params, "batch_stats": batch_stats})[0]
    for path, leaf in leaves:
        array = np.ascontiguousarray(host_array(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}\n".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def canonical_records(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """Each record without its timing fields, as sorted-key JSON: equal strings, equal records."""
    return [dumps_json(without_timing(record), sort_keys=True) for record in records]


def metrics_sha256(path: pathlib.Path) -> str:
    """sha256 of `metrics.jsonl` without its timing fields (one canonical line per record)."""
    return hashlib.sha256("\n".join(canonical_records(read_jsonl(path))).encode()).hexdigest()


def config_sha256(config: ml_collections.ConfigDict) -> str:
    return hashlib.sha256(config_to_json(config).encode()).hexdigest()


def library_versions() -> dict[str, str | None]:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def environment(config: ml_collections.ConfigDict, num_devices: int | None = None,
                options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Versions, devices, flags and PRNG of this process (`num_devices`: those the run used;
    default: all); `options`: the XLA options of the run's programs (default: `compiler_options()`)."""
    device = jax.devices()[0]
    return {"versions": library_versions(), "backend": jax.default_backend(), "device_kind": device.device_kind,
            "device_count": jax.device_count() if num_devices is None else num_devices,
            "process_count": jax.process_count(), "compiler_options": compiler_options() or {} if options is None else options,
            **determinism.record(config)}


def build(config: ml_collections.ConfigDict, workdir: pathlib.Path, final: Any, best: Any | None,
          steps: int, num_devices: int, tuned: Any = None) -> dict[str, Any]:
    """The certificate of a run that ended with state `final` after `steps` steps; `best`: the
    (params, batch_stats) its test used instead, when restore_best applied."""
    return {"format": FORMAT, "steps": steps,
            "params_sha256": variables_sha256(final.params, final.batch_stats),
            "best_params_sha256": variables_sha256(*best) if best is not None else None,
            "metrics_sha256": metrics_sha256(workdir / "metrics.jsonl"),
            "config_sha256": config_sha256(config),
            **environment(config, num_devices, _options(tuned)),
            **({"autotune": tuned.to_json()} if tuned is not None else {})}


def _options(tuned: Any) -> dict[str, Any] | None:
    """The compiler options per program of a run's measured plan (`jaxcnn.core.autotune.Tuned`)."""
    return None if tuned is None else {k: v or {} for k, v in tuned.compiler_options().items()}


def write(run: Any, final: Any, steps: int) -> None:
    """`WORKDIR/certificate.json` of a finished run (`training.summary.finish`; only process 0 writes)."""
    config = run.config
    restored_best = config.early_stopping.enabled and config.early_stopping.restore_best
    best = run.best_variables if restored_best and run.best_variables is not None else None
    if run.writer.enabled:
        record = build(config, run.workdir, final, best, steps, run.executor.num_devices, run.tuned)
        if run.stacked:  # each member's share: its own hashes, as its single run would record them
            record["members"] = [member_hashes(m, final, best) for m in range(run.num_members)]
        run.writer.write_json(CERTIFICATE_FILE, record)


def member_hashes(m: int, final: Any, best: Any | None) -> dict[str, Any]:
    """Member `m`'s parameter hashes in a stacked state (and best variables)."""
    own = lambda tree: jax.tree.map(lambda leaf: host_array(leaf)[m], tree)
    return {"member": m, "params_sha256": variables_sha256(own(final.params), own(final.batch_stats)),
            "best_params_sha256": variables_sha256(*own(best)) if best is not None else None}
