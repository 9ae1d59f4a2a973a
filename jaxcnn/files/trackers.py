"""Where a run's records go besides `metrics.jsonl`: TensorBoard event files and the experiment
trackers of `config.logging` (a CSV file, MLflow, Weights & Biases).

Each tracker gets every record `metrics.jsonl` gets, as it is written, and at the end of the run the
summary and the files worth keeping (config, summary, metrics, report figures) as artifacts. Only
process 0 has trackers (`RunWriter` decides). A tracker whose library is missing, or that fails
(a tracking server down, a full disk), costs one warning line and is dropped: it never loses the run,
whose own files stay the record of truth.

MLflow and W&B are optional extras (`pip install 'jaxcnn[mlflow]'`, `'jaxcnn[wandb]'`) and take
their usual environment: `MLFLOW_TRACKING_URI` (e.g. `file:/path/mlruns`), `WANDB_MODE=offline`,
`WANDB_PROJECT`, ... . A resumed run continues the tracker's run of the same workdir (its id is
kept in `trackers.json`); the records after the checkpoint are sent again, as they are written again.
"""

from __future__ import annotations

import csv
import json
import numbers
import pathlib
import sys
from typing import Any, Mapping, Sequence

from jaxcnn.errors import JaxcnnError

TRACKERS = ("csv", "mlflow", "wandb")
CSV_FILE = "metrics.csv"
IDS_FILE = "trackers.json"  # each tracker's run id, so that a resumed run continues it
NOT_SCALARS = frozenset({"event", "epoch", "step", "member"})
ARTIFACTS = ("config.json", "summary.json", "metrics.jsonl", CSV_FILE, "certificate.json")


def warn(message: str) -> None:
    """The one line a tracker problem costs (on stderr, so that `--json -` output stays clean)."""
    print(f"jaxcnn: warning: {message}", file=sys.stderr, flush=True)


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The numeric fields of a record as tracker metric names: `EVENT/FIELD`, and for a member of a
    run of members `EVENT/member_K/FIELD` (each member its own curve). NaN stays NaN."""
    event = record.get("event", "metrics")
    prefix = f"{event}/member_{record['member']}/" if "member" in record else f"{event}/"
    return {prefix + key: float(value) for key, value in record.items()
            if key not in NOT_SCALARS and isinstance(value, numbers.Real) and not isinstance(value, bool)}


def plain(config: Any) -> dict[str, Any]:
    """A config (a `ConfigDict` or a mapping) as a plain dict."""
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """The config as flat `section.key -> text` pairs, what trackers show as a run's parameters."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            flat.update(flat_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)[:250]  # MLflow's limit on a parameter value is 6000; keep short
    return flat


def artifact_paths(workdir: pathlib.Path) -> list[pathlib.Path]:
    """The run's files worth keeping beside its metrics, those that exist: config, summary, metrics,
    certificate, and the figures of `jaxcnn report` (`plots/*.png`) when it ran already."""
    files = [workdir / name for name in ARTIFACTS if (workdir / name).is_file()]
    return files + sorted((workdir / "plots").glob("*.png"))


class TensorBoardWriter:
    """Scalars of metrics records as TensorBoard event files, written by tensorboardX (no TensorFlow).

    Each numeric field of a record becomes the scalar `EVENT/FIELD` at the record's `step`:
    `train/loss`, `train/learning_rate`, `train/images_per_s`, `epoch/val_accuracy`, `test/test_accuracy`, ...
    """

    NOT_SCALARS = frozenset({"event", "epoch", "step"})

    def __init__(self, directory: pathlib.Path):
        try:
            from tensorboardX import SummaryWriter
        except ImportError as e:
            raise JaxcnnError("logging.tensorboard is on but tensorboardX is not installed; "
                              "pip install 'jaxcnn[tensorboard]' or set --config.logging.tensorboard=false") from e
        self.directory = pathlib.Path(directory)
        self._writer = SummaryWriter(logdir=str(self.directory), flush_secs=10)

    def write(self, record: Mapping[str, Any]) -> None:
        """`record`: plain Python values (`writers.to_builtin(record, finite=False)`: NaN shows as NaN)."""
        event, step = record.get("event", "metrics"), int(record.get("step", 0))
        for key, value in record.items():
            if key not in self.NOT_SCALARS and isinstance(value, numbers.Real) and not isinstance(value, bool):
                self._writer.add_scalar(f"{event}/{key}", value, step)

    def close(self) -> None:
        self._writer.close()


# ---------------------------------------------------------------------------- the trackers


