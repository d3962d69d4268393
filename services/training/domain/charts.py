"""Training charts (PNG) from Ultralytics' per-epoch results.csv.

Columns are read by pattern, not by a fixed list, so every task's file works: losses are `train/<kind>` and
`val/<kind>` columns whose kind ends in "loss" (box_loss, cls_loss, dfl_loss, seg_loss...), metrics are
`metrics/...` columns (precision(B), recall(B), mAP50(B), mAP50-95(B), accuracy_top1...).

Errors: an unknown chart_type is InvalidArgument; a model without usable history (no results.csv, no rows,
no columns for the chart) is NotFound("The model has no training history ...").

Figures are built with matplotlib.figure.Figure and the Agg canvas directly: no pyplot, so no global figure
state is shared between calls or threads.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from services.common.errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.gridspec import SubplotSpec

CHART_TYPES = ("loss", "metrics", "all")
_LOSS_COLUMN = re.compile(r"^(train|val)/(\w*loss\w*)$")
_DPI = 100


@dataclass(frozen=True)
class History:
    epochs: list[float]
    columns: dict[str, list[float]]  # stripped column name -> one value per epoch (nan when missing)


def render_training_chart(results_csv: Path, chart_type: str) -> bytes:
    """A PNG of the losses, the metrics, or both (`all`: losses above, metrics below)."""
    if chart_type not in CHART_TYPES:
        raise InvalidArgument("chart_type must be one of loss, metrics, all")
    history = read_history(results_csv)
    losses = _loss_kinds(history)
    metrics = [name for name in history.columns if name.startswith("metrics/")]
    if chart_type in ("loss", "all") and not losses:
        raise NotFound("The model has no training history of losses")
    if chart_type in ("metrics", "all") and not metrics:
        raise NotFound("The model has no training history of metrics")

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = max(len(losses), 1)
    if chart_type == "loss":
        figure = Figure(figsize=(max(8.0, 4.0 * columns), 4.2), dpi=_DPI, layout="constrained")
        grid = figure.add_gridspec(1, columns)
        _plot_losses(figure, grid[0, :], history, losses)
        figure.suptitle("Training and validation losses")
    elif chart_type == "metrics":
        figure = Figure(figsize=(9.0, 5.0), dpi=_DPI, layout="constrained")
        _plot_metrics(figure.add_subplot(), history, metrics)
        figure.suptitle("Validation metrics")
    else:
        figure = Figure(figsize=(max(10.0, 4.0 * columns), 8.5), dpi=_DPI, layout="constrained")
        grid = figure.add_gridspec(2, 1, height_ratios=(1, 1.1))
        _plot_losses(figure, grid[0, 0], history, losses)
        _plot_metrics(figure.add_subplot(grid[1, 0]), history, metrics)
        figure.suptitle("Training history")
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def read_history(results_csv: Path) -> History:
    """results.csv as columns; NotFound when the model has no (usable) history."""
    try:
        text = results_csv.read_text(encoding="utf-8-sig")
    except FileNotFoundError as error:
        raise NotFound("The model has no training history (no results.csv)") from error
    except (OSError, UnicodeDecodeError) as error:
        raise NotFound(f"The model has no readable training history ({type(error).__name__})") from error
    rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    if len(rows) < 2:
        raise NotFound("The model has no training history (results.csv has no epochs)")
    # Some Ultralytics versions pad the names ("      epoch", "  train/box_loss").
    header = [name.strip() for name in rows[0]]
    columns: dict[str, list[float]] = {name: [] for name in header if name}
    for row in rows[1:]:
        for index, name in enumerate(header):
            if name:
                columns[name].append(_number(row[index]) if index < len(row) else math.nan)
    epochs = columns.pop("epoch", None)
    if epochs is None or not all(math.isfinite(epoch) for epoch in epochs):
        epochs = [float(index) for index in range(1, len(rows))]
    return History(epochs, columns)


def _number(cell: str) -> float:
    try:
        return float(cell.strip())
    except ValueError:
        return math.nan


def _loss_kinds(history: History) -> list[str]:
    """Loss kinds in column order, e.g. ["box_loss", "cls_loss", "dfl_loss"], each with some data."""
    kinds: list[str] = []
    for name, values in history.columns.items():
        match = _LOSS_COLUMN.match(name)
        if match and match.group(2) not in kinds and any(math.isfinite(value) for value in values):
            kinds.append(match.group(2))
    return kinds


def _plot_losses(figure: Figure, area: SubplotSpec, history: History, kinds: list[str]) -> None:
    grid = area.subgridspec(1, len(kinds))
    for index, kind in enumerate(kinds):
        axes = figure.add_subplot(grid[0, index])
        for split, style in (("train", "-"), ("val", "--")):
            values = history.columns.get(f"{split}/{kind}")
            if values and any(math.isfinite(value) for value in values):
                axes.plot(history.epochs, values, style, marker="o", markersize=3, label=split)
        _decorate(axes, history, kind.replace("_", " "), "loss")


def _plot_metrics(axes: Axes, history: History, metrics: list[str]) -> None:
    finite: list[float] = []
    for name in metrics:
        values = history.columns[name]
        finite += [value for value in values if math.isfinite(value)]
        axes.plot(history.epochs, values, marker="o", markersize=3, label=name.removeprefix("metrics/"))
    if finite and min(finite) >= 0 and max(finite) <= 1:
        axes.set_ylim(-0.02, 1.02)  # fractions: a fixed scale makes runs comparable
    _decorate(axes, history, "metrics", "value")


def _decorate(axes: Axes, history: History, title: str, ylabel: str) -> None:
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    if len(set(history.epochs)) == 1:  # a one-epoch run: matplotlib would zoom into +-5% of that epoch
        axes.set_xlim(history.epochs[0] - 1, history.epochs[0] + 1)
    axes.set_title(title)
    axes.set_xlabel("epoch")
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    axes.legend()
