"""The figures of `jaxcnn report`: one function per PNG (matplotlib, Agg backend), each reading a
`run_files.Run` and writing one file; `jaxcnn.report.markdown` lays them out in `report.md`."""

from __future__ import annotations

import math
import pathlib
from typing import Any, Callable, Sequence

import numpy as np

from jaxcnn.core.metrics import calibration_bins
from jaxcnn.report.members import epoch_means
from jaxcnn.report.style import DPI, epoch_axis, figure, fmt, loss_scale, percent_axis, pyplot, save  # noqa: F401 (DPI re-exported)
from jaxcnn.files.run_files import Run

# Width, height in inches of each figure of a fixed size; at `DPI` pixels per inch.
FIGURE_SIZES = {
    "curves_by_step": (12.0, 4.8),
    "curves_by_epoch": (12.0, 4.8),
    "learning_rate": (8.0, 4.5),
    "confusion_matrix": (8.5, 7.5),
    "calibration": (6.5, 7.0),
    "compare_validation": (12.0, 5.0),
}
MISTAKE_COLUMNS = 5
TRAIN_COLOR, VAL_COLOR, TEST_COLOR = "tab:blue", "tab:orange", "tab:green"


def _figure(plt, name: str, size: tuple[float, float] | None = None, **kwargs):
    """A figure of `FIGURE_SIZES[name]` (or `size`, for those whose size depends on the data)."""
    return figure(plt, size or FIGURE_SIZES[name], **kwargs)


def _epoch_axis_on_top(ax, run: Run) -> None:
    """A second x axis above a by-step plot, in epochs."""
    ax.set_xlim(left=0)  # from the start of training, so that the epoch axis shows whole epochs
    per_epoch = run.steps_per_epoch
    if per_epoch:
        from matplotlib.ticker import MaxNLocator
        top = ax.secondary_xaxis("top", functions=(lambda s: s / per_epoch, lambda e: e * per_epoch))
        top.xaxis.set_major_locator(MaxNLocator(integer=True))
        top.set_xlabel("epoch")


def plot_curves_by_step(run: Run, path: pathlib.Path) -> pathlib.Path:
    """Loss and accuracy against the training step: the logged training means and each epoch's validation."""
    plt = pyplot()
    fig, (loss_ax, acc_ax) = _figure(plt, "curves_by_step", ncols=2)
    train, epochs = run.events("train"), run.events("epoch")
    if len(train) > len(epochs):
        t_steps, t_loss, t_acc = ([r[k] for r in train] for k in ("step", "loss", "accuracy"))
        every = run.config.get("log_every_steps")
        t_label = f"train (mean of each {every} steps)" if every else "train"
    else:  # no more logged steps than epochs: the epoch means draw the finer curve
        t_steps, t_loss, t_acc = ([r[k] for r in epochs] for k in ("step", "train_loss", "train_accuracy"))
        t_label = "train (epoch mean)"
    val = [r for r in epochs if "val_loss" in r]
    v_steps = [r["step"] for r in val]
    for ax, t_values, v_key in ((loss_ax, t_loss, "val_loss"), (acc_ax, t_acc, "val_accuracy")):
        ax.plot(t_steps, t_values, color=TRAIN_COLOR, label=t_label)
        if val:
            ax.plot(v_steps, [r[v_key] for r in val], "o-", color=VAL_COLOR, markersize=3,
                    label="validation (end of epoch)")
        ax.set_xlabel("training step")
        _epoch_axis_on_top(ax, run)
        ax.grid(alpha=0.3)
    scale = loss_scale(loss_ax, t_loss, [r["val_loss"] for r in val])
    loss_ax.set_ylabel(f"{run.loss_name} loss{scale}")
    loss_ax.legend(loc="upper right")
    acc_ax.set_ylabel("accuracy")
    percent_axis(acc_ax)
    acc_ax.legend(loc="lower right")
    fig.suptitle(f"{run.name}: training curves by step")
    return save(plt, fig, path)


