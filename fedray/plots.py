"""Driver-side PNG plots: confusion matrix, metric curves, per-client accuracy, count heatmaps.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas directly, never through
pyplot, so plotting neither switches the process-wide backend nor keeps figures alive.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Beyond these sizes cell text and tick labels become unreadable, so they are left out.
ANNOTATE_MAX_CELLS = 400
TICKS_MAX = 60


class PlotError(ValueError):
    """Input that cannot be plotted; the message says which argument is wrong."""


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise PlotError(f"plot path must end in .png, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def save_heatmap(
    matrix: np.ndarray,
    path: str | Path,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    fmt: str = "d",
    vmax: float | None = None,
) -> Path:
    """Save a 2-D matrix as a heatmap PNG, its non-zero cells annotated when it is small."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise PlotError(f"heatmap needs a non-empty 2-D matrix, got shape {matrix.shape}")
    if not np.issubdtype(matrix.dtype, np.number):
        raise PlotError(f"heatmap needs a numeric matrix, got dtype {matrix.dtype}")
    rows, cols = matrix.shape
    for name, labels, size in (("row_labels", row_labels, rows), ("col_labels", col_labels, cols)):
        if labels is not None and len(labels) != size:
            raise PlotError(f"{name} has {len(labels)} entries, matrix has {size}")
    # room for each labelled row and column; unlabelled ones (too many) get a plain image
    width = min(4 + 0.45 * cols, 24) if cols <= TICKS_MAX else 12
    height = min(3 + 0.4 * rows, 24) if rows <= TICKS_MAX else 8
    fig = _new_figure(width, height)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="viridis", aspect="auto", vmin=0, vmax=vmax)
    fig.colorbar(image, ax=ax)
    if matrix.size <= ANNOTATE_MAX_CELLS:
        top = float(matrix.max()) if vmax is None else vmax
        for (i, j), value in np.ndenumerate(matrix):
            if value == 0:  # empty cells stay dark and blank: the non-zero ones stand out
                continue
            # Dark text on the bright end of viridis, light text elsewhere.
            colour = "black" if top > 0 and value > 0.6 * top else "white"
            text = format(int(value), fmt) if fmt == "d" else format(float(value), fmt)
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=7)
    if row_labels is not None and rows <= TICKS_MAX:
        ax.set_yticks(range(rows), labels=list(row_labels))
    if col_labels is not None and cols <= TICKS_MAX:
        ax.set_xticks(range(cols), labels=list(col_labels), rotation=90)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)


def plot_confusion_matrix(
    cm: np.ndarray, class_names: Sequence[str], path: str | Path, normalize: bool = True
) -> Path:
    """Confusion matrix PNG (rows: true class, columns: predicted), row-normalised by default."""
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise PlotError(f"confusion matrix must be square (C, C), got shape {cm.shape}")
    if len(class_names) != cm.shape[0]:
        raise PlotError(
            f"class_names has {len(class_names)} entries, confusion matrix has {cm.shape[0]}"
        )
    if np.any(cm < 0):
        raise PlotError("confusion matrix has negative counts")
    if normalize:
        totals = cm.sum(axis=1, keepdims=True).astype(np.float64)
        # A class absent from the targets keeps an all-zero row rather than NaNs.
        shown = np.divide(cm, totals, out=np.zeros(cm.shape), where=totals > 0)
        fmt, vmax, title = ".2f", 1.0, "confusion matrix (row-normalised)"
    else:
        shown, fmt, vmax, title = cm, "d", None, "confusion matrix (counts)"
    return save_heatmap(
        shown,
        path,
        row_labels=list(class_names),
        col_labels=list(class_names),
        xlabel="predicted",
        ylabel="true",
        title=title,
        fmt=fmt,
        vmax=vmax,
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def plot_curves(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    x: str = "round",
    ys: Sequence[str] = ("val/acc",),
    xlabel: str | None = None,
    cumulative_x: bool = False,
    labels: Mapping[str, str] | None = None,
) -> Path:
    """Line plot of metrics.jsonl rows: each key in `ys` against `x` (rows lacking either skipped).

    With `cumulative_x`, x values are summed over the rows in order first, e.g. to plot against
    total bytes sent when each row carries only that round's `comm/bytes_up` (`comm/bytes_total`
    is already a running total: plot it as is). `labels` names a
    key's line in the legend (the key itself otherwise).
    """
    if isinstance(ys, str):
        ys = (ys,)
    if not ys:
        raise PlotError("plot_curves needs at least one key in ys")
    xs_seen = [row[x] for row in rows if _is_number(row.get(x))]
    if not xs_seen:
        seen = sorted({key for row in rows for key in row})
        raise PlotError(f"no row has a numeric {x!r}; keys seen: {seen}")
    fig = _new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    plotted = 0
    for key in ys:
        px, py, running = [], [], 0.0
        for row in rows:
            xv = row.get(x)
            if not _is_number(xv):
                continue
            running += xv
            if _is_number(row.get(key)):
                px.append(running if cumulative_x else xv)
                py.append(row[key])
        if px:
            ax.plot(px, py, marker="o", markersize=3, label=(labels or {}).get(key, key))
            plotted += 1
    if not plotted:
        raise PlotError(f"no row has both {x!r} and any of {list(ys)} as numbers")
    ax.set_xlabel(xlabel or (f"cumulative {x}" if cumulative_x else x))
    ax.set_ylabel(ys[0] if len(ys) == 1 else "value")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_per_client(acc_by_client: Mapping[int, float], path: str | Path) -> Path:
    """Bar chart of one metric (accuracy) per client id, with the mean as a dashed line."""
    if not acc_by_client:
        raise PlotError("plot_per_client needs at least one client")
    bad = {k: v for k, v in acc_by_client.items() if not _is_number(v)}
    if bad:
        raise PlotError(f"per-client values must be finite numbers, got {bad}")
    ids = sorted(acc_by_client)
    values = [float(acc_by_client[i]) for i in ids]
    fig = _new_figure(min(3 + 0.35 * len(ids), 24), 4.0)
    ax = fig.add_subplot()
    ax.bar(range(len(ids)), values, color="tab:blue")
    mean = float(np.mean(values))
    ax.axhline(mean, color="tab:red", linestyle="--", label=f"mean {mean:.3f}")
    if len(ids) <= TICKS_MAX:
        ax.set_xticks(range(len(ids)), labels=[str(i) for i in ids])
    if all(0.0 <= v <= 1.0 for v in values):
        ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("client")
    ax.set_ylabel("accuracy")
    ax.legend()
    return _save(fig, path)
