"""`jaxcnn verify WORKDIR [--steps N]`: re-run a run from its `config.json` and say whether the
reproduction is bitwise.

The run is trained again in a temporary workdir (all of it, or its first N steps with
`max_steps`), in this process and environment. `bitwise`: the parameters (final, and the best ones
when restore_best tested them) and `metrics.jsonl` without its timing fields are identical.
`differs`: the largest parameter difference in ulps (from the checkpoints) and the first
`metrics.jsonl` record that differs. Where the environment differs from the run's certificate
(library versions, backend, device kind or count, XLA flags and options, PRNG), one warning line
each. A run without a certificate (older runs) is compared through its checkpoints and metrics.
Exit status: 0 bitwise, 1 differs, 2 bad input (`JaxcnnError`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import sys
import tempfile
import time
from typing import Any, Callable

import ml_collections

from jaxcnn.files import certificate
from jaxcnn.runtime import determinism
from jaxcnn.files.certificate import CERTIFICATE_FILE, canonical_records
from jaxcnn.files.checkpoint import CHECKPOINT_DIR
from jaxcnn.config import read_config
from jaxcnn.errors import JaxcnnError
from jaxcnn.commands.ulps import compare_variables
from jaxcnn.files.writers import read_jsonl

RERUN_DIR = "rerun"


@dataclasses.dataclass
class Original:
    """What the workdir holds of the run to verify."""

    workdir: pathlib.Path
    config: ml_collections.ConfigDict
    records: list[dict[str, Any]]
    certificate: dict[str, Any] | None

    @property
    def steps(self) -> int:
        steps = [r["step"] for r in self.records if isinstance(r.get("step"), int)]
        return max(steps, default=0)


def read_certificate(path: pathlib.Path) -> dict[str, Any] | None:
    """The certificate at `path`, None when there is none; anything but a JSON object is one line."""
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise JaxcnnError(f"'{path}' cannot be read as JSON ({' '.join(str(e).split())[:120]}); "
                          "was it written by jaxcnn?") from e
    if not isinstance(value, dict) or not isinstance(value.get("versions", {}), dict):
        raise JaxcnnError(f"'{path}' is not a jaxcnn run certificate (expected a JSON object with versions)")
    problem = certificate_problem(value)
    if problem:
        raise JaxcnnError(f"'{path}' is not a jaxcnn run certificate: {problem}; was it written by jaxcnn?")
    return value


SHA256_FIELDS = ("params_sha256", "metrics_sha256", "config_sha256")


def certificate_problem(value: dict[str, Any]) -> str | None:
    """What makes `value` no certificate `jaxcnn train` writes (None: nothing): the hashes verify
    compares, the steps it re-runs and the environment it warns about, each of its type."""
    is_hash = lambda v: isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)  # noqa: E731
    for key in SHA256_FIELDS:
        if not is_hash(value.get(key)):
            return f"{key} is {json.dumps(value.get(key))[:40]}, expected a sha256 (64 hex digits)"
    if value.get("best_params_sha256") is not None and not is_hash(value["best_params_sha256"]):
        return "best_params_sha256 is neither a sha256 nor null"
    steps = value.get("steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        return f"steps is {json.dumps(steps)[:40]}, expected a whole number >= 0"
    versions = value.get("versions")
    if not isinstance(versions, dict) or not all(v is None or isinstance(v, str) for v in versions.values()):
        return "versions is not an object of version strings"
    for key in ("device_count", "process_count"):
        count = value.get(key)
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            return f"{key} is {json.dumps(count)[:40]}, expected a whole number >= 1"
    return None


def read_original(workdir: str | pathlib.Path, steps: int | None) -> Original:
    """The run in `workdir`: its config (not validated: that would start JAX's backend before
    `determinism.apply`), records and certificate. A missing or unfinished run is one line."""
    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
        raise JaxcnnError(f"workdir '{workdir}' is not a folder; pass the workdir of a `jaxcnn train` run")
    for name in ("config.json", "metrics.jsonl"):
        if not (workdir / name).is_file():
            raise JaxcnnError(f"workdir '{workdir}' has no {name}; pass the workdir of a `jaxcnn train` run")
    if steps is None and not (workdir / "summary.json").is_file():
        raise JaxcnnError(f"workdir '{workdir}' holds an unfinished run (no summary.json); resume it with "
                          f"`jaxcnn train --config {workdir / 'config.json'} --workdir {workdir}` or verify "
                          "its first steps with --steps N")
    config = read_config(str(workdir / "config.json"))
    original = Original(workdir, config, read_jsonl(workdir / "metrics.jsonl"),
                        read_certificate(workdir / CERTIFICATE_FILE))
    if steps is not None:
        check_steps(original, steps)
    return original


def check_steps(original: Original, steps: int) -> None:
    """`--steps N`: within the run, and with something to compare up to N (a record or a checkpoint)."""
    if not 1 <= steps <= original.steps:
        raise JaxcnnError(f"--steps must be between 1 and the {original.steps} steps the run in "
                          f"'{original.workdir}' trained, got {steps}")
    if not compared_records(original.records, steps) and not (original.workdir / CHECKPOINT_DIR / str(steps)).is_dir():
        config = original.config
        raise JaxcnnError(f"the run in '{original.workdir}' wrote no metrics record and kept no checkpoint up to "
                          f"step {steps}, so there is nothing to compare; pass --steps N with N a logging step "
                          f"(log_every_steps {config.log_every_steps}), an epoch's last step or a checkpointed step")


def environment_warnings(recorded: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """One line per library version or environment field that differs between two certificates."""
    lines = []
    versions, now = recorded.get("versions", {}), here.get("versions", {})
    for package in sorted(set(versions) | set(now)):
        if versions.get(package) != now.get(package):
            lines.append(f"{package} {versions.get(package)} in the certificate, {now.get(package)} here")
    for key in certificate.ENVIRONMENT_KEYS:
        if recorded.get(key) != here.get(key):
            lines.append(f"{key} {json.dumps(recorded.get(key))} in the certificate, {json.dumps(here.get(key))} here")
    return lines


def compared_records(records: list[dict[str, Any]], steps: int | None, keys: set | None = None) -> list[dict]:
    """The records a verification compares: all of them, or with `steps` the train and epoch
    records up to that step (of which, with `keys`, only those whose (event, step) is in `keys`:
    the re-run's last, partial epoch has no counterpart in the original)."""
    if steps is None:
        return records
    chosen = [r for r in records if r.get("event") in ("train", "epoch") and r.get("step", 0) <= steps]
    return [r for r in chosen if keys is None or (r.get("event"), r.get("step")) in keys]


def first_record_difference(original: list[dict], rerun: list[dict]) -> str | None:
    """None when the records are equal without timing fields; else where the first one differs."""
    left, right = canonical_records(original), canonical_records(rerun)
    for index, (a, b) in enumerate(zip(left, right)):
        if a != b:
            record, other = original[index], rerun[index]
            mine, theirs = json.loads(a), json.loads(b)
            keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            shown = ", ".join(f"{k} {record.get(k)!r} vs {other.get(k)!r}" for k in keys[:3])
            return (f"record {index + 1} (event {record.get('event')}, epoch {record.get('epoch')}, "
                    f"step {record.get('step')}): {shown}")
    if len(left) != len(right):
        return f"the original has {len(left)} records, the re-run {len(right)}"
    return None


def rerun(original: Original, steps: int | None, data_dir: str | None, folder: pathlib.Path) -> dict[str, Any]:
    """Trains the run again in `folder/rerun` (the first `steps` steps only, with max_steps)."""
    from jaxcnn.files.checkpoint import TrainingInterrupted
    from jaxcnn.config import apply_overrides, config_from_json
    from jaxcnn.core.autotune import PLAN_FILE
    from jaxcnn.training.loop import train_and_evaluate

    config = config_from_json(json.dumps(original.config.to_dict()))  # a copy, locked
    if steps is not None:
        apply_overrides(config, [f"max_steps={steps}"])
    plan = original.workdir / PLAN_FILE  # the original's convolutions and compiler options, replayed
    if plan.is_file():
        (folder / RERUN_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(plan, folder / RERUN_DIR / PLAN_FILE)
    try:
        return train_and_evaluate(config, folder / RERUN_DIR, data_dir=data_dir, quiet=True)
    except TrainingInterrupted as stop:
        raise JaxcnnError(f"the re-run was interrupted ({stop}); nothing was verified") from stop


def load_variables(workdir: pathlib.Path, step: str) -> dict[str, Any] | str:
    """{params, batch_stats} of checkpoint `step` ("latest", "best" or a number), or why not."""
    from jaxcnn.commands.saved import load_saved_model

    try:
        state = load_saved_model(workdir, step).state
    except JaxcnnError as e:
        return str(e)
    return {"params": state.params, "batch_stats": state.batch_stats}


def measure(original: pathlib.Path, rerun_dir: pathlib.Path, step: str, what: str) -> tuple[bool, str]:
    """Compares checkpoint `step` of the original and the re-run, array by array."""
    left, right = load_variables(original, step), load_variables(rerun_dir, step)
    if isinstance(left, str) or isinstance(right, str):
        return False, f"{what}: cannot measure the difference ({left if isinstance(left, str) else right})"
    bitwise, line = compare_variables(left, right)
    return bitwise, f"{what}: {line}"


def compare_parameters(original: Original, rerun_dir: pathlib.Path, here: dict[str, Any],
                       steps: int | None) -> tuple[bool | None, list[str]]:
    """(bitwise? None: not compared, lines): by the certificates' hashes when the whole run was
    re-run and the original has a certificate, else (or when they differ) by the checkpoints."""
    if steps is not None:
        left, right = load_variables(original.workdir, str(steps)), load_variables(rerun_dir, str(steps))
        if isinstance(left, str) or isinstance(right, str):
            return None, [f"not compared at step {steps}: {left if isinstance(left, str) else right}"]
        bitwise, line = compare_variables(left, right)
        return bitwise, [f"step {steps}: {line}"]
    cert = original.certificate
    if cert is None:
        bitwise, line = measure(original.workdir, rerun_dir, "latest", "final")
        return (None if line.startswith("final: cannot") else bitwise), [line]
    results = []
    for key, step, what in (("params_sha256", "latest", "final"), ("best_params_sha256", "best", "best")):
        if cert.get(key) is None and here.get(key) is None:
            continue
        if cert.get(key) == here.get(key):
            results.append((True, f"{what}: identical (sha256 {str(here[key])[:16]})"))
        else:
            bitwise, line = measure(original.workdir, rerun_dir, step, what)
            if bitwise:  # the checkpoints agree but the certificate does not
                line = (f"{what}: sha256 {str(cert.get(key))[:16]} in the certificate, {str(here.get(key))[:16]} "
                        "re-run, though the checkpoints are identical: the certificate or the checkpoint "
                        "changed after the run")
            results.append((False, line))
    return all(ok for ok, _ in results), [line for _, line in results]


def check_recorded(original: Original, warn: Callable[[str], None]) -> None:
    """Warns when the original's config.json or metrics.jsonl no longer match its certificate."""
    cert = original.certificate
    if cert is None:
        warn(f"'{original.workdir}' has no {CERTIFICATE_FILE} (a run from before certificates): the versions, "
             "devices and flags it ran with are unknown and the parameters are compared through its checkpoints")
        return
    if cert.get("config_sha256") != certificate.config_sha256(original.config):
        warn(f"config.json differs from the config the certificate records (config_sha256); re-running config.json")
    if cert.get("metrics_sha256") != certificate.metrics_sha256(original.workdir / "metrics.jsonl"):
        warn("metrics.jsonl differs from the one the certificate records (metrics_sha256)")


def verify(workdir: str | pathlib.Path, steps: int | None = None, data_dir: str | None = None,
           say: Callable[[str], None] = print, warn: Callable[[str], None] | None = None) -> int:
    """Re-runs the run in `workdir` and reports; returns the exit status (0 bitwise, 1 differs).
    Bad input raises `JaxcnnError`."""
    warn = warn or (lambda line: print(f"jaxcnn: warning: {line}", file=sys.stderr, flush=True))
    original = read_original(workdir, steps)
    determinism.apply(original.config)  # before the re-run starts JAX's backend
    check_recorded(original, warn)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jaxcnn-verify-") as tmp:
        rerun_dir = pathlib.Path(tmp) / RERUN_DIR
        rerun(original, steps, data_dir, pathlib.Path(tmp))
        here = read_certificate(rerun_dir / CERTIFICATE_FILE) or {}
        for line in environment_warnings(original.certificate, here) if original.certificate else ():
            warn(line)
        params_ok, params_lines = compare_parameters(original, rerun_dir, here, steps)
        mine = compared_records(original.records, steps)
        keys = {(r.get("event"), r.get("step")) for r in mine}
        difference = first_record_difference(mine, compared_records(read_jsonl(rerun_dir / "metrics.jsonl"),
                                                                    steps, keys))
    span = f"its first {steps} steps" if steps is not None else f"all {original.steps} steps"
    say(f"re-ran {span} of '{workdir}' in {time.perf_counter() - start:.1f} s")
    for line in params_lines:
        say(f"parameters, {line}")
    say(f"metrics.jsonl: {'identical' if difference is None else 'first difference at ' + difference} "
        f"({len(mine)} records{'' if steps is None else f' up to step {steps}'})")
    bitwise = params_ok is not False and difference is None
    say("bitwise" if bitwise else "differs")
    return 0 if bitwise else 1
