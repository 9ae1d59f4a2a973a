"""`jaxcnn bench --to-accuracy TARGET --config CONFIG`: how fast a config trains to a test accuracy.

Each seed trains the config (its `seed` replaced) from scratch on its real data exactly as `jaxcnn
train` does: through its one setup (`run.setup`: data and feeds, model, compiled calls and initial
state), the calls ending at evaluation steps (`plan_calls`). Every `eval_every` steps
(and after the last step) the test split is evaluated; the first evaluation at or above the target
stops the seed. Reported per seed:

- `train_s`: the training calls' time up to that evaluation; the evaluations (`eval_s`) and the
  compilation are not in it;
- `steps`, `epochs`: how far training got; `accuracy` (the stopping evaluation's), `reached`;
- `compile_s`: the first call of the training and of the evaluation program, compiled (or loaded
  from the persistent compilation cache: `compile_cache_hit`) and run once, the training call on a
  copy of the initial state; a shorter call (an epoch's or evaluation interval's last) compiles
  within `train_s` unless `steps_per_call` divides both;
- `wall_s`: seconds from the start of the process (Python's start-up, imports, data loading and
  compilation included) to the stopping evaluation.

Each seed runs in a fresh process (`isolate`), as a user's command would, so `wall_s` is that
command's; the compilation cache then serves later seeds the programs the first one compiled. The
median, minimum and maximum over the seeds summarise them. The test split is only measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

_IMPORTED_AT = time.perf_counter()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxcnn.checks import check_seed_count  # noqa: E402
from jaxcnn.errors import JaxcnnError  # noqa: E402


def process_age() -> float:
    """Seconds since this process started (Linux: its start time in /proc; elsewhere since this
    module was imported)."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return time.perf_counter() - _IMPORTED_AT


@dataclasses.dataclass(frozen=True)
class AccuracySettings:
    """What `jaxcnn bench --to-accuracy` measures; see `jaxcnn bench --help`."""

    target: float
    config: str | None = None
    overrides: tuple[str, ...] = ()
    data_dir: str | None = None
    seeds: int = 5
    seed: int = 0  # the first seed; the others follow it
    eval_every: int = 0  # steps between evaluations; 0: four per epoch
    isolate: bool = True  # each seed in a fresh process


