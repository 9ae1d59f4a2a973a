"""The end of a run: every member tested, its predictions and `test` record written, then
`summary.json` and `certificate.json`.

A single run's summary has its numbers at the top. A run of members adds `members` (one summary per
member) and `aggregate` (statistics over the seeds, per sweep value), and keeps at the top the
single run's keys where they have one value for the run (the test numbers are the means over the
members when nothing is swept). Each member's predictions go to `members/K/predictions.npz`.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from jaxcnn import models
from jaxcnn.core import ema, stats
from jaxcnn.files import certificate
from jaxcnn.training import profiling
from jaxcnn.core.loop_state import RunLoop
from jaxcnn.core.metrics import classification_metrics, most_confident_mistakes

# How many of the most confidently wrong test images `predictions.npz` keeps for the report.
NUM_MISTAKES_KEPT = 25
# The per-member numbers `aggregate` describes over the seeds of each sweep value.
AGGREGATED = ("test_accuracy", "test_loss", "test_top5_accuracy", "test_macro_f1",
              "test_expected_calibration_error", "best_val_accuracy", "best_val_loss", "epochs_run",
              "raw_test_accuracy", "raw_test_loss")
EXTRA_TEST_METRICS = ("top5_accuracy", "expected_calibration_error", "macro_f1")


def member_field(run: Any, m: int) -> dict[str, int]:
    """The `member` key of member `m`'s records (none in a single run's)."""
    return {"member": int(m)} if run.stacked else {}


def scale_fields(run: Any, state: Any) -> list[dict[str, Any]]:
    """Each member's loss-scaling keys of its records and summary (a float16 run): the loss scale
    in effect and the steps skipped for overflow so far; none without loss scaling."""
    loss_scale = getattr(state, "loss_scale", None)
    if not loss_scale:
        return [{} for _ in range(run.num_members)]
    fetched = {k: np.reshape(v, (-1,)) for k, v in jax.device_get(loss_scale).items()}
    return [{"loss_scale": float(fetched["scale"][m]), "skipped_steps": int(fetched["skipped_steps"][m])}
            for m in range(run.num_members)]


def tested_state(run: Any, state: Any) -> Any:
    """The parameters the test uses: the best epoch's with `early_stopping.restore_best`, else the
    last; with EMA on, the moving averages (the best epoch's kept are those, as validated)."""
    stopping = run.config.early_stopping
    if stopping.enabled and stopping.restore_best and run.best_variables is not None:
        return state.replace(params=run.best_variables[0], batch_stats=run.best_variables[1])
    return ema.view(state)


def raw_test(run: Any, final: Any) -> dict[str, np.ndarray] | None:
    """With EMA on, the test of the last raw (not averaged) weights, which the summary reports
    beside the EMA's (`raw_test_accuracy`, `raw_test_loss`); None with EMA off."""
    return run.evaluate(final, "test") if ema.is_on(final) else None


def ema_fields(run: Any, raw: dict[str, np.ndarray] | None, m: int) -> dict[str, Any]:
    """Member `m`'s EMA keys of the summary and test record: none with EMA off."""
    if raw is None:
        return {}
    return {"ema_decay": run.config.ema.decay, "raw_test_accuracy": float(raw["accuracy"][m]),
            "raw_test_loss": float(raw["loss"][m])}


def finish(run: Any, state: Any, loop: RunLoop) -> tuple[dict[str, Any], Any]:
    """Tests each member's final (or best) parameters, writes its predictions and test record, the
    summary and the certificate; returns the summary and the state tested."""
    final, state = state, tested_state(run, state)
    (test, predictions), raw = run.test(state), raw_test(run, final)
    scaling = scale_fields(run, final)
    summaries = [{**test_member(run, loop, m, test, {k: v[m] for k, v in predictions.items()},
                                ema_fields(run, raw, m)), "scaling": scaling[m]} for m in range(run.num_members)]
    summary = summarize(run, state, loop, summaries[0]) if not run.stacked else summarize_members(run, state, loop,
                                                                                                  summaries)
    run.saver.wait()  # the last save committed (or its failure reported) before the run is marked finished
    run.writer.write_json("summary.json", summary)
    certificate.write(run, final, loop.step)
    return summary, state


def test_member(run: Any, loop: RunLoop, m: int, test: dict[str, np.ndarray],
                predictions: dict[str, np.ndarray], averaged: dict[str, Any]) -> dict[str, Any]:
    """Member `m`'s predictions file and `test` record; returns its test numbers and metrics."""
    dataset = run.dataset
    labels = dataset.test.labels[:len(predictions["predicted"])]
    metrics = classification_metrics(labels, predictions["predicted"], predictions["confidence"],
                                     predictions["in_top_k"], dataset.class_names)
    mistakes = most_confident_mistakes(labels, predictions["predicted"], predictions["confidence"], NUM_MISTAKES_KEPT)
    run.writer.write_predictions(labels, predictions, dataset.class_names, mistakes, dataset.test.images[mistakes],
                                 member=m if run.stacked else None)
    member = loop.members[m]
    extra = {f"test_{key}": metrics[key] for key in EXTRA_TEST_METRICS if key in metrics}
    loss, accuracy = float(test["loss"][m]), float(test["accuracy"][m])
    epoch, step = (member.epochs_run, member.step) if run.stacked else (loop.epochs_run, loop.step)
    run.writer.write({"event": "test", **member_field(run, m), "epoch": epoch, "step": step, "test_loss": loss,
                      "test_accuracy": accuracy, **extra, **averaged, "wall_time_s": run.clock.wall()})
    return {"test_loss": loss, "test_accuracy": accuracy, "test_examples": int(test["count"][m]),
            "extra": extra, "test_metrics": metrics, "ema": averaged}


def summarize(run: Any, state: Any, loop: RunLoop, tested: dict[str, Any]) -> dict[str, Any]:
    """A single run's summary."""
    config, dataset, member = run.config, run.dataset, loop.members[0]
    return {
        "test_accuracy": tested["test_accuracy"],
        "test_loss": tested["test_loss"],
        "test_examples": tested["test_examples"],
        **tested["ema"],  # EMA on: test_* are the averages', raw_test_* the raw weights'
        **tested["scaling"],  # float16: the final loss scale and the steps skipped for overflow
        "best_val_accuracy": member.best_val_accuracy if run.has_val else None,
        "best_val_loss": member.best_val_loss if run.has_val else None,
        "best_epoch": member.stopping.best_epoch if run.has_val else None,
        "epochs_run": loop.epochs_run,
        "stopped_early": loop.epochs_run < config.num_epochs,
        "steps": loop.step,
        "seed": config.seed,
        "parallel": run.executor.name,
        "num_devices": run.executor.num_devices,
        "model": config.model.name,
        "num_params": models.count_params(state.params),
        "dataset": dataset.name,
        "num_train": len(dataset.train),
        "num_val": len(dataset.val),
        "input": run.feeds["train"].kind,
        "normalization": {"mean": config.dataset.mean, "std": config.dataset.std},
        **timing(run),
        "class_names": list(dataset.class_names),
        "test_metrics": tested["test_metrics"],
        "memory": profiling.memory_summary(run, state),
    }


def timing(run: Any) -> dict[str, Any]:
    """Compile, training and validation time; images per second (member-images for members)."""
    clock, images = run.clock, run.config.batch_size * run.num_members
    return {
        "compile_s": clock.compile_s,
        "compile_cache_hit": clock.cache_hit,  # None: the compilation cache is off
        "compilation_cache": {"dir": str(run.cache_dir) if run.cache_dir else None, **clock.cache_counts()},
        "autotune": run.tuned.to_json(),  # the convolutions and compiler options chosen for this machine
        # Training between log steps (no compile, validation or epoch ends), and the epochs' training
        # with log syncs and checkpoint saves; validation's time apart.
        "steady_train_images_per_s": clock.rate(clock.steady_steps * images, clock.steady_s),
        "train_images_per_s": clock.rate(clock.timed_steps * images, clock.train_s),
        "train_s": clock.train_s,
        "validation_s": clock.validation_s,
        "wall_time_s": clock.wall(),
    }


def member_summary(run: Any, loop: RunLoop, m: int, tested: dict[str, Any]) -> dict[str, Any]:
    member, has_val = loop.members[m], run.has_val
    return {**run.members[m].to_json(), "test_accuracy": tested["test_accuracy"], "test_loss": tested["test_loss"],
            **tested["extra"], **tested["ema"], **tested["scaling"],
            "best_val_accuracy": member.best_val_accuracy if has_val else None,
            "best_val_loss": member.best_val_loss if has_val else None,
            "best_epoch": member.stopping.best_epoch if has_val else None,
            "epochs_run": member.epochs_run, "stopped_early": member.epochs_run < run.config.num_epochs,
            "steps": member.step}


def aggregate(summaries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One group per sweep value (one group when nothing is swept): its members, their seeds, and
    `stats.describe` of each of `AGGREGATED` over them."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for summary in summaries:
        groups.setdefault(repr(sorted(summary["sweep"].items())), []).append(summary)
    return [{"sweep": group[0]["sweep"], "members": [s["member"] for s in group], "seeds": [s["seed"] for s in group],
             "metrics": {key: stats.describe([s.get(key) for s in group]) for key in AGGREGATED
                         if any(s.get(key) is not None for s in group)}}
            for group in groups.values()]


def summarize_members(run: Any, state: Any, loop: RunLoop, tested: list[dict[str, Any]]) -> dict[str, Any]:
    """A run of members' summary: `members`, `aggregate`, and the single run's keys where they
    have one value for the run."""
    config = run.config
    summaries = [member_summary(run, loop, m, t) for m, t in enumerate(tested)]
    groups = aggregate(summaries)
    one_group = groups[0]["metrics"] if len(groups) == 1 else {}
    mean = lambda key: one_group[key]["mean"] if key in one_group else None
    sweep = {key: list(dict.fromkeys(s["sweep"][key] for s in summaries)) for key in summaries[0]["sweep"]}
    return {
        "test_accuracy": mean("test_accuracy"), "test_loss": mean("test_loss"),
        "test_examples": tested[0]["test_examples"],
        **({"ema_decay": config.ema.decay, "raw_test_accuracy": mean("raw_test_accuracy"),
            "raw_test_loss": mean("raw_test_loss")} if tested[0]["ema"] else {}),
        "best_val_accuracy": mean("best_val_accuracy"), "best_val_loss": mean("best_val_loss"), "best_epoch": None,
        "epochs_run": max(s["epochs_run"] for s in summaries),
        "stopped_early": all(s["stopped_early"] for s in summaries),
        "steps": loop.step, "seed": config.seed, "seeds": list(dict.fromkeys(s["seed"] for s in summaries)),
        "sweep": sweep, "num_members": len(summaries),
        "parallel": run.executor.name, "num_devices": run.executor.num_devices,
        "model": config.model.name,
        "num_params": models.count_params(jax.tree.map(lambda leaf: leaf[0], state.params)),
        "dataset": run.dataset.name, "num_train": len(run.feeds["train"]), "num_val": len(run.feeds["val"]),
        "input": run.feeds["train"].kind,
        "normalization": {"mean": config.dataset.mean, "std": config.dataset.std},
        **timing(run),
        "class_names": list(run.dataset.class_names),
        "members": summaries,
        "aggregate": groups,
        "memory": profiling.memory_summary(run, state),
    }


def summary_lines(summary: dict[str, Any], workdir: Any) -> list[str]:
    """What `jaxcnn train` prints at the end of a run of members: one line per sweep value."""
    lines = []
    for group in summary["aggregate"]:
        accuracy, loss = group["metrics"]["test_accuracy"], group["metrics"]["test_loss"]
        spread = lambda d: f"{d['mean']:.4f}" + (f" ± {d['std']:.4f}" if d["std"] is not None else "")
        swept = " ".join(f"{key.split('.')[-1]}={value:g}" for key, value in group["sweep"].items())
        lines.append(f"{swept + '  ' if swept else ''}test_accuracy {spread(accuracy)} (min {accuracy['min']:.4f}, "
                     f"max {accuracy['max']:.4f})  test_loss {spread(loss)}  over {accuracy['n']} seeds")
    return lines + [f"({summary['num_members']} members, {summary['test_examples']} test examples, "
                    f"{summary['epochs_run']} epochs, {summary['wall_time_s']:.1f} s)  workdir {workdir}"]


def epoch_line(records: dict[int, dict], num_epochs: int, num_members: int, stacked: bool) -> str:
    """One line per epoch: a single run's numbers, or the means (± standard deviation) over the
    members that trained it."""
    first = next(iter(records.values()))
    if not stacked:
        text = (f"epoch {first['epoch']}/{num_epochs}  step {first['step']}  "
                f"loss {first['train_loss']:.4f}  acc {first['train_accuracy']:.4f}")
        if "val_loss" in first:
            text += f"  val_loss {first['val_loss']:.4f}  val_acc {first['val_accuracy']:.4f}"
        text += f"  lr {first['learning_rate']:.3g}"
        if "loss_scale" in first:  # float16
            text += f"  loss scale {first['loss_scale']:g} ({first['skipped_steps']} skipped)"
        return text + f"  {first['images_per_s']:.0f} img/s"

    def spread(key: str) -> str:
        values = np.asarray([r[key] for r in records.values()])
        return f"{values.mean():.4f}" + (f"±{values.std(ddof=1):.4f}" if len(values) > 1 else "")

    text = (f"epoch {first['epoch']}/{num_epochs}  step {first['step']}  {len(records)}/{num_members} members  "
            f"loss {spread('train_loss')}  acc {spread('train_accuracy')}")
    if "val_loss" in first:
        text += f"  val_loss {spread('val_loss')}  val_acc {spread('val_accuracy')}"
    return text + f"  {first['images_per_s']:.0f} member-img/s"
