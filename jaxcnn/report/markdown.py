"""`jaxcnn report`: PNG figures (matplotlib, Agg backend) and a `report.md` linking them.

Reads only the workdir files of finished runs (`config.json`, `metrics.jsonl`, `summary.json`,
`predictions.npz`, through `run_files.load_run`), never the dataset or a checkpoint, so a report
can be made on any machine.
One workdir: its figures and `report.md` go to `WORKDIR/plots/` (or `--out`). Several: each run's
figures go to `OUT/<run name>/`, plus `OUT/compare_validation.png` overlaying their validation
curves, and `OUT/report.md` opens with a table comparing their summaries.
matplotlib is the optional extra `jaxcnn[report]`.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Sequence


from jaxcnn.errors import JaxcnnError
from jaxcnn.files.run_files import Run, load_run
from jaxcnn.report.figures import (COMPARISON_COLUMNS, DPI, FIGURE_SIZES, mistakes_figure_size, plot_calibration,  # noqa: F401
                                   plot_confident_mistakes, plot_confusion_matrix, plot_curves_by_epoch,
                                   plot_curves_by_step, plot_learning_rate, plot_validation_comparison)
from jaxcnn.report.style import fmt
from jaxcnn.files.writers import PREDICTIONS_FILE, write_text_atomic

def comparison_table(runs: Sequence[Run]) -> str:
    """A markdown table of the runs' summaries, one row per run."""
    header = ["run", *(name for name, _, _ in COMPARISON_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        cells = [run.name if run.summary else f"{run.name} (unfinished)"]
        cells += [fmt(get(run), kind) for _, get, kind in COMPARISON_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_class_table(metrics: dict[str, Any]) -> str:
    lines = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for c in metrics["per_class"]:
        cells = [fmt(c[key], "fixed") for key in ("precision", "recall", "f1")]
        lines.append(f"| {c['class']} | {' | '.join(cells)} | {c['support']} |")
    cells = [fmt(metrics.get(f"macro_{key}"), "fixed") for key in ("precision", "recall", "f1")]
    lines.append(f"| **macro average** | {' | '.join(cells)} | {sum(c['support'] for c in metrics['per_class'])} |")
    return "\n".join(lines)


def run_figures(run: Run, out: pathlib.Path) -> tuple[dict[str, pathlib.Path], list[str]]:
    """Writes every figure `run`'s files allow into `out`; returns them by name and notes on the missing."""
    out.mkdir(parents=True, exist_ok=True)
    figures, notes = {}, []
    if run.events("epoch"):
        figures["curves_by_step"] = plot_curves_by_step(run, out / "curves_by_step.png")
        figures["curves_by_epoch"] = plot_curves_by_epoch(run, out / "curves_by_epoch.png")
        figures["learning_rate"] = plot_learning_rate(run, out / "learning_rate.png")
    else:
        notes.append("no epoch finished: no training curves")
    if "test_metrics" in run.summary:
        figures["confusion_matrix"] = plot_confusion_matrix(run, out / "confusion_matrix.png")
    else:
        notes.append("summary.json has no test_metrics (unfinished run, or made before jaxcnn reported them): "
                     "no confusion matrix")
    if run.predictions is not None and "test_metrics" in run.summary:
        figures["calibration"] = plot_calibration(run, out / "calibration.png")
        figures["confident_mistakes"] = plot_confident_mistakes(run, out / "confident_mistakes.png")
    else:
        notes.append(f"no {PREDICTIONS_FILE}: no calibration diagram or confidently-wrong images")
    return figures, notes


FIGURE_TITLES = {
    "curves_by_step": "Loss and accuracy by step",
    "curves_by_epoch": "Loss and accuracy by epoch",
    "learning_rate": "Learning-rate schedule",
    "confusion_matrix": "Test confusion matrix",
    "calibration": "Calibration (reliability diagram)",
    "confident_mistakes": "Most confidently wrong test images",
}


def _run_section(run: Run, figures: dict[str, pathlib.Path], notes: list[str], report_dir: pathlib.Path,
                 heading: str) -> list[str]:
    lines = [f"{heading} {run.name}", "", f"Workdir: `{run.path}`", ""]
    metrics = run.summary.get("test_metrics")
    if metrics:
        top5 = f", top-5 {fmt(metrics['top5_accuracy'], 'accuracy')}" if "top5_accuracy" in metrics else ""
        ece = fmt(metrics["expected_calibration_error"], "percent")
        lines += [f"Test accuracy {fmt(metrics['accuracy'], 'accuracy')}{top5}, macro F1 "
                  f"{fmt(metrics['macro_f1'], 'fixed')}, expected calibration error {ece} "
                  f"({metrics['ece_bins']} bins).", ""]
    for note in notes:
        lines += [f"*{note}.*", ""]
    for name, path in figures.items():
        link = pathlib.PurePosixPath(os.path.relpath(path, report_dir))
        lines += [f"{heading}# {FIGURE_TITLES[name]}", "", f"![{FIGURE_TITLES[name]}]({link})", ""]
    if metrics:
        lines += [f"{heading}# Per-class metrics (test)", "", per_class_table(metrics), ""]
    return lines


def write_report(workdirs: Sequence[str | pathlib.Path], out: str | pathlib.Path | None = None) -> pathlib.Path:
    """Figures and `report.md` for one or more workdirs; returns the path of `report.md`."""
    if not workdirs:
        raise JaxcnnError("jaxcnn report needs at least one WORKDIR")
    runs = [load_run(w) for w in workdirs]
    _unique_names(runs)
    if out is None:
        out = runs[0].path / "plots" if len(runs) == 1 else pathlib.Path("report")
    out = pathlib.Path(out)
    if out.exists() and not out.is_dir():
        raise JaxcnnError(f"--out '{out}' is a file, expected a folder for the figures and report.md")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JaxcnnError(f"--out '{out}' cannot be created: {e.strerror}; pass a writable directory") from e
    lines = ["# jaxcnn report", ""]
    if len(runs) == 1:
        lines += ["## Summary", "", comparison_table(runs), ""]
        lines += _section(runs[0], out, out)
    else:
        compare = plot_validation_comparison(runs, out / "compare_validation.png")
        lines += ["## Comparison", "", comparison_table(runs), "",
                  f"![Validation curves of every run]({compare.name})", ""]
        for run in runs:
            lines += _section(run, out / run.name, out)
    report = out / "report.md"
    write_text_atomic(report, "\n".join(lines))
    return report


def _section(run: Run, figures_dir: pathlib.Path, report_dir: pathlib.Path) -> list[str]:
    """A run's figures in `figures_dir` and its section of report.md; a run of members (seeds and
    sweeps) gets its own (`jaxcnn.report.members`)."""
    from jaxcnn.report.members import is_members_run, members_section

    if is_members_run(run):
        return members_section(run, figures_dir, report_dir, "##")
    figures, notes = run_figures(run, figures_dir)
    return _run_section(run, figures, notes, report_dir, "##")


def _unique_names(runs: Sequence[Run]) -> None:
    """Runs with the same folder name get `-2`, `-3`, ... so their figure folders do not collide."""
    seen: dict[str, int] = {}
    for run in runs:
        count = seen.get(run.name, 0) + 1
        seen[run.name] = count
        if count > 1:
            run.name = f"{run.name}-{count}"
