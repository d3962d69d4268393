"""services.inference.domain.detection (decoding itself: tests/unit/test_images.py): letterbox geometry,
postprocessing on synthetic model outputs, and parity with Ultralytics itself: a real (random-weight) YOLOv8n
exported to ONNX, run on real photos through our letterbox -> onnxruntime -> postprocess and through
`YOLO(model.onnx).predict`."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from services.common.errors import InvalidArgument
from services.common.images import decode_image, read_header
from services.inference.domain.detection import (
    Detection,
    Letterbox,
    check_thresholds,
    draw_detections,
    encode_jpeg,
    letterbox,
    postprocess,
)
from services.training.ultralytics_env import ultralytics_environment

LIMIT = 64_000_000
PARITY_IMGSZ = 320


def random_bgr(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# --- letterbox ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "size", "expected"),
    [
        (640, 480, 320, Letterbox(0.5, 0.0, 40.0, 640, 480)),
        (333, 777, 320, Letterbox(320 / 777, 91.0, 0.0, 333, 777)),  # 137 px wide: 183 px of padding, 91 | 92
        (777, 333, 320, Letterbox(320 / 777, 0.0, 91.0, 777, 333)),
        (320, 320, 320, Letterbox(1.0, 0.0, 0.0, 320, 320)),
        (100, 50, 320, Letterbox(3.2, 0.0, 80.0, 100, 50)),  # scaled up
        (1, 3000, 64, Letterbox(64 / 3000, 31.0, 0.0, 1, 3000)),  # still one pixel wide
    ],
)
def test_letterbox_geometry(width: int, height: int, size: int, expected: Letterbox) -> None:
    tensor, box = letterbox(random_bgr(height, width), size)
    assert box == expected
    assert tensor.shape == (3, size, size) and tensor.dtype == np.float32 and tensor.flags.c_contiguous
    pad = np.float32(114) / np.float32(255)
    left, top = int(box.pad_x), int(box.pad_y)
    inside = np.zeros((size, size), bool)
    inside[top : top + box.resized_height, left : left + box.resized_width] = True
    assert np.all(tensor[:, ~inside] == pad)


@pytest.mark.parametrize(
    ("width", "height", "size", "shape", "expected"),
    [
        (640, 480, 640, (480, 640), Letterbox(1.0, 0.0, 0.0, 640, 480)),  # no padding at all
        (810, 1080, 640, (640, 480), Letterbox(640 / 1080, 0.0, 0.0, 810, 1080)),
        (333, 777, 320, (320, 160), Letterbox(320 / 777, 11.0, 0.0, 333, 777)),  # 137 + 23 px: 11 | 12
        (1280, 720, 640, (384, 640), Letterbox(0.5, 0.0, 12.0, 1280, 720)),
    ],
)
def test_letterbox_with_a_stride_pads_to_the_smallest_rectangle(
    width: int, height: int, size: int, shape: tuple[int, int], expected: Letterbox
) -> None:
    """Ultralytics' LetterBox(auto=True): sides are multiples of the stride, the longer one is `size`."""
    tensor, box = letterbox(random_bgr(height, width), size, stride=32)
    assert tensor.shape == (3, *shape) and tensor.flags.c_contiguous
    assert box == expected
    _, square_box = letterbox(random_bgr(height, width), size)
    assert (box.scale, box.resized_width, box.resized_height) == (
        square_box.scale,
        square_box.resized_width,
        square_box.resized_height,
    )


def test_letterbox_is_rgb_in_unit_range() -> None:
    blue = np.zeros((48, 64, 3), np.uint8)
    blue[:, :, 0] = 255
    tensor, box = letterbox(blue, 64)
    centre = tensor[:, 32, 32]
    assert centre.tolist() == [0.0, 0.0, 1.0]
    assert box.pad_y == 8.0


# --- postprocess on synthetic outputs -----------------------------------------------------------------------

IDENTITY = Letterbox(1.0, 0.0, 0.0, 640, 640)


def model_output(
    boxes: list[tuple[np.ndarray | list[float], int, float]], num_classes: int = 3, anchors: int = 50
) -> np.ndarray:
    """An output (4 + classes, anchors) holding (x1, y1, x2, y2 in input pixels, class, score) in its first
    anchors; the other anchors are small, low-scoring boxes."""
    output = np.zeros((4 + num_classes, anchors), np.float32)
    output[:4] = np.array([[5.0], [5.0], [2.0], [2.0]], np.float32)
    output[4:] = 0.01
    for anchor, (corners, class_id, score) in enumerate(boxes):
        x1, y1, x2, y2 = corners
        output[:4, anchor] = ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)
        output[4 + class_id, anchor] = score
    return output


