"""The workdir: which folder a training run uses, whether it resumes the run already there, and
the lock that makes it one training's at a time.

Choosing writes nothing: every refusal (a finished run, a different config, checkpointing off)
leaves the workdir exactly as it was. `claim_workdir` then checks, creates and locks it (process 0)
before anything is written; a start that fails leaves no empty folder behind.

The lock is an OS advisory lock (`flock`) on `WORKDIR/.jaxcnn.lock`, which holds the PID and host
of the training that holds it. The kernel releases it when that process ends, however it ends
(`kill -9` included), so a lock is never stale; a file left by a killed run means nothing. A second
`jaxcnn train` on a workdir in use is refused in one line naming the holder. `eval`, `predict`,
`report` and `export` only read, without the lock.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import fcntl
import json
import os
import pathlib
import socket
import sys
from typing import Any, Iterator

import ml_collections

from jaxcnn import data
from jaxcnn.files.checkpoint import CHECKPOINT_DIR, open_manager, read_meta
from jaxcnn.runtime.distributed import any_process, is_main_process
from jaxcnn.spec import CheckpointSpec
from jaxcnn.errors import JaxcnnError
from jaxcnn.files.writers import check_output_paths, check_writable

# Config keys that may differ when a run is resumed; any other difference is refused.
RESUMABLE_KEYS = ("num_epochs", "log_every_steps", "eval_batch_size", "dataset.data_dir", "dataset.workers",
                  "steps_per_call", "max_steps", "limit_eval_batches", "on_nonfinite", "profile_steps")
LOCK_FILE = ".jaxcnn.lock"
RESUMABLE_SECTIONS = ("checkpoint.",)
# Written into config.json from the training split when dataset.per_channel_stats is on.
MEASURED_KEYS = ("dataset.mean", "dataset.std")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys (dotted) whose values differ between two configs as JSON dicts, ignoring the keys a
    resumed run may change; each as `key (saved -> now)`. When a section's `name` differs (another
    model or dataset), that name stands for the whole section."""
    old, new = _flatten(saved), _flatten(current)
    renamed = tuple(key[: -len("name")] for key in set(old) & set(new)
                    if key.endswith(".name") and old[key] != new[key])
    differing = []
    for key in sorted(set(old) | set(new)):
        if key in RESUMABLE_KEYS or key.startswith(RESUMABLE_SECTIONS) or old.get(key) == new.get(key):
            continue
        if key in MEASURED_KEYS and new.get("dataset.per_channel_stats"):
            continue  # measured on the training split and recorded in config.json: not a user change
        if key.startswith(renamed) and not key.endswith(".name"):
            continue
        differing.append(f"{key} ({json.dumps(old.get(key, '<unset>'))} -> {json.dumps(new.get(key, '<unset>'))})")
    return differing


def holds_run(path: pathlib.Path) -> bool:
    """Whether `path` has anything of a run: metrics, a config or a committed checkpoint step
    (a `checkpoints/` folder with only unfinished temporary folders is not a run yet)."""
    folder = path / CHECKPOINT_DIR
    committed = folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())
    return committed or any((path / name).exists() for name in ("metrics.jsonl", "config.json"))


def fresh_subfolder(path: pathlib.Path) -> pathlib.Path:
    """`path/run-N` for the smallest N >= 2 not yet taken (the interrupted run stays where it is)."""
    number = 2
    while holds_run(path / f"run-{number}") or (path / f"run-{number}").is_file():
        number += 1
    return path / f"run-{number}"


def choose_workdir(workdir: str | pathlib.Path, config: ml_collections.ConfigDict,
                   fresh: bool = False) -> tuple[pathlib.Path, bool]:
    """The workdir to train in, and whether to resume the run already there.

    Writes nothing: every refusal (a finished run, a different config, checkpointing off) leaves
    the workdir exactly as it was.
    """
    path, resuming, _ = _choose(pathlib.Path(workdir), config, fresh)
    return path, resuming