def check_settings(settings: AccuracySettings) -> None:
    if isinstance(settings.target, bool) or not isinstance(settings.target, (int, float)) \
            or not 0 < settings.target <= 1:
        raise JaxcnnError(f"--to-accuracy must be a test accuracy in (0, 1], e.g. 0.99, got {settings.target!r}")
    check_seed_count(settings.seeds)
    for key, lowest in (("seed", 0), ("eval_every", 0)):
        value = getattr(settings, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise JaxcnnError(f"--{key.replace('_', '-')} must be a whole number >= {lowest}, got {value!r}")


def load_seed_config(settings: AccuracySettings, seed: int) -> Any:
    from jaxcnn.config import load_config

    return load_config(settings.config, [*settings.overrides, f"seed={seed}"])


# ---------------------------------------------------------------------------- one seed


@dataclasses.dataclass
class Trainer:
    """One seed's run as `jaxcnn train` builds it (`setup`), before its first call."""

    config: Any
    executor: Any
    calls: Any
    feeds: dict
    steps_per_epoch: int
    state: Any
    cache_on: bool

    def evaluate(self, state: Any) -> tuple[float, float]:
        """(test accuracy, seconds)."""
        from jaxcnn.core.evaluation import evaluate

        started = time.perf_counter()
        result = evaluate(self.calls, state, self.feeds["test"], self.config.eval_batch_size)
        return result["accuracy"], time.perf_counter() - started


def setup(config: Any, data_dir: str | None) -> Trainer:
    """Data, state and compiled calls of `config`: `jaxcnn train`'s own setup (`run.setup`)."""
    from jaxcnn.core.executor import Executor
    from jaxcnn.training.run import setup as setup_program

    executor = Executor(config.parallel)
    executor.check_batch_size(config.batch_size)
    program = setup_program(config, executor, data_dir)
    return Trainer(program.config, executor, program.calls, program.feeds, program.steps_per_epoch, program.state,
                   program.cache_dir is not None)


def warm_up(trainer: Trainer, plan: list[tuple[int, int]]) -> tuple[float, float, bool | None]:
    """Compiles the first training call (run on a copy of the initial state) and the evaluation
    (run on the initial state); returns (seconds, the initial accuracy, whether the cache served all)."""
    from jaxcnn.runtime.compilation import cache_counts
    from jaxcnn.core.steps import zero_train_totals

    config, executor, before = trainer.config, trainer.executor, cache_counts()
    started = time.perf_counter()
    inputs, start = next(iter(trainer.feeds["train"].train_calls(config.seed, 1, config.batch_size, plan[:1])))
    copy = jax.tree.map(jnp.copy, trainer.state)
    jax.block_until_ready(trainer.calls.train(copy, executor.put(zero_train_totals()), inputs, start, plan[0][1]))
    accuracy, _ = trainer.evaluate(trainer.state)
    after = cache_counts()
    hit = (after["hits"] > before["hits"] and after["misses"] == before["misses"]) if trainer.cache_on else None
    return time.perf_counter() - started, accuracy, hit


def train_to_accuracy(config: Any, target: float, eval_every: int = 0, data_dir: str | None = None) -> dict:
    """Trains `config` until a test evaluation reaches `target` (or training ends); one result row."""
    from jaxcnn.core.executor import plan_calls
    from jaxcnn.core.loop_state import due
    from jaxcnn.core.steps import zero_train_totals

    trainer = setup(config, data_dir)
    config, spe = trainer.config, trainer.steps_per_epoch
    every, total = eval_every or max(1, spe // 4), spe * config.num_epochs
    compile_s, accuracy, hit = warm_up(trainer, plan_calls(0, spe, 0, config.steps_per_call, (every,)))
    state, totals = trainer.state, trainer.executor.put(zero_train_totals())
    step, train_s, eval_s, evaluations = 0, 0.0, 0.0, [[0, accuracy]]
    epoch = 0
    while accuracy < target and epoch < config.num_epochs:
        epoch += 1
        started = time.perf_counter()
        plan = plan_calls(0, spe, step, config.steps_per_call, (every,))
        inputs = trainer.feeds["train"].train_calls(config.seed, epoch, config.batch_size, plan)
        for (_, n), (call_inputs, start) in zip(plan, inputs):
            state, totals = trainer.calls.train(state, totals, call_inputs, start, n)
            step += n
            if due(step, every) or step == total:
                jax.block_until_ready(state)
                train_s += time.perf_counter() - started
                accuracy, seconds = trainer.evaluate(state)
                eval_s += seconds
                evaluations.append([step, accuracy])
                if accuracy >= target:
                    break
                started = time.perf_counter()
        else:
            train_s += time.perf_counter() - started
    return {"seed": config.seed, "reached": accuracy >= target, "target": target, "accuracy": accuracy,
            "best_accuracy": max(a for _, a in evaluations), "steps": step, "epochs": step / spe,
            "train_s": train_s, "eval_s": eval_s, "compile_s": compile_s, "compile_cache_hit": hit,
            "wall_s": process_age(), "train_images_per_s": step * config.batch_size / train_s if train_s else None,
            "batch_size": config.batch_size, "steps_per_epoch": spe, "eval_every": every,
            "evaluations": evaluations}


# ---------------------------------------------------------------------------- the seeds


def run_seed(settings: AccuracySettings, seed: int) -> dict:
    """One seed, in this process, or in a fresh one with `settings.isolate`."""
    if not settings.isolate:
        return train_to_accuracy(load_seed_config(settings, seed), settings.target, settings.eval_every,
                                 settings.data_dir)
    request = json.dumps({**dataclasses.asdict(settings), "seed": seed})
    done = subprocess.run([sys.executable, "-m", "jaxcnn.bench.accuracy", request], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise JaxcnnError(f"seed {seed} failed in its process (exit status {done.returncode}): {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(rows: list[dict]) -> dict[str, Any]:
    """Median and spread over the seeds, and how many reached the target."""
    summary = {key: spread([row[key] for row in rows])
               for key in ("train_s", "wall_s", "compile_s", "eval_s", "steps", "epochs", "accuracy")}
    return {"seeds": len(rows), "reached": sum(row["reached"] for row in rows),
            "all_reached": all(row["reached"] for row in rows),
            "mean_accuracy": statistics.fmean(row["accuracy"] for row in rows), **summary}


def run_to_accuracy(settings: AccuracySettings, report: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Every seed, one after the other; `{"env", "results": one row per seed, "summary"}`."""
    from jaxcnn.bench.throughput import environment

    check_settings(settings)
    load_seed_config(settings, settings.seed)  # a bad config or override fails here, in one line
    rows = []
    for seed in range(settings.seed, settings.seed + settings.seeds):
        rows.append(run_seed(settings, seed))
        if report:
            report(rows[-1])
    return {"env": environment(settings), "results": rows, "summary": summarize(rows)}


COLUMNS = (("seed", "seed", "{}"), ("reached", "reached", "{}"), ("accuracy", "accuracy", "{:.4f}"),
           ("train s", "train_s", "{:.2f}"), ("steps", "steps", "{:.0f}"), ("epochs", "epochs", "{:.2f}"),
           ("eval s", "eval_s", "{:.2f}"), ("compile s", "compile_s", "{:.2f}"), ("wall s", "wall_s", "{:.2f}"))


def format_row(row: dict) -> str:
    return "| " + " | ".join(fmt.format(row[key]) for _, key, fmt in COLUMNS) + " |"


def format_table(outcome: dict[str, Any]) -> str:
    """A Markdown table: one row per seed, then the medians."""
    summary = outcome["summary"]
    median = {key: value["median"] for key, value in summary.items() if isinstance(value, dict)}
    median.update(seed="median", reached=f"{summary['reached']}/{summary['seeds']}")
    lines = ["| " + " | ".join(title for title, _, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + [format_row(row) for row in outcome["results"]] + [format_row(median)])


def command(args: argparse.Namespace, overrides: list[str]) -> int:
    """`jaxcnn bench --to-accuracy ...`: one line per seed on stderr, the table on stdout (on stderr
    with `--json -`)."""
    from jaxcnn.files.json_output import check_json_path, text_output, write_json_output

    check_json_path(args.json)
    settings = AccuracySettings(args.to_accuracy, args.config, tuple(overrides), args.data_dir,
                                5 if args.seeds is None else args.seeds,
                                args.seed, args.eval_every, not args.same_process)
    report = lambda row: print(format_row(row), file=sys.stderr, flush=True)  # noqa: E731
    with text_output(args.json):
        outcome = run_to_accuracy(settings, report)
        print(format_table(outcome))
    write_json_output(args.json, outcome)
    return 0


def main(argv: list[str]) -> int:
    """`python -m jaxcnn.bench.accuracy REQUEST`: one seed (`run_seed`'s JSON request), its row as
    JSON on the last line of stdout; a user error as one line on stderr, exit status 2."""
    request = json.loads(argv[0])
    request["overrides"] = tuple(request["overrides"])
    settings = AccuracySettings(**{**request, "isolate": False})
    try:
        row = run_seed(settings, settings.seed)
    except JaxcnnError as e:
        print(f"jaxcnn: error: {e}", file=sys.stderr)
        return 2
    from jaxcnn.files.writers import dumps_json

    print(dumps_json(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