def boxes_of(detections: list[Detection]) -> np.ndarray:
    return np.array([[d.x1, d.y1, d.x2, d.y2] for d in detections], np.float32).reshape(-1, 4)


@pytest.mark.parametrize(("width", "height"), [(640, 480), (333, 777), (1280, 720)])
def test_box_round_trips_through_the_model_input(width: int, height: int) -> None:
    _, box = letterbox(random_bgr(height, width), 320)
    originals = np.array([[10.5, 20.25, 200.0, 300.0], [0.0, 0.0, width / 3, height / 4]], np.float32)
    gain = np.array([box.resized_width / width, box.resized_height / height] * 2, np.float32)
    in_input = originals * gain + np.array([box.pad_x, box.pad_y] * 2, np.float32)
    output = model_output([(corners, i, 0.9 - 0.1 * i) for i, corners in enumerate(in_input)], num_classes=2)
    detections = postprocess(output, box, ["a", "b"], 0.25, 0.45)
    assert np.allclose(boxes_of(detections), originals, atol=1e-3)


def test_confidence_filter_is_strictly_above() -> None:
    output = model_output([([0, 0, 10, 10], 0, 0.3), ([100, 0, 110, 10], 0, 0.25), ([200, 0, 210, 10], 0, 0.2)])
    assert [d.confidence for d in postprocess(output, IDENTITY, ["a", "b", "c"], 0.25, 0.45)] == [pytest.approx(0.3)]
    assert postprocess(output, IDENTITY, ["a", "b", "c"], 0.5, 0.45) == []


def test_best_class_of_each_anchor_is_used() -> None:
    output = model_output([([0, 0, 10, 10], 1, 0.6)])
    output[4 + 2, 0] = 0.9
    (found,) = postprocess(output, IDENTITY, ["a", "b", "c"], 0.25, 0.45)
    assert (found.class_id, found.class_name, found.confidence) == (2, "c", pytest.approx(0.9))


def test_nms_suppresses_overlaps_within_a_class_only() -> None:
    # IoU of the first two boxes: 90 / 110 = 0.82.
    output = model_output([([0, 0, 100, 100], 0, 0.9), ([10, 0, 110, 100], 0, 0.8), ([10, 0, 110, 100], 1, 0.7)])
    found = postprocess(output, IDENTITY, ["a", "b", "c"], 0.25, 0.45)
    assert [(d.class_name, round(d.confidence, 2)) for d in found] == [("a", 0.9), ("b", 0.7)]
    assert len(postprocess(output, IDENTITY, ["a", "b", "c"], 0.25, 0.85)) == 3  # below the IoU threshold
    assert len(postprocess(output, IDENTITY, ["a", "b", "c"], 0.25, 90 / 110 + 1e-6)) == 3


def test_boxes_are_mapped_to_the_original_image_and_clipped() -> None:
    box = Letterbox(0.5, 0.0, 40.0, 640, 480)  # 640x480 in 320x320
    output = model_output([([-10, 30, 100, 60], 0, 0.9), ([300, 200, 330, 290], 1, 0.8)])
    found = postprocess(output, box, ["a", "b"], 0.25, 0.45)
    assert np.allclose(boxes_of(found), [[0, 0, 200, 40], [600, 320, 640, 480]])


def test_max_detections_keeps_the_most_confident() -> None:
    output = model_output([([50 * i, 0, 50 * i + 40, 40], 0, 0.3 + 0.05 * i) for i in range(10)])
    found = postprocess(output, IDENTITY, ["a"], 0.25, 0.45, max_detections=3)
    assert [round(d.confidence, 2) for d in found] == [0.75, 0.7, 0.65]
    assert len(postprocess(output, IDENTITY, ["a"], 0.25, 0.45)) == 10


def test_classes_without_a_name_are_named_by_index() -> None:
    output = model_output([([0, 0, 10, 10], 2, 0.9), ([100, 0, 110, 10], 0, 0.8)])
    assert [d.class_name for d in postprocess(output, IDENTITY, ["cat"], 0.25, 0.45)] == ["2", "cat"]


def test_results_are_sorted_by_confidence() -> None:
    scores = np.random.default_rng(6).uniform(0.3, 1.0, 20)
    output = model_output([([30 * i, 0, 30 * i + 20, 20], i % 3, score) for i, score in enumerate(scores)])
    confidences = [d.confidence for d in postprocess(output, IDENTITY, [], 0.25, 0.45)]
    assert len(confidences) == 20 and confidences == sorted(confidences, reverse=True)


