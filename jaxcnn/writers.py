"""The one metrics writer: `metrics.jsonl`, `summary.json` and `config.json` in the workdir.

Records are plain JSON. Timing values (which differ between otherwise identical runs) are kept in
the keys of `TIMING_KEYS`, so two runs with the same seed give identical files apart from those.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping

import numpy as np

TIMING_KEYS = frozenset({"wall_time_s", "images_per_s", "train_images_per_s", "epoch_time_s"})


def to_builtin(value: Any) -> Any:
    """jax/numpy scalars and arrays -> Python numbers and lists (JSON-able)."""
    if isinstance(value, Mapping):
        return {str(k): to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_builtin(v) for v in value]
    if hasattr(value, "shape") or isinstance(value, np.generic):
        array = np.asarray(value)
        return array.tolist() if array.ndim else array.item()
    return value


def without_timing(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}


class MetricsWriter:
    """Appends one JSON object per line to `metrics.jsonl`; flushed at once so a crash loses nothing.

    With `enabled=False` (every process but process 0 of a multi-process run) it writes nothing and
    creates no file.
    """

    def __init__(self, workdir: pathlib.Path, enabled: bool = True):
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self._file = self.path.open("a", encoding="utf-8") if enabled else None

    def write(self, record: Mapping[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(to_builtin(record), allow_nan=True) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def write_json(path: pathlib.Path, payload: Mapping[str, Any]) -> None:
    """Writes through a temporary file and a rename, so a reader never sees half a file."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_builtin(payload), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]