def plot_curves_by_epoch(run: Run, path: pathlib.Path) -> pathlib.Path:
    """Per-epoch train and validation loss and accuracy; the best epoch and the test accuracy marked."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    fig, (loss_ax, acc_ax) = _figure(plt, "curves_by_epoch", ncols=2)
    epochs = run.events("epoch")
    x = [r["epoch"] for r in epochs]
    best = run.summary.get("best_epoch")
    for ax, key in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        ax.plot(x, [r[f"train_{key}"] for r in epochs], "o-", markersize=3, color=TRAIN_COLOR, label="train")
        val = [r for r in epochs if f"val_{key}" in r]
        if val:
            ax.plot([r["epoch"] for r in val], [r[f"val_{key}"] for r in val], "o-", markersize=3,
                    color=VAL_COLOR, label="validation")
        test = run.summary.get(f"test_{key}")
        if test is not None:
            ax.axhline(test, color=TEST_COLOR, linestyle="--", label=f"test: {fmt(test, key)}")
        if best:
            ax.axvline(best, color="gray", linestyle=":", label=f"best validation epoch ({best})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(loc="best")  # clear of the curves and of the best-epoch line
    scale = loss_scale(loss_ax, [r["train_loss"] for r in epochs], [r.get("val_loss") for r in epochs])
    loss_ax.set_ylabel(f"{run.loss_name} loss{scale}")
    loss_ax.set_title("Loss")
    acc_ax.set_ylabel("accuracy")
    percent_axis(acc_ax)
    acc_ax.set_title("Accuracy")
    fig.suptitle(f"{run.name}: training curves by epoch")
    return save(plt, fig, path)


def plot_learning_rate(run: Run, path: pathlib.Path) -> pathlib.Path:
    """The learning rate in effect (after warm-up, decay and plateau cuts) at each logged step."""
    from matplotlib.ticker import FuncFormatter

    plt = pyplot()
    fig, ax = _figure(plt, "learning_rate")
    points = sorted({r["step"]: r["learning_rate"] for r in run.records
                     if r.get("event") in ("train", "epoch") and "learning_rate" in r}.items())
    ax.plot([s for s, _ in points], [lr for _, lr in points], ".-", color=TRAIN_COLOR)
    ax.set_xlabel("training step")
    ax.set_ylabel("learning rate")
    # Full numbers: matplotlib's "1e-3" offset text would sit on the epoch axis's first label.
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.set_ylim(bottom=0)
    _epoch_axis_on_top(ax, run)
    ax.grid(alpha=0.3)
    schedule = run.config.get("schedule", {}).get("name")
    optimizer = run.config.get("optimizer", {}).get("name")
    ax.set_title(f"{run.name}: learning rate ({optimizer}, {schedule} schedule)" if schedule else
                 f"{run.name}: learning rate")
    return save(plt, fig, path)


def plot_confusion_matrix(run: Run, path: pathlib.Path) -> pathlib.Path:
    """The test confusion matrix, each row divided by its true-class count, cells annotated in %."""
    plt = pyplot()
    metrics = run.summary["test_metrics"]
    counts = np.asarray(metrics["confusion_matrix"], np.float64)
    names = [c["class"] for c in metrics["per_class"]]
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    fig, ax = _figure(plt, "confusion_matrix")
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    k = len(names)
    font = 9 if k <= 10 else max(4, int(90 / k))
    for t in range(k):
        for p in range(k):
            if counts[t, p]:
                ax.text(p, t, f"{100 * normalised[t, p]:.0f}" if normalised[t, p] >= 0.01 else "<1",
                        ha="center", va="center", fontsize=font,
                        color="white" if normalised[t, p] > 0.5 else "black")
    long_names = max(len(n) for n in names) > 2
    ax.set_xticks(range(k), names, rotation=45 if long_names else 0, ha="right" if long_names else "center",
                  rotation_mode="anchor")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.colorbar(image, ax=ax, shrink=0.8, format=lambda v, _: f"{100 * v:.0f}%",
                 label="share of the true class's test examples")
    ax.set_title(f"{run.name}: test confusion matrix (% of each row; {int(counts.sum())} examples, "
                 f"accuracy {fmt(metrics['accuracy'], 'accuracy')})", fontsize=10)
    return save(plt, fig, path)


def plot_calibration(run: Run, path: pathlib.Path) -> pathlib.Path:
    """Reliability diagram: accuracy against confidence per bin, with the ECE in the title."""
    from matplotlib.ticker import FuncFormatter

    plt = pyplot()
    predictions = run.predictions
    correct = predictions["labels"] == predictions["predicted"]
    num_bins = run.summary["test_metrics"]["ece_bins"]
    bins = calibration_bins(predictions["confidence"], correct, num_bins)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    filled = bins["count"] > 0
    fig, (ax, count_ax) = _figure(plt, "calibration", nrows=2, sharex=True,
                                  gridspec_kw={"height_ratios": (3, 1)})
    ax.bar(edges[:-1][filled], bins["accuracy"][filled], width=1.0 / num_bins, align="edge",
           color=TRAIN_COLOR, edgecolor="white", label="accuracy in bin")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    percent_axis(ax)
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    # How many examples each bar stands on: a bar of 3 examples says little.
    count_ax.bar(edges[:-1][filled], bins["count"][filled], width=1.0 / num_bins, align="edge",
                 color="gray", edgecolor="white")
    count_ax.set_yscale("log")
    count_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    count_ax.set_ylabel("test examples")
    count_ax.set_xlabel("confidence (probability of the predicted class)")
    count_ax.grid(alpha=0.3)
    ece = run.summary["test_metrics"]["expected_calibration_error"]
    ax.set_title(f"{run.name}: calibration on the test set\nECE {fmt(ece, 'percent')} ({num_bins} bins)")
    return save(plt, fig, path)


def mistakes_figure_size(count: int) -> tuple[float, float]:
    """Inches of the confidently-wrong grid for `count` images (at least one row for the message)."""
    columns = MISTAKE_COLUMNS
    rows = max(1, math.ceil(count / columns))
    return (2.2 * columns, 2.6 * rows + 0.6)


def plot_confident_mistakes(run: Run, path: pathlib.Path) -> pathlib.Path:
    """The most confidently wrong test images with their true and predicted labels."""
    plt = pyplot()
    predictions = run.predictions
    indices, images = predictions["mistake_indices"], predictions["mistake_images"]
    names = predictions["class_names"]
    count = len(indices)
    rows = max(1, math.ceil(count / MISTAKE_COLUMNS))
    fig, axes = _figure(plt, "confident_mistakes", mistakes_figure_size(count),
                        nrows=rows, ncols=MISTAKE_COLUMNS, squeeze=False)
    for position, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if position >= count:
            continue
        i = indices[position]
        image = images[position]
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_title(f"true: {names[predictions['labels'][i]]}\n"
                     f"predicted: {names[predictions['predicted'][i]]}\n"
                     f"({100 * predictions['confidence'][i]:.1f}% sure, test #{i})", fontsize=9)
    errors = int(np.sum(predictions["labels"] != predictions["predicted"]))
    if count == 0:
        axes.flat[0].text(0.0, 0.5, "no misclassified test examples", fontsize=12)
    fig.suptitle(f"{run.name}: the {count} most confidently wrong test images "
                 f"({errors} errors in {len(predictions['labels'])})")
    return save(plt, fig, path)


def plot_validation_comparison(runs: Sequence[Run], path: pathlib.Path) -> pathlib.Path:
    """Validation loss and accuracy by epoch, one line per run."""
    plt = pyplot()
    fig, (loss_ax, acc_ax) = _figure(plt, "compare_validation", ncols=2)
    loss_names = set()
    for run in runs:
        val = [r for r in run.events("epoch") if "val_loss" in r]
        if any("member" in r for r in val):  # a run of members: the mean over its members
            val = epoch_means(val)
        if not val:
            continue
        loss_names.add(run.loss_name)
        epochs = [r["epoch"] for r in val]
        loss_ax.plot(epochs, [r["val_loss"] for r in val], "o-", markersize=3, label=run.name)
        acc_ax.plot(epochs, [r["val_accuracy"] for r in val], "o-", markersize=3, label=run.name)
    all_losses = [r["val_loss"] for run in runs for r in run.events("epoch") if "val_loss" in r]
    scale = loss_scale(loss_ax, all_losses)
    loss_ax.set_ylabel(f"{'/'.join(sorted(loss_names)) or 'validation'} loss{scale}")
    loss_ax.set_title("Validation loss")
    acc_ax.set_ylabel("accuracy")
    percent_axis(acc_ax)
    acc_ax.set_title("Validation accuracy")
    for ax in (loss_ax, acc_ax):
        epoch_axis(ax, legend_size=8)
    fig.suptitle(f"Validation curves of {len(runs)} runs")
    return save(plt, fig, path)


COMPARISON_COLUMNS: tuple[tuple[str, Callable[[Run], Any], str], ...] = (
    ("model", lambda r: r.summary.get("model", r.config.get("model", {}).get("name")), "text"),
    ("dataset", lambda r: r.summary.get("dataset"), "text"),
    ("params", lambda r: r.summary.get("num_params"), "int"),
    ("epochs", lambda r: r.summary.get("epochs_run"), "int"),
    ("test accuracy", lambda r: r.summary.get("test_accuracy"), "accuracy"),
    ("top-5", lambda r: r.summary.get("test_metrics", {}).get("top5_accuracy"), "accuracy"),
    ("macro F1", lambda r: r.summary.get("test_metrics", {}).get("macro_f1"), "number"),
    ("ECE", lambda r: r.summary.get("test_metrics", {}).get("expected_calibration_error"), "percent"),
    ("wall time (s)", lambda r: r.summary.get("wall_time_s"), "seconds"),
    ("images/s", lambda r: r.summary.get("train_images_per_s"), "int"),
)
