"""Training charts from results.csv: real PNGs of a sane size for every chart type; clear errors."""

from __future__ import annotations

import io
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from services.common.errors import InvalidArgument, NotFound
from services.training.domain.charts import read_history, render_training_chart
from tests.unit.training.conftest import TrainedRun

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DETECT_COLUMNS = [
    "epoch", "time", "train/box_loss", "train/cls_loss", "train/dfl_loss", "metrics/precision(B)",
    "metrics/recall(B)", "metrics/mAP50(B)", "metrics/mAP50-95(B)", "val/box_loss", "val/cls_loss",
    "val/dfl_loss", "lr/pg0", "lr/pg1", "lr/pg2",
]  # fmt: skip


def results_csv(path: Path, columns: list[str] = DETECT_COLUMNS, epochs: int = 30, pad: bool = True) -> Path:
    """A results.csv shaped like Ultralytics' (older versions right-align names and values with spaces)."""
    rows = [columns]
    for epoch in range(1, epochs + 1):
        decay = math.exp(-epoch / 10)
        row = []
        for name in columns:
            if name == "epoch":
                row.append(str(epoch))
            elif "loss" in name:
                row.append(f"{1.0 + 2 * decay + (0.1 if name.startswith('val') else 0):.5f}")
            elif name.startswith("metrics/"):
                row.append(f"{0.9 - 0.8 * decay:.5f}")
            else:
                row.append(f"{0.01 * decay:.6f}")
        rows.append(row)
    width = 22 if pad else 0
    path.write_text("\n".join(",".join(cell.rjust(width) for cell in row) for row in rows) + "\n")
    return path


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        return image.size


@pytest.mark.parametrize("chart_type", ["loss", "metrics", "all"])
def test_each_chart_type_is_a_sane_png(tmp_path: Path, chart_type: str) -> None:
    width, height = png_size(render_training_chart(results_csv(tmp_path / "results.csv"), chart_type))
    assert 600 <= width <= 2400 and 300 <= height <= 1600


def test_all_is_taller_than_either_part(tmp_path: Path) -> None:
    csv_file = results_csv(tmp_path / "results.csv")
    heights = {kind: png_size(render_training_chart(csv_file, kind))[1] for kind in ("loss", "metrics", "all")}
    assert heights["all"] > max(heights["loss"], heights["metrics"])


def test_padded_column_names_are_stripped(tmp_path: Path) -> None:
    history = read_history(results_csv(tmp_path / "results.csv", pad=True, epochs=3))
    assert "train/box_loss" in history.columns and "metrics/mAP50-95(B)" in history.columns
    assert history.epochs == [1.0, 2.0, 3.0]


def test_other_tasks_columns_and_a_single_epoch(tmp_path: Path) -> None:
    columns = ["epoch", "train/box_loss", "train/seg_loss", "val/box_loss", "val/seg_loss", "metrics/mAP50(M)"]
    csv_file = results_csv(tmp_path / "results.csv", columns, epochs=1, pad=False)
    for chart_type in ("loss", "metrics", "all"):
        png_size(render_training_chart(csv_file, chart_type))


def test_missing_values_are_gaps_not_errors(tmp_path: Path) -> None:
    csv_file = tmp_path / "results.csv"
    csv_file.write_text("epoch,train/box_loss,val/box_loss,metrics/mAP50(B)\n1,2.0,,0.1\n2,1.5,1.7\n3,nan,1.2,0.3\n")
    png_size(render_training_chart(csv_file, "all"))


def test_renders_concurrently(tmp_path: Path) -> None:
    # No pyplot state: figures made on several threads at once must not interfere.
    csv_file = results_csv(tmp_path / "results.csv")
    with ThreadPoolExecutor(4) as pool:
        charts = list(
            pool.map(lambda kind: render_training_chart(csv_file, kind), ["loss", "metrics", "metrics", "all"])
        )
    assert all(chart.startswith(PNG_SIGNATURE) for chart in charts)


def test_unknown_chart_type(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as caught:
        render_training_chart(results_csv(tmp_path / "results.csv"), "bar")
    assert caught.value.detail == "chart_type must be one of loss, metrics, all"


@pytest.mark.parametrize("content", [None, "", "\n\n", ",".join(DETECT_COLUMNS) + "\n"])
def test_no_history_is_not_found(tmp_path: Path, content: str | None) -> None:
    csv_file = tmp_path / "results.csv"
    if content is not None:
        csv_file.write_text(content)
    with pytest.raises(NotFound, match="no training history"):
        render_training_chart(csv_file, "all")


def test_chart_without_its_columns_is_not_found(tmp_path: Path) -> None:
    csv_file = results_csv(tmp_path / "results.csv", ["epoch", "train/box_loss", "val/box_loss"], epochs=3)
    png_size(render_training_chart(csv_file, "loss"))
    with pytest.raises(NotFound, match="metrics"):
        render_training_chart(csv_file, "metrics")
    with pytest.raises(NotFound, match="metrics"):
        render_training_chart(csv_file, "all")


@pytest.mark.slow
def test_chart_of_a_real_training_run(trained_run: TrainedRun) -> None:
    for chart_type in ("loss", "metrics", "all"):
        png_size(render_training_chart(trained_run.results_csv, chart_type))