def _choose(path: pathlib.Path, config: ml_collections.ConfigDict,
            fresh: bool) -> tuple[pathlib.Path, bool, dict[str, Any] | None]:
    """`choose_workdir`, plus the config of the run resumed (its checkpoint's: the truth)."""
    CheckpointSpec.parse(config.checkpoint)
    if not path.is_dir() or not holds_run(path):
        return path, False, None
    if fresh:
        return fresh_subfolder(path), False, None
    truth, edited = resumed_config(path)
    current = json.loads(json.dumps(config.to_dict()))  # tuples -> lists, as in the saved file
    differing = config_differences(truth, current)
    if differing:
        saved = (f"its checkpoint's config ({edited})" if edited
                 else f"the saved config (--config {path / 'config.json'})")
        raise JaxcnnError(f"workdir '{path}' holds a run with a different config: {'; '.join(differing)}; "
                          f"resume with {saved} or pass --fresh to start a new run in a subfolder")
    if (path / "summary.json").exists():
        raise JaxcnnError(f"workdir '{path}' holds a finished run (summary.json); evaluate it with "
                          f"`jaxcnn eval --workdir {path}`, or pass --fresh to train again in a new subfolder")
    if not config.checkpoint.enabled:
        raise JaxcnnError(f"workdir '{path}' already holds a run and checkpoint.enabled is false, so it "
                          "cannot be resumed; pass --fresh or a new --workdir")
    if edited and is_main_process():
        print(f"jaxcnn: warning: {edited}; resuming with the checkpoint's config, config.json is rewritten from it",
              file=sys.stderr, flush=True)
    return path, True, truth


def resumed_config(path: pathlib.Path) -> tuple[dict[str, Any], str]:
    """The config of the run in `path` as JSON: its newest readable checkpoint's, which is the
    run's truth; `config.json`'s when no checkpoint can be read. Second, how a `config.json` that
    disagrees with the checkpoint (edited by hand) differs from it ("" when it agrees)."""
    config_file = path / "config.json"
    try:
        saved = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        saved, problem = None, e
    checkpointed = checkpoint_config(path)
    if checkpointed is None:
        if saved is None:
            raise JaxcnnError(f"{config_file}: cannot read the interrupted run's config ({problem}); "
                              "pass --fresh to start over in a new subfolder") from problem
        return saved, ""
    step, truth = checkpointed
    edited = config_differences(truth, saved) if isinstance(saved, dict) else ["it cannot be read"]
    if not edited:
        return truth, ""
    return truth, f"{config_file} disagrees with its checkpoint (step {step}): {'; '.join(edited)}"


def checkpoint_config(path: pathlib.Path) -> tuple[int, dict[str, Any]] | None:
    """(step, config) of the newest checkpoint step of `path` whose metadata can be read; reads only."""
    directory = path / CHECKPOINT_DIR
    if not directory.is_dir():
        return None
    manager = open_manager(directory, read_only=True)
    try:
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                return step, read_meta(manager, step)["config"]
            except Exception:  # an unreadable step: restoring reports it and uses the one before
                continue
    finally:
        manager.close()
    return None


def prepare_workdir(workdir: str | pathlib.Path) -> pathlib.Path:
    """The workdir, created if missing."""
    path = pathlib.Path(workdir)
    if path.exists() and not path.is_dir():
        raise JaxcnnError(f"workdir '{path}' is a file; pass a directory path to --workdir")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JaxcnnError(f"workdir '{path}' cannot be created: {e.strerror}; pass a writable --workdir") from e
    return path


# ---------------------------------------------------------------------------- the lock


def _holder(lock_file: pathlib.Path) -> str:
    try:
        info = json.loads(lock_file.read_text())
        return f"PID {int(info['pid'])} on host {info['host']} (since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not written its PID yet)"


def _in_use(workdir: pathlib.Path, lock_file: pathlib.Path) -> JaxcnnError:
    return JaxcnnError(f"workdir '{workdir}' is in use by another `jaxcnn train`: {_holder(lock_file)} holds "
                       f"{lock_file}; wait for it to end (or stop it), or pass another --workdir")


def check_not_in_use(workdir: pathlib.Path) -> None:
    """Refuses a workdir whose lock another training holds; writes nothing (a shared lock, at once released)."""
    lock_file = workdir / LOCK_FILE
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return  # no lock file (or none readable): nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(workdir, lock_file) from None
    except OSError:
        return  # a file system without flock: the exclusive lock will say
    finally:
        os.close(fd)


