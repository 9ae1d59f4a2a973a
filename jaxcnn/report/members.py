"""`jaxcnn report` for a run of members (seeds and sweeps, `jaxcnn.core.members`): curves as mean ± one
standard deviation over the seeds of each sweep value, final test accuracy against a swept value
with error bars, and tables of the aggregate (per sweep value) and of every member."""

from __future__ import annotations

import os
import pathlib
from typing import Any, Sequence

import numpy as np

from jaxcnn.report.style import epoch_axis, figure, fmt, loss_scale, percent_axis, pyplot, save
from jaxcnn.files.run_files import Run

FIGURE_SIZES = {"members_curves": (12.0, 4.8), "sweep": (7.0, 4.8)}
MEMBER_FIGURE_TITLES = {"members_curves": "Loss and accuracy by epoch (mean ± std over seeds)",
                        "sweep": "Test accuracy against the swept value (mean ± std over seeds)"}


def is_members_run(run: Run) -> bool:
    """Whether `run` trained members (its summary has `members`, or its records a `member` field)."""
    return "members" in run.summary or any("member" in r for r in run.records[:50])


def group_label(sweep: dict[str, Any]) -> str:
    return " ".join(f"{key.split('.')[-1]}={value:g}" for key, value in sweep.items()) or "all seeds"


def member_groups(run: Run) -> list[tuple[str, list[int]]]:
    """(label, member indices) per sweep value: from the summary, else (unfinished) one group of all."""
    if run.summary.get("aggregate"):
        return [(group_label(g["sweep"]), list(g["members"])) for g in run.summary["aggregate"]]
    return [("all seeds", sorted({r["member"] for r in run.records if "member" in r}))]


def epoch_band(run: Run, members: Sequence[int], key: str) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(epochs, mean, std) of `key` in the epoch records of `members` (the members still training
    at each epoch; std 0 where one is)."""
    by_epoch: dict[int, list[float]] = {}
    for record in run.events("epoch"):
        if record.get("member") in members and record.get(key) is not None:
            by_epoch.setdefault(record["epoch"], []).append(record[key])
    epochs = sorted(by_epoch)
    mean = np.asarray([np.mean(by_epoch[e]) for e in epochs])
    std = np.asarray([np.std(by_epoch[e], ddof=1) if len(by_epoch[e]) > 1 else 0.0 for e in epochs])
    return epochs, mean, std


def epoch_means(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validation epoch records of several members as one record per epoch: their means."""
    epochs = sorted({r["epoch"] for r in records})
    return [{"epoch": e, **{key: float(np.mean([r[key] for r in records if r["epoch"] == e and r[key] is not None]))
                            for key in ("val_loss", "val_accuracy")}} for e in epochs]


def plot_member_curves(run: Run, path: pathlib.Path) -> pathlib.Path:
    """Train (dashed) and validation (solid) loss and accuracy by epoch, one colour per sweep value."""
    plt = pyplot()
    fig, (loss_ax, acc_ax) = figure(plt, FIGURE_SIZES["members_curves"], ncols=2)
    losses = []
    for number, (label, members) in enumerate(member_groups(run)):
        color = f"C{number % 10}"
        for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
            for split, style in (("train", "--"), ("val", "-")):
                epochs, mean, std = epoch_band(run, members, f"{split}_{metric}")
                if not epochs:
                    continue
                losses += list(mean) if metric == "loss" else []
                ax.plot(epochs, mean, style, color=color, label=f"{label} {'validation' if split == 'val' else split}")
                ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.15 if split == "val" else 0.07)
    scale = loss_scale(loss_ax, losses)
    loss_ax.set_ylabel(f"{run.loss_name} loss{scale}")
    acc_ax.set_ylabel("accuracy")
    percent_axis(acc_ax)
    for ax, title in ((loss_ax, "Loss"), (acc_ax, "Accuracy")):
        ax.set_title(title)
        epoch_axis(ax, legend_size=7)
    fig.suptitle(f"{run.name}: mean ± std over the seeds of each sweep value")
    return save(plt, fig, path)