def test_output_of_a_whole_batch_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="one image's model output"):
        postprocess(np.zeros((1, 84, 10), np.float32), IDENTITY, [], 0.25, 0.45)


# --- parity with Ultralytics ----------------------------------------------------------------------------------

# Real photos shipped in the Ultralytics wheel. With this model, NMS decides the count in the first three
# cases (e.g. 165 of 324 candidates kept), max_det=300 in the last two.
PARITY_CASES = [
    ("bus.jpg", 0.8, 0.45),
    ("zidane.jpg", 0.25, 0.45),
    ("zidane.jpg", 0.25, 0.2),
    ("bus.jpg", 0.25, 0.45),
    ("zidane.jpg", 0.05, 0.9),
]
LETTERBOX_SIZES = [(640, 480), (333, 777), (1280, 720), (320, 320), (100, 50), (1, 300)]

# Runs in a child: importing Ultralytics patches process-wide state (PIL.Image.open, cv2.setNumThreads(0))
# that would leak into every later test. argv[1] is a JSON object of arguments; the images arrive as .npz.
# The model is a YOLOv8n with random weights. At the default initialisation the activations fade through
# the layers and every anchor scores the same; variance-preserving weights and a sharper head give boxes
# and scores that differ from anchor to anchor, so NMS and ordering are exercised. The DFL's fixed
# (untrainable) convolution, which turns bin probabilities into distances, is kept.
_REFERENCE_SCRIPT = """
import json, os, sys
import numpy as np
import torch
from ultralytics import YOLO
from ultralytics.data.augment import LetterBox

args = json.loads(sys.argv[1])
imgsz = args["imgsz"]
model = YOLO("yolov8n.yaml")
generator = torch.Generator().manual_seed(0)
head = model.model.model[-1]
with torch.no_grad():
    for module in model.model.modules():
        if isinstance(module, torch.nn.Conv2d) and module.weight.requires_grad:
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
    for box_branch, class_branch in zip(head.cv2, head.cv3):
        box_branch[-1].weight.mul_(300)
        class_branch[-1].weight.mul_(100)
        class_branch[-1].bias.fill_(-4.0)
onnx_path = model.export(format="onnx", imgsz=imgsz, dynamic=True, device="cpu", verbose=False)

inputs = np.load(args["inputs"])
outputs = {}
reference = YOLO(onnx_path, task="detect")
for index, (photo, conf, iou) in enumerate(args["cases"]):
    # rect=False: for a dynamic-shape model Ultralytics would otherwise letterbox to the smallest rectangle
    # (e.g. 256x320); our model server's input is square.
    (result,) = reference.predict(
        inputs[photo], imgsz=imgsz, conf=conf, iou=iou, device="cpu", rect=False, verbose=False
    )
    outputs[f"{index}.xyxy"] = result.boxes.xyxy.numpy()
    outputs[f"{index}.conf"] = result.boxes.conf.numpy()
    outputs[f"{index}.cls"] = result.boxes.cls.numpy()
for name in args["letterbox"]:
    outputs[name] = LetterBox((imgsz, imgsz), auto=False)(image=inputs[name])
np.savez(args["outputs"], **outputs)
print(json.dumps({"onnx": os.path.abspath(onnx_path)}))
"""


@dataclass(frozen=True)
class UltralyticsReference:
    onnx: Path
    outputs: Mapping[str, np.ndarray]


def photo(name: str) -> np.ndarray:
    # The wheel's directory, found without importing Ultralytics into this process.
    spec = importlib.util.find_spec("ultralytics")
    assert spec is not None and spec.submodule_search_locations
    return decode_image((Path(spec.submodule_search_locations[0]) / "assets" / name).read_bytes(), LIMIT)


def letterbox_input(width: int, height: int) -> np.ndarray:
    return random_bgr(height, width, seed=7)


