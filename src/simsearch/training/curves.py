"""The loss and validation curves of a run, drawn from its ``metrics.csv`` into one PNG.

The engine redraws ``RUN/curves.png`` after every epoch, so a person (or a notebook) sees how a run
goes without starting TensorBoard. Drawn with matplotlib's Agg canvas on a bare ``Figure``: no
pyplot, no global backend switch, no display needed; written through the one atomic writer, so a
reader never sees half a PNG.
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

from simsearch.utils.fs import write_bytes_atomic

__all__ = ["CURVES_DPI", "CURVES_SIZE_IN", "VAL_COLUMNS", "plot_curves", "read_curves"]

VAL_COLUMNS = {"r1": "R@1", "r5": "R@5", "map": "mAP"}
CURVES_SIZE_IN = (10.0, 4.0)  # inches; at CURVES_DPI the PNG is 1000 x 400 pixels
CURVES_DPI = 100


def _number(text: str | None) -> float:
    """A metrics.csv cell as a float; an empty or missing cell is NaN (a gap in the curve)."""
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def read_curves(metrics_csv: str | os.PathLike) -> dict[str, list[float]]:
    """The columns ``epoch``, ``loss`` and the validation metrics present, as floats (NaN for a blank cell).

    Epoch -1 is the untrained baseline (validation only). A column the file lacks is left out.
    """
    with open(metrics_csv, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        header = reader.fieldnames or []
    if not rows or "epoch" not in header:
        raise ValueError(f"{metrics_csv}: no metrics rows to plot (expected a header with 'epoch' and rows)")
    return {name: [_number(r.get(name)) for r in rows] for name in ("epoch", "loss", *VAL_COLUMNS)
            if name in header}


def plot_curves(metrics_csv: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Draw training loss (left) and validation R@1, R@5, mAP (right) against the epoch; returns ``out_png``.

    A run without validation (no metric columns, or only blank cells) gets a right panel that says
    so; one epoch draws single markers. ``out_png`` is replaced atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    cols = read_curves(metrics_csv)
    epochs = cols["epoch"]
    fig = Figure(figsize=CURVES_SIZE_IN, dpi=CURVES_DPI)
    FigureCanvasAgg(fig)
    ax_loss, ax_val = fig.subplots(1, 2)
    _panel(ax_loss, epochs, {"loss": cols.get("loss", [])}, "training loss (epoch mean)",
           empty="no training epoch yet")
    _panel(ax_val, epochs, {label: cols[key] for key, label in VAL_COLUMNS.items() if key in cols},
           "validation (epoch -1 = untrained)", empty="no validation (data.val_fraction = 0)")
    known = [e for e in epochs if not math.isnan(e)]
    for ax in (ax_loss, ax_val):  # both panels on the same whole-epoch axis, half an epoch of margin
        if known:
            ax.set_xlim(min(known) - 0.5, max(known) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    fig.suptitle(Path(metrics_csv).parent.name or str(metrics_csv))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.84, wspace=0.22)  # fixed: tight_layout costs
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=CURVES_DPI)
    return write_bytes_atomic(out_png, buf.getvalue(), force=True)


def _panel(ax, epochs: list[float], series: dict[str, list[float]], title: str, empty: str) -> None:
    """One axis with a line and markers per series that has at least one number; ``empty`` when none has."""
    drawn = False
    for label, values in series.items():
        points = [(e, v) for e, v in zip(epochs, values) if not (math.isnan(e) or math.isnan(v))]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
            drawn = True
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.grid(True, alpha=0.3)
    if drawn:
        if len(series) > 1:
            ax.legend(loc="best")
    else:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