def plot_sweep(run: Run, key: str, path: pathlib.Path) -> pathlib.Path:
    """Mean test accuracy (± std over the seeds) against the values of the swept `key`."""
    plt = pyplot()
    fig, ax = figure(plt, FIGURE_SIZES["sweep"])
    groups = [(g["sweep"][key], g["metrics"]["test_accuracy"]) for g in run.summary["aggregate"]]
    values = [value for value, _ in groups]
    ax.errorbar(values, [m["mean"] for _, m in groups], yerr=[m["std"] or 0.0 for _, m in groups],
                fmt="o-", capsize=4)
    if min(values) > 0 and max(values) / min(values) >= 10:
        ax.set_xscale("log")
    ax.set_xlabel(key)
    ax.set_ylabel("test accuracy")
    percent_axis(ax)
    ax.grid(alpha=0.3)
    ax.set_title(f"{run.name}: test accuracy against {key}")
    return save(plt, fig, path)


def aggregate_table(run: Run) -> str:
    """One row per sweep value: its seeds and the statistics of the test and validation numbers."""
    lines = ["| sweep value | seeds | test accuracy (mean ± std) | 95% CI | min | max | test loss (mean ± std) | "
             "best val accuracy (mean ± std) | epochs (mean) |", "|---|---|---|---|---|---|---|---|---|"]
    for group in run.summary.get("aggregate", []):
        metrics = group["metrics"]

        def spread(key: str, kind: str) -> str:
            m = metrics.get(key)
            if not m or m["mean"] is None:
                return "–"
            return fmt(m["mean"], kind) + (f" ± {fmt(m['std'], kind)}" if m["std"] is not None else "")

        accuracy = metrics["test_accuracy"]
        ci = "–" if accuracy["ci95"] is None else f"{fmt(accuracy['ci95'][0], 'accuracy')} – " \
                                                   f"{fmt(accuracy['ci95'][1], 'accuracy')}"
        epochs = metrics.get("epochs_run", {}).get("mean")
        lines.append(f"| {group_label(group['sweep'])} | {', '.join(map(str, group['seeds']))} | "
                     f"{spread('test_accuracy', 'accuracy')} | {ci} | {fmt(accuracy['min'], 'accuracy')} | "
                     f"{fmt(accuracy['max'], 'accuracy')} | {spread('test_loss', 'fixed')} | "
                     f"{spread('best_val_accuracy', 'accuracy')} | {'–' if epochs is None else f'{epochs:.1f}'} |")
    return "\n".join(lines)


def members_table(run: Run) -> str:
    lines = ["| member | seed | sweep value | test accuracy | test loss | best val accuracy | epochs |",
             "|---|---|---|---|---|---|---|"]
    for m in run.summary.get("members", []):
        lines.append(f"| {m['member']} | {m['seed']} | {group_label(m['sweep'])} | {fmt(m['test_accuracy'], 'accuracy')} "
                     f"| {fmt(m['test_loss'], 'fixed')} | {fmt(m.get('best_val_accuracy'), 'accuracy')} | "
                     f"{m['epochs_run']} |")
    return "\n".join(lines)


def members_section(run: Run, out: pathlib.Path, report_dir: pathlib.Path, heading: str) -> list[str]:
    """The figures of a run of members in `out`, and its section of report.md."""
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    if run.events("epoch"):
        figures["members_curves"] = plot_member_curves(run, out / "members_curves.png")
    swept = run.summary.get("sweep", {})
    if len(swept) == 1 and len(next(iter(swept.values()))) > 1:
        figures["sweep"] = plot_sweep(run, next(iter(swept)), out / "sweep.png")
    lines = [f"{heading} {run.name}", "", f"Workdir: `{run.path}`", ""]
    if run.summary:
        lines += [f"{run.summary['num_members']} members in one program (seeds "
                  f"{', '.join(map(str, run.summary['seeds']))}"
                  + "".join(f"; {key} {', '.join(f'{v:g}' for v in values)}" for key, values in swept.items())
                  + ").", "", f"{heading}# Per sweep value", "", aggregate_table(run), ""]
    else:
        lines += ["*unfinished run: no summary.json, curves only.*", ""]
    for name, path in figures.items():
        link = pathlib.PurePosixPath(os.path.relpath(path, report_dir))
        lines += [f"{heading}# {MEMBER_FIGURE_TITLES[name]}", "", f"![{MEMBER_FIGURE_TITLES[name]}]({link})", ""]
    if run.summary:
        lines += [f"{heading}# Every member", "", members_table(run), ""]
    return lines