@pytest.fixture(scope="module")
def ultralytics_reference(tmp_path_factory: pytest.TempPathFactory) -> UltralyticsReference:
    """The exported model and what Ultralytics makes of the parity inputs, from one child process."""
    work = tmp_path_factory.mktemp("ultralytics-reference")
    inputs = {name: photo(name) for name in {case[0] for case in PARITY_CASES}}
    inputs |= {f"{width}x{height}": letterbox_input(width, height) for width, height in LETTERBOX_SIZES}
    np.savez(work / "inputs.npz", **inputs)
    arguments = {
        "imgsz": PARITY_IMGSZ,
        "inputs": str(work / "inputs.npz"),
        "outputs": str(work / "outputs.npz"),
        "cases": PARITY_CASES,
        "letterbox": [f"{width}x{height}" for width, height in LETTERBOX_SIZES],
    }
    completed = subprocess.run(
        [sys.executable, "-c", _REFERENCE_SCRIPT, json.dumps(arguments)],
        cwd=work,  # the export lands in the working directory
        env={**os.environ, **ultralytics_environment(work / "config")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    with np.load(work / "outputs.npz") as outputs:
        arrays = dict(outputs)
    return UltralyticsReference(Path(json.loads(completed.stdout.splitlines()[-1])["onnx"]), arrays)


@pytest.mark.parametrize(("case", "photo_name", "conf", "iou"), [(i, *case) for i, case in enumerate(PARITY_CASES)])
def test_same_detections_as_ultralytics(
    ultralytics_reference: UltralyticsReference, case: int, photo_name: str, conf: float, iou: float
) -> None:
    import onnxruntime

    tensor, box = letterbox(photo(photo_name), PARITY_IMGSZ)
    session = onnxruntime.InferenceSession(str(ultralytics_reference.onnx), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {"images": tensor[np.newaxis]})
    ours = postprocess(output[0], box, [], conf, iou)

    theirs = {field: ultralytics_reference.outputs[f"{case}.{field}"] for field in ("xyxy", "conf", "cls")}
    candidates = int((output[0, 4:].max(axis=0) > conf).sum())
    assert 3 <= len(ours) < candidates, "NMS must have work to do for the comparison to mean something"
    assert len(ours) == len(theirs["cls"])
    assert [d.class_id for d in ours] == theirs["cls"].astype(int).tolist()
    assert np.allclose([d.confidence for d in ours], theirs["conf"], rtol=0, atol=1e-5)
    assert np.allclose(boxes_of(ours), theirs["xyxy"], rtol=0, atol=0.01)


@pytest.mark.parametrize(("width", "height"), LETTERBOX_SIZES)
def test_letterbox_pixels_match_ultralytics(
    ultralytics_reference: UltralyticsReference, width: int, height: int
) -> None:
    tensor, _ = letterbox(letterbox_input(width, height), PARITY_IMGSZ)
    reference = ultralytics_reference.outputs[f"{width}x{height}"]  # BGR uint8 HxWx3, as Ultralytics feeds it
    assert np.array_equal(tensor, reference[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / np.float32(255))


# --- drawing and encoding -------------------------------------------------------------------------------------


def test_draw_detections_returns_an_annotated_copy() -> None:
    image = random_bgr(240, 320, seed=8) // 4  # dark, so drawn pixels stand out
    before = image.copy()
    detections = [
        Detection(0, "person", 0.87, 20.0, 30.0, 120.0, 200.0),
        Detection(1, "car", 0.5, 250.0, 0.0, 320.0, 60.0),  # label would leave the image at the top and right
    ]
    annotated = draw_detections(image, detections)
    assert np.array_equal(image, before)
    assert annotated.shape == image.shape and annotated.dtype == np.uint8
    assert not np.array_equal(annotated[30, 20:120], image[30, 20:120])  # the first box's top edge
    assert not np.array_equal(annotated[2:10, 290:318], image[2:10, 290:318])  # the clamped label inside the image
    assert np.array_equal(draw_detections(image, []), image)


def test_encode_jpeg_of_a_drawing() -> None:
    image = random_bgr(123, 77, seed=9)
    data = encode_jpeg(draw_detections(image, [Detection(4, "4", 0.3, 1.0, 2.0, 50.0, 60.0)]), quality=80)
    assert data[:3] == b"\xff\xd8\xff"
    assert decode_image(data, LIMIT).shape == (123, 77, 3)
    assert read_header(data).size == (77, 123)


# --- thresholds -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("conf", "iou"), [(0.0, 1.0), (1.0, 0.01), (0.25, 0.45)])
def test_valid_thresholds(conf: float, iou: float) -> None:
    check_thresholds(conf, iou)


@pytest.mark.parametrize(
    ("conf", "iou", "message"),
    [
        (-0.1, 0.5, "conf must be between 0 and 1, got -0.1"),
        (1.5, 0.5, "conf must be between 0 and 1"),
        (math.nan, 0.5, "conf must be between 0 and 1, got nan"),
        (0.25, 0.0, "iou must be greater than 0 and at most 1, got 0.0"),
        (0.25, 1.01, "iou must be greater than 0"),
        (0.25, math.nan, "iou must be greater than 0"),
    ],
)
def test_invalid_thresholds(conf: float, iou: float, message: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        check_thresholds(conf, iou)
    assert message in raised.value.detail
