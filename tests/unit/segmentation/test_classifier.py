"""Component classifier: preprocessing keeps the shape, training reports what the API promises and survives
interruptions, the ONNX export gives torch's probabilities and is what the Triton repository accepts.

Tiny data (3 rendered crops per type) and 1-2 epochs: these tests check behaviour, not accuracy (the
worker's held-out figure does that at real sizes)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.common.errors import Conflict, InvalidArgument
from services.common.triton.repository import read_onnx_signature
from services.segmentation.domain.classifier import (
    BEST_CHECKPOINT,
    IMAGE_SIZE,
    INPUT_NAME,
    LAST_CHECKPOINT,
    OUTPUT_NAME,
    TrainingOutcome,
    TrainingProgress,
    TrainSpec,
    augment,
    border_colour,
    build_model,
    export_onnx,
    load_image,
    pad_to_frame,
    preprocess,
    rendered_samples,
    stratified_split,
    train_classifier,
)
from services.segmentation.domain.rendering import COMPONENT_TYPES

PROGRESS_KEYS = {
    "acc",
    "loss",
    "epoch",
    "modelEpoch",
    "labels",
    "singleAcc",
    "dataset_num",
    "valAccList",
    "valLossList",
}
SPEC = TrainSpec(epochs=2, batch_size=8, learning_rate=1e-3, seed=0)
THREADS = 1  # more threads than free cores makes torch crawl on a busy 2-core machine
BLUE, GREY = (20, 40, 200), (128, 128, 128)


@pytest.fixture(scope="module")
def samples() -> list[tuple[Image.Image, str]]:
    return rendered_samples(3, seed=0)


def train(
    workdir: Path,
    samples: list[tuple[Image.Image, str]],
    spec: TrainSpec = SPEC,
    stop_when: Callable[[list[dict]], bool] = lambda _reports: False,
) -> tuple[TrainingOutcome, list[dict]]:
    """Run train_classifier; returns the outcome and every reported progress. stop_when(reports so far)
    answers should_stop()."""
    reports: list[dict] = []
    outcome = train_classifier(
        spec,
        samples,
        workdir,
        on_epoch=lambda progress: reports.append(progress.as_dict()),
        should_stop=lambda: stop_when(reports),
        threads=THREADS,
    )
    return outcome, reports


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, samples: list) -> tuple[Path, TrainingOutcome, list[dict]]:
    workdir = tmp_path_factory.mktemp("trained")
    outcome, reports = train(workdir, samples)
    return workdir, outcome, reports


def strip(width: int, height: int) -> Image.Image:
    """A blue rectangle inside a 2-pixel grey border."""
    image = Image.new("RGB", (width, height), GREY)
    image.paste(Image.new("RGB", (width - 4, height - 4), BLUE), (2, 2))
    return image


def blue_mask(view: np.ndarray) -> np.ndarray:
    """HxW: where a preprocessed CHW image is blue (normalised blue well above red; grey is not)."""
    return view[2] > view[0] + 1.0


def blue_rows(view: np.ndarray) -> float:
    """Share of the rows that are mostly blue."""
    return float((blue_mask(view).mean(axis=1) > 0.5).mean())


# --- Preprocessing ----------------------------------------------------------------------------------------


def test_preprocess_gives_a_normalised_float32_nchw_batch() -> None:
    images = [Image.new("RGB", (30, 30), (255, 255, 255)), strip(120, 20), Image.new("L", (7, 50), 0)]
    batch = preprocess(images)
    assert batch.shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE) and batch.dtype == np.float32
    white = (1.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(batch[0], np.broadcast_to(white[:, None, None], batch[0].shape), rtol=1e-5)
    assert preprocess([]).shape == (0, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_a_wide_component_stays_a_strip_framed_in_its_border_colour() -> None:
    wide, tall, square = preprocess([strip(320, 20), strip(20, 320), strip(40, 40)])
    # 320x20 is framed to 320x80 (the geometric mean of the sides): the blue 316x16 becomes a strip over a
    # fifth of the height and the whole width; 20x320 the same, turned.
    assert blue_rows(wide) == pytest.approx(16 / 80, abs=0.03)
    assert blue_mask(wide)[IMAGE_SIZE // 2].mean() > 0.95
    assert np.array_equal(blue_mask(tall), blue_mask(wide).T)
    assert blue_rows(square) == pytest.approx(36 / 40, abs=0.03)
    framed = pad_to_frame(strip(320, 20))
    assert framed.size == (320, 80)
    assert framed.getpixel((160, 5)) == GREY and framed.getpixel((160, 40)) == BLUE


def test_border_colour_is_the_outer_rings_median() -> None:
    image = strip(50, 30)
    image.putpixel((0, 0), (255, 0, 0))  # one odd pixel does not change the median
    assert border_colour(image) == GREY


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    icon = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    icon.paste(Image.new("RGBA", (10, 10), (0, 0, 255, 255)), (5, 5))
    icon.save(tmp_path / "icon.png")
    loaded = load_image(tmp_path / "icon.png")
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == (255, 255, 255) and loaded.getpixel((10, 10)) == (0, 0, 255)


def test_large_images_are_shrunk_and_broken_files_refused(tmp_path: Path) -> None:
    Image.new("RGB", (2000, 500), BLUE).save(tmp_path / "big.png")
    assert load_image(tmp_path / "big.png").size == (4 * IMAGE_SIZE, IMAGE_SIZE)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(InvalidArgument, match=r"broken\.png"):
        load_image(tmp_path / "broken.png")
    with pytest.raises(InvalidArgument):
        load_image(tmp_path / "missing.png")


def test_augmentation_returns_the_model_view_and_is_seeded(samples: list) -> None:
    image = samples[0][0]
    first, again = augment(image, random.Random(5)), augment(image, random.Random(5))
    assert first.size == (IMAGE_SIZE, IMAGE_SIZE)
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(augment(image, random.Random(6))))


def test_rendered_samples_cover_every_type_deterministically(samples: list) -> None:
    assert [label for _image, label in samples] == list(COMPONENT_TYPES) * 3
    again = rendered_samples(3, seed=0)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for (a, _), (b, _) in zip(samples, again, strict=True))
    with pytest.raises(InvalidArgument):
        rendered_samples(-1, seed=0)


# --- Training ---------------------------------------------------------------------------------------------


def test_stratified_split_keeps_a_fifth_of_every_label() -> None:
    labels = ["A"] * 10 + ["B"] * 5 + ["C"]
    train_indices, val_indices = stratified_split(labels, seed=3)
    assert sorted(train_indices + val_indices) == list(range(16))
    assert [labels[i] for i in val_indices].count("A") == 2
    assert [labels[i] for i in val_indices].count("B") == 1
    assert "C" not in [labels[i] for i in val_indices]  # a single sample only trains
    assert stratified_split(labels, seed=3) == (train_indices, val_indices)
    assert stratified_split(labels, seed=4) != (train_indices, val_indices)


def test_training_reports_every_field_consistently(trained: tuple[Path, TrainingOutcome, list[dict]]) -> None:
    workdir, outcome, reports = trained
    assert not outcome.stopped and outcome.best_checkpoint == workdir / BEST_CHECKPOINT
    assert (workdir / LAST_CHECKPOINT).is_file() and (workdir / BEST_CHECKPOINT).is_file()
    assert all(set(report) == PROGRESS_KEYS for report in reports)
    # Reported when each epoch starts and when it has been validated.
    assert [(r["epoch"], len(r["valAccList"])) for r in reports] == [(1, 0), (1, 1), (2, 1), (2, 2)]
    assert reports[0]["acc"] is None and reports[0]["singleAcc"] == [] and reports[0]["modelEpoch"] == 0
    final = reports[-1]
    assert final == outcome.progress.as_dict()
    assert final["labels"] == sorted(COMPONENT_TYPES) and final["dataset_num"] == 30
    assert len(final["valLossList"]) == 2 and len(final["singleAcc"]) == len(final["labels"])
    assert final["modelEpoch"] in (1, 2)
    assert final["acc"] == final["valAccList"][final["modelEpoch"] - 1]
    assert final["loss"] == final["valLossList"][final["modelEpoch"] - 1]
    # One validation crop per type (3 each, a fifth rounded up to one): per-label accuracies are 0 or 1.
    assert set(final["singleAcc"]) <= {0.0, 1.0}
    assert final["acc"] == pytest.approx(sum(final["singleAcc"]) / 10)
    assert TrainingProgress.from_dict(final).as_dict() == final


def test_a_stop_between_epochs_resumes_at_the_next_one_with_the_history(tmp_path: Path, samples: list) -> None:
    first, _reports = train(tmp_path, samples, stop_when=lambda reports: len(reports[-1]["valAccList"]) == 1)
    assert first.stopped and first.best_checkpoint == tmp_path / BEST_CHECKPOINT
    assert len(first.progress.val_acc_list) == 1 and first.progress.model_epoch == 1
    resumed, resumed_reports = train(tmp_path, samples)  # as a new process would, from last.pt
    assert not resumed.stopped
    assert resumed_reports[0]["epoch"] == 2
    assert resumed.progress.val_acc_list[0] == first.progress.val_acc_list[0]
    assert len(resumed.progress.val_acc_list) == 2 and len(resumed.progress.val_loss_list) == 2
    done_again, reports_again = train(tmp_path, samples)  # nothing left to train
    assert reports_again == [] and done_again.progress.as_dict() == resumed.progress.as_dict()


def test_a_stop_inside_an_epoch_saves_last_pt_and_resumes_at_the_same_sample(tmp_path: Path, samples: list) -> None:
    import torch

    checks = itertools.count()
    stopped, _reports = train(tmp_path, samples, stop_when=lambda _reports: next(checks) == 1)  # after a batch
    assert stopped.stopped and stopped.best_checkpoint is None and stopped.progress.acc is None
    state = torch.load(tmp_path / LAST_CHECKPOINT, weights_only=True)
    assert (state["epoch"], state["samples_done"]) == (0, SPEC.batch_size)
    resumed, reports = train(tmp_path, samples, TrainSpec(epochs=1, batch_size=8, learning_rate=1e-3))
    assert not resumed.stopped and [r["epoch"] for r in reports] == [1, 1]
    assert len(resumed.progress.val_acc_list) == 1 and (tmp_path / BEST_CHECKPOINT).is_file()


def test_resume_refuses_a_checkpoint_of_other_data(trained: tuple, samples: list, tmp_path: Path) -> None:
    workdir, _outcome, _reports = trained
    (tmp_path / LAST_CHECKPOINT).write_bytes((workdir / LAST_CHECKPOINT).read_bytes())
    fewer = [sample for sample in samples if sample[1] != "Icon"]
    with pytest.raises(Conflict, match="start over"):
        train(tmp_path, fewer)


def test_bad_training_input_is_refused(tmp_path: Path, samples: list) -> None:
    for bad in ({"epochs": 0}, {"batch_size": 0}, {"learning_rate": 0.0}, {"learning_rate": float("nan")}):
        with pytest.raises(InvalidArgument):
            TrainSpec(**{"epochs": 1, "batch_size": 1, "learning_rate": 1e-3} | bad)
    with pytest.raises(InvalidArgument, match="at least 2"):
        train(tmp_path, [sample for sample in samples if sample[1] == "Button"])
    with pytest.raises(InvalidArgument, match="2 or more"):
        train(tmp_path, samples[:10])  # one crop per type: nothing to validate on
    with pytest.raises(InvalidArgument):
        build_model(1)


# --- Export -----------------------------------------------------------------------------------------------


def test_onnx_export_matches_torch_and_suits_triton(trained: tuple, samples: list, tmp_path: Path) -> None:
    import onnxruntime
    import torch

    workdir, outcome, _reports = trained
    labels = export_onnx(workdir / BEST_CHECKPOINT, tmp_path / "model.onnx")
    assert labels == outcome.progress.labels
    state = torch.load(workdir / BEST_CHECKPOINT, weights_only=True)
    model = build_model(len(labels))
    model.load_state_dict(state["model"])
    model.eval()
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    for count in (1, 5):  # the batch dimension is dynamic
        inputs = preprocess([image for image, _label in samples[:count]])
        (probabilities,) = session.run([OUTPUT_NAME], {INPUT_NAME: inputs})
        with torch.inference_mode():
            expected = torch.softmax(model(torch.from_numpy(inputs)), dim=1).numpy()
        assert probabilities.shape == (count, len(labels))
        np.testing.assert_allclose(probabilities, expected, atol=1e-4)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)

    signature = read_onnx_signature(tmp_path / "model.onnx", IMAGE_SIZE)
    assert signature.batched
    assert [(t.name, t.data_type, t.dims) for t in signature.inputs] == [
        (INPUT_NAME, "TYPE_FP32", (3, IMAGE_SIZE, IMAGE_SIZE))
    ]
    assert [(t.name, t.data_type, t.dims) for t in signature.outputs] == [(OUTPUT_NAME, "TYPE_FP32", (len(labels),))]
    # last.pt (with the optimizer) exports too.
    assert export_onnx(workdir / LAST_CHECKPOINT, tmp_path / "from_last.onnx") == labels


def test_export_refuses_what_is_not_a_classifier_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidArgument, match=r"junk\.pt"):
        export_onnx(tmp_path / "junk.pt", tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()
