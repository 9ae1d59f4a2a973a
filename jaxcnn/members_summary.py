"""The end of a run of members: every member tested, its `test` record, and `summary.json` with
`members` (one summary per member) and `aggregate` (statistics over the seeds, per sweep value)."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from jaxcnn import models, stats
from jaxcnn.members import Member
from jaxcnn.members_state import MembersLoop
from jaxcnn.metrics import classification_metrics

# The per-member numbers `aggregate` describes over the seeds of each sweep value.
AGGREGATED = ("test_accuracy", "test_loss", "test_top5_accuracy", "test_macro_f1",
              "test_expected_calibration_error", "best_val_accuracy", "best_val_loss", "epochs_run")


def predict_members(run: Any, state: Any) -> dict[str, np.ndarray]:
    """Per-example `predicted`, `confidence`, `in_top_k` of every member: (members, examples) each."""
    feed, config = run.feeds["test"], run.config
    outputs = [run.calls.predict(state, inputs, start, num_steps=n)
               for inputs, start, n in feed.eval_calls(config.eval_batch_size, config.steps_per_call)]
    fetched = jax.device_get(outputs)
    return {key: np.concatenate([o[key].reshape(run.num_members, -1) for o in fetched], axis=1)[:, :len(feed)]
            for key in fetched[0]}


def finish(run: Any, state: Any, loop: MembersLoop) -> dict[str, Any]:
    """Tests each member's final (or best) parameters, writes its test record and the summary."""
    config, dataset = run.config, run.dataset
    if run.best_variables is not None:
        state = state.replace(params=run.best_variables[0], batch_stats=run.best_variables[1])
    test = run.evaluate(state, "test")
    predictions = predict_members(run, state)
    summaries = []
    for m, member in enumerate(run.members):
        metrics = classification_metrics(dataset.test.labels, predictions["predicted"][m],
                                         predictions["confidence"][m], predictions["in_top_k"][m], dataset.class_names)
        extra = {f"test_{key}": metrics[key] for key in ("top5_accuracy", "expected_calibration_error", "macro_f1")
                 if key in metrics}
        member_loop = loop.members[m]
        run.writer.write({"event": "test", "member": m, "epoch": member_loop.epochs_run, "step": member_loop.step,
                          "test_loss": float(test["loss"][m]), "test_accuracy": float(test["accuracy"][m]), **extra,
                          "wall_time_s": run.clock.wall()})
        summaries.append(member_summary(member, member_loop, run.has_val, float(test["loss"][m]),
                                        float(test["accuracy"][m]), extra, config.num_epochs))
    summary = summarize(run, state, loop, summaries, int(test["count"][0]))
    run.writer.write_json("summary.json", summary)
    return summary


def member_summary(member: Member, loop: Any, has_val: bool, test_loss: float, test_accuracy: float,
                   extra: dict[str, float], num_epochs: int) -> dict[str, Any]:
    return {**member.to_json(), "test_accuracy": test_accuracy, "test_loss": test_loss, **extra,
            "best_val_accuracy": loop.best_val_accuracy if has_val else None,
            "best_val_loss": loop.best_val_loss if has_val else None,
            "best_epoch": loop.stopping.best_epoch if has_val else None,
            "epochs_run": loop.epochs_run, "stopped_early": loop.epochs_run < num_epochs, "steps": loop.step}


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


def summarize(run: Any, state: Any, loop: MembersLoop, summaries: list[dict[str, Any]],
              test_examples: int) -> dict[str, Any]:
    """The run's summary: the single run's keys where they have one value for the run (the test
    numbers are the means over the members when nothing is swept), `members` and `aggregate`."""
    config, clock = run.config, run.clock
    groups = aggregate(summaries)
    one_group = groups[0]["metrics"] if len(groups) == 1 else {}
    mean = lambda key: one_group[key]["mean"] if key in one_group else None
    sweep = {key: list(dict.fromkeys(s["sweep"][key] for s in summaries)) for key in summaries[0]["sweep"]}
    return {
        "test_accuracy": mean("test_accuracy"),
        "test_loss": mean("test_loss"),
        "test_examples": test_examples,
        "best_val_accuracy": mean("best_val_accuracy"),
        "best_val_loss": mean("best_val_loss"),
        "best_epoch": None,
        "epochs_run": max(s["epochs_run"] for s in summaries),
        "stopped_early": all(s["stopped_early"] for s in summaries),
        "steps": loop.step,
        "seed": config.seed,
        "seeds": list(dict.fromkeys(s["seed"] for s in summaries)),
        "sweep": sweep,
        "num_members": len(summaries),
        "parallel": run.executor.name,
        "num_devices": run.executor.num_devices,
        "model": config.model.name,
        "num_params": models.count_params(jax.tree.map(lambda leaf: leaf[0], state.params)),
        "dataset": run.dataset.name,
        "num_train": len(run.feeds["train"]),
        "num_val": len(run.feeds["val"]),
        "input": run.feeds["train"].kind,
        "normalization": {"mean": config.dataset.mean, "std": config.dataset.std},
        "compile_s": clock.compile_s,
        # Member-images per second: every member's images, all members together.
        "train_images_per_s": (clock.timed_steps * config.batch_size * len(summaries) / clock.train_s
                               if clock.train_s > 0 else None),
        "wall_time_s": clock.wall(),
        "class_names": list(run.dataset.class_names),
        "members": summaries,
        "aggregate": groups,
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
