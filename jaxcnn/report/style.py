"""The look shared by every figure and table of `jaxcnn report`: matplotlib loaded on demand, the
figure size and resolution, the axes of epochs, percentages and losses, and how numbers print.

Both `jaxcnn.report.figures` (a run's figures) and `jaxcnn.report.members` (a run of members)
draw with these, so this module sits below both and neither reaches into the other's helpers.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any, Sequence

from jaxcnn.errors import JaxcnnError

DPI = 100  # pixels per inch of every PNG; the figure sizes are in inches


def pyplot():
    """matplotlib's pyplot on the Agg backend, imported only when a figure is drawn: training never
    needs matplotlib, so it is an optional dependency (`jaxcnn[report]`)."""
    try:
        import matplotlib
    except ImportError as e:
        raise JaxcnnError("jaxcnn report needs matplotlib; pip install 'jaxcnn[report]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def figure(plt, size: tuple[float, float], **kwargs):
    """A figure of `size` inches at `DPI`, laid out by matplotlib so that labels never overlap."""
    return plt.subplots(figsize=size, dpi=DPI, layout="constrained", **kwargs)


def save(plt, fig, path: pathlib.Path) -> pathlib.Path:
    """Writes `fig` to `path` and closes it (a report draws many); a write error is one line."""
    try:
        fig.savefig(path, dpi=DPI)
    except OSError as e:
        raise JaxcnnError(f"cannot write '{path}': {e.strerror or e}") from e
    finally:
        plt.close(fig)
    return path


def epoch_axis(ax, legend_size: int) -> None:
    """An x axis of whole epochs, a light grid, and a legend of the curves drawn (if any)."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=legend_size)


def percent_axis(ax) -> None:
    """A y axis of accuracies (fractions) labelled in percent."""
    from matplotlib.ticker import PercentFormatter
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))


def loss_scale(ax, *series: Sequence[float]) -> str:
    """A log y axis when the losses drawn span more than a factor 20 (else the curve's end is flat);
    returns the label's suffix that says so."""
    values = [v for s in series for v in s if v is not None and math.isfinite(v)]
    if values and min(values) > 0 and max(values) / min(values) > 20:
        from matplotlib.ticker import FuncFormatter
        ax.set_yscale("log")
        # Plain numbers (0.05, not 5×10⁻²), with the 2s and 5s between decades labelled too.
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(
            lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
        return ", log scale"
    return ""


def fmt(value: Any, kind: str) -> str:
    """`value` for a table or title; null (a non-finite number in the run's files) prints as "–"."""
    if value is None:
        return "–"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value)
    if kind == "fixed":
        return f"{value:.4f}"
    if kind in ("accuracy", "percent"):
        return f"{100 * value:.2f}%"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "seconds":
        return f"{value:.1f}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