class WorkdirLock:
    """The exclusive `flock` on `WORKDIR/.jaxcnn.lock`, with this process's PID and host in the file."""

    def __init__(self, workdir: pathlib.Path):
        self.path = workdir / LOCK_FILE
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise JaxcnnError(f"workdir '{workdir}': cannot create its lock file {self.path}: "
                                  f"{e.strerror}; pass a writable --workdir") from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise _in_use(workdir, self.path) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # its holder removed it between our open and our lock: take the new one
        self.fd: int | None = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": datetime.datetime.now().isoformat(timespec="seconds")}
        try:
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps(info) + "\n").encode())
        except OSError as e:
            self.release()
            raise JaxcnnError(f"workdir '{workdir}': cannot write its lock file {self.path}: {e.strerror}; "
                              "free some space or pass another --workdir") from e

    def release(self) -> None:
        """Removes the file, then lets the lock go (the order matters: see `_same_file`)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = None


def _same_file(fd: int, path: pathlib.Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except OSError:
        return False


# ---------------------------------------------------------------------------- claiming the workdir


@dataclasses.dataclass
class Claim:
    """The workdir a training start chose and made ready: whether it resumes, the data directory
    the resumed run recorded, the lock (process 0), and what this start created."""

    path: pathlib.Path
    resuming: bool
    data_dir: str = ""
    lock: WorkdirLock | None = None
    created: list[pathlib.Path] = dataclasses.field(default_factory=list)  # folders made by this start
    existing: frozenset[str] = frozenset()  # the workdir's entries before this start

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    @contextlib.contextmanager
    def undone_on_failure(self) -> Iterator[None]:
        """A start that fails (or is interrupted) releases the lock and removes the empty folders
        and files it created, the workdir itself when it created it and it is left empty."""
        try:
            yield
        except BaseException:
            self.abandon()
            raise

    def abandon(self) -> None:
        self.release()
        if is_main_process():
            self._remove_empty_leftovers()

    def _remove_empty_leftovers(self) -> None:
        if self.path.is_dir():
            for entry in self.path.iterdir():
                if entry.name not in self.existing:
                    _remove_if_empty(entry)
        for folder in reversed(self.created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty


def _remove_if_empty(path: pathlib.Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            for entry in path.iterdir():
                _remove_if_empty(entry)
            path.rmdir()
        elif path.is_file() and path.stat().st_size == 0:
            path.unlink()


def claim_workdir(workdir: str | pathlib.Path, config: ml_collections.ConfigDict, fresh: bool) -> Claim:
    """Chooses the workdir (every process, reading only), then in process 0: refuses one in use
    by another training, one with something in the way of an output, or one not writable; creates
    and locks it. The processes agree before any goes on, so a refusal stops all of them before
    anything is written."""
    path, claim, error = pathlib.Path(workdir), None, None
    try:
        if is_main_process():
            check_not_in_use(path)  # before choosing: a --fresh subfolder too is refused
            if not fresh:
                check_output_paths(path)  # before choosing: a folder named metrics.jsonl is no run to resume
        chosen, resuming, truth = _choose(path, config, fresh)
        recorded = (truth or {}).get("dataset", {}).get("data_dir", "") if not config.dataset.data_dir else ""
        claim = Claim(chosen, resuming, recorded or "")
        if is_main_process():
            _take(claim)
    except JaxcnnError as e:
        error = e
    if any_process(error is not None):
        if claim is not None:
            claim.abandon()
        raise error or JaxcnnError("another process of this run could not start (see its message)")
    if not is_main_process():
        prepare_workdir(claim.path)
    return claim


def _take(claim: Claim) -> None:
    check_output_paths(claim.path)
    check_writable(claim.path)
    claim.existing = frozenset(p.name for p in claim.path.iterdir()) if claim.path.is_dir() else frozenset()
    claim.created = [p for p in reversed(claim.path.absolute().parents) if not p.exists()]
    claim.created += [claim.path.absolute()] if not claim.path.exists() else []
    prepare_workdir(claim.path)
    with claim.undone_on_failure():
        claim.lock = WorkdirLock(claim.path)


def record_data_dir(config: ml_collections.ConfigDict, data_dir: str | None) -> ml_collections.ConfigDict:
    """`config` with `dataset.data_dir` set to the absolute data directory the dataset was read
    from, so that `eval` and a resume find it without `--data-dir`; unchanged for a dataset that
    reads no files (digits, synthetic)."""
    if not data.reads_files(config.dataset.name):
        return config
    config = copy.deepcopy(config)
    config.dataset.data_dir = str(data.resolve_data_dir(data_dir).absolute())
    return config