class CsvTracker:
    """`metrics.csv`: one row per record of `metrics.jsonl`, one column per field (Lightning's
    CSVLogger). Rebuilt from `metrics.jsonl` when opened (so a resumed run's file matches it), and
    rewritten whole when a record brings a new field; appended to otherwise."""

    name = "csv"

    def __init__(self, workdir: pathlib.Path, params: Mapping[str, str]):
        self.path = workdir / CSV_FILE
        jsonl = workdir / "metrics.jsonl"  # already cut back to the checkpoint's records when resuming
        lines = jsonl.read_text(encoding="utf-8").splitlines() if jsonl.is_file() else []
        self.rows = [json.loads(line) for line in lines if line.strip()]
        self.columns: list[str] = []
        self._rewrite()

    def _add_columns(self, record: Mapping[str, Any]) -> bool:
        new = [key for key in record if key not in self.columns]
        self.columns += new
        return bool(new)

    def _rewrite(self) -> None:
        for row in self.rows:
            self._add_columns(row)
        with self.path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(self.rows)

    def log(self, record: Mapping[str, Any]) -> None:
        self.rows.append(dict(record))
        if self._add_columns(record):
            self._rewrite()
            return
        with self.path.open("a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, self.columns).writerow(record)

    def finish(self, workdir: pathlib.Path, summary: Mapping[str, Any] | None) -> None:
        """Nothing to send: the file is in the workdir already."""


class MlflowTracker:
    """An MLflow run (experiment `logging.experiment`, at `MLFLOW_TRACKING_URI`): the config as
    parameters, each record's numbers as metrics at its step, the summary's numbers as `summary/...`
    metrics and the run's files as artifacts."""

    name = "mlflow"

    def __init__(self, workdir: pathlib.Path, params: Mapping[str, str], experiment: str, run_id: str | None):
        import mlflow

        self.mlflow = mlflow
        try:
            mlflow.set_experiment(experiment)
        except mlflow.exceptions.MlflowException as e:  # MLflow 3 refuses file: stores unless told
            if "MLFLOW_ALLOW_FILE_STORE" in str(e):
                raise RuntimeError("MLflow 3 opens a file: tracking store only with MLFLOW_ALLOW_FILE_STORE=true "
                                   "in the environment") from e
            raise
        self.run = mlflow.start_run(run_id=run_id, run_name=None if run_id else workdir.name)
        self.id = self.run.info.run_id
        if run_id is None:
            mlflow.log_params(dict(params))

    def log(self, record: Mapping[str, Any]) -> None:
        self.mlflow.log_metrics(scalars(record), step=int(record.get("step", 0)))

    def finish(self, workdir: pathlib.Path, summary: Mapping[str, Any] | None) -> None:
        if summary is not None:
            self.mlflow.log_metrics({f"summary/{k}": float(v) for k, v in summary.items()
                                     if isinstance(v, numbers.Real) and not isinstance(v, bool)})
        for path in artifact_paths(workdir):
            self.mlflow.log_artifact(str(path), "plots" if path.parent.name == "plots" else None)
        self.mlflow.end_run("FINISHED" if summary is not None else "KILLED")


class WandbTracker:
    """A W&B run (project `logging.experiment`, or `WANDB_PROJECT`), its files in the workdir's
    `wandb/`: the config, each record's numbers at its step, the summary, the run's files."""

    name = "wandb"

    def __init__(self, workdir: pathlib.Path, params: Mapping[str, str], experiment: str, run_id: str | None):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=experiment, dir=str(workdir), name=workdir.name, config=dict(params),
                              id=run_id, resume="allow" if run_id else None, reinit="finish_previous")
        self.id = self.run.id

    def log(self, record: Mapping[str, Any]) -> None:
        self.run.log(scalars(record), step=int(record.get("step", 0)))

    def finish(self, workdir: pathlib.Path, summary: Mapping[str, Any] | None) -> None:
        if summary is not None:
            self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (numbers.Real, str))})
        for path in artifact_paths(workdir):
            self.run.save(str(path), base_path=str(workdir), policy="end")
        self.run.finish(exit_code=0 if summary is not None else 1)


class Trackers:
    """The trackers of a run, each dropped with one warning line when it cannot start or fails."""

    def __init__(self, workdir: pathlib.Path, names: Sequence[str], params: Mapping[str, str],
                 experiment: str = "jaxcnn"):
        self.workdir = pathlib.Path(workdir)
        self.summary: Mapping[str, Any] | None = None
        ids = self._read_ids()
        self.active = [t for t in (self._open(n, params, experiment, ids.get(n)) for n in names) if t is not None]
        self._write_ids()

    def _read_ids(self) -> dict[str, str]:
        try:
            return json.loads((self.workdir / IDS_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def _write_ids(self) -> None:
        ids = {t.name: t.id for t in self.active if getattr(t, "id", None)}
        if ids:
            (self.workdir / IDS_FILE).write_text(json.dumps(ids, indent=2) + "\n")

    def _open(self, name: str, params: Mapping[str, str], experiment: str, run_id: str | None) -> Any:
        """The tracker `name`, or None (with one warning) when its library is missing or it fails to start."""
        try:
            if name == "csv":
                return CsvTracker(self.workdir, params)
            kind = MlflowTracker if name == "mlflow" else WandbTracker
            return kind(self.workdir, params, experiment, run_id)
        except ImportError:
            warn(f"logging.{name} is on but {name} is not installed (pip install 'jaxcnn[{name}]'); "
                 "training goes on without it")
        except Exception as e:  # noqa: BLE001 (a tracker's failure must not lose the run)
            warn(f"logging.{name}: the tracker could not start ({type(e).__name__}: {_first_line(e)}); "
                 "training goes on without it")
        return None

    def _call(self, tracker: Any, method: str, *args: Any) -> None:
        try:
            getattr(tracker, method)(*args)
        except Exception as e:  # noqa: BLE001
            self.active.remove(tracker)
            warn(f"logging.{tracker.name} failed ({type(e).__name__}: {_first_line(e)}); "
                 "training goes on without it (metrics.jsonl has every record)")

    def log(self, record: Mapping[str, Any]) -> None:
        for tracker in list(self.active):
            self._call(tracker, "log", record)

    def close(self) -> None:
        """Sends the summary (when the run finished) and the artifacts, and ends the trackers' runs."""
        for tracker in list(self.active):
            self._call(tracker, "finish", self.workdir, self.summary)
        self.active = []


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]


def tracker_names(logging: Mapping[str, Any]) -> list[str]:
    """The trackers that `config.logging` turns on, in a fixed order."""
    return [name for name in TRACKERS if logging.get(name)]
