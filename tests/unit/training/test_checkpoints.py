"""Checkpoint inspection: real Ultralytics checkpoints are read; pickles that would run code are refused
without running it; anything else that is not a YOLO checkpoint is refused with a reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from services.common.errors import InvalidArgument
from services.training.domain.checkpoints import inspect_checkpoint
from tests.unit.training.conftest import TrainedRun

# inspect_checkpoint imports Ultralytics into this process: with the offline environment only.
pytestmark = pytest.mark.usefixtures("yolo_env")


class _Payload:
    """Pickles as a call of `function(*args)`: what a malicious checkpoint does."""

    def __init__(self, function: object, *args: object) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.function, self.args


def evil_model_config(marker: Path) -> dict[str, object]:
    """A real YOLOv8n config whose activation string Ultralytics' model builder would eval."""
    from ultralytics.nn.tasks import yaml_model_load

    config = yaml_model_load("yolov8n.yaml")  # shipped with Ultralytics, read locally
    config["activation"] = f"__import__('os').system('touch {marker}') or nn.SiLU()"
    return config


def saved(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


@pytest.mark.slow
def test_a_real_trained_checkpoint(trained_run: TrainedRun) -> None:
    info = inspect_checkpoint(trained_run.weights)
    assert info.classes == ["square", "circle"]
    assert info.task == "detect"
    assert info.imgsz == 64
    assert info.architecture == "yolov8n.yaml"


@pytest.mark.slow
def test_legacy_getattr_of_a_module_method_is_allowed(trained_run: TrainedRun, tmp_path: Path) -> None:
    # YOLOv8 segment/pose checkpoints of older Ultralytics keep `Detect.forward` as an attribute, which
    # pickle stores as getattr(Detect, "forward").
    from ultralytics.nn.modules.head import Detect

    checkpoint = torch.load(trained_run.weights, map_location="cpu", weights_only=False)  # our own file
    checkpoint["model"].model[-1].detect = Detect.forward
    info = inspect_checkpoint(saved(tmp_path / "legacy.pt", checkpoint))
    assert info.classes == ["square", "circle"]


def test_os_system_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = saved(tmp_path / "evil.pt", {"model": _Payload(os.system, f"touch {marker}")})
    with pytest.raises(InvalidArgument, match=r"references posix\.system, which a YOLO checkpoint does not need"):
        inspect_checkpoint(path)
    assert not marker.exists()


def test_eval_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    path = saved(tmp_path / "evil.pt", {"model": _Payload(eval, code)})
    with pytest.raises(InvalidArgument, match=r"references builtins\.eval"):
        inspect_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["subprocess.call", "shutil.rmtree", "builtins.exec", "importlib.import_module"])
def test_other_dangerous_globals_are_refused(tmp_path: Path, name: str) -> None:
    import importlib

    module, _, attr = name.rpartition(".")
    path = saved(tmp_path / "evil.pt", {"model": _Payload(getattr(importlib.import_module(module), attr), "x")})
    with pytest.raises(InvalidArgument, match="refused"):
        inspect_checkpoint(path)


def test_calling_an_allowed_model_class_is_refused(tmp_path: Path) -> None:
    # DetectionModel is allowed as a class to restore, but calling it runs the model builder, whose
    # activation string Ultralytics evals: only __new__ + state is allowed for model classes.
    from ultralytics.nn.tasks import DetectionModel

    marker = tmp_path / "pwned"
    path = saved(tmp_path / "evil.pt", {"model": _Payload(DetectionModel, evil_model_config(marker))})
    with pytest.raises(InvalidArgument, match=r"calls ultralytics\.nn\.tasks\.DetectionModel"):
        inspect_checkpoint(path)
    assert not marker.exists()


def test_calling_a_model_class_through_torch_rebuild_helpers_is_refused(tmp_path: Path) -> None:
    # torch's weights_only allowlist includes _rebuild_from_type_v2(func, type, args, state), which calls
    # func(*args): with DetectionModel allowlisted that would be the same constructor call as above.
    from ultralytics.nn.tasks import DetectionModel

    marker = tmp_path / "pwned"
    config = evil_model_config(marker)
    payload = _Payload(torch._tensor._rebuild_from_type_v2, DetectionModel, torch.Tensor, (config,), {})
    path = saved(tmp_path / "evil.pt", {"model": payload})
    with pytest.raises(InvalidArgument, match=r"calls torch\._tensor\._rebuild_from_type_v2"):
        inspect_checkpoint(path)
    assert not marker.exists()


def test_calling_a_computed_object_is_refused(tmp_path: Path) -> None:
    # A bound method pickles as getattr(module, "forward"); calling the result is refused.
    path = saved(tmp_path / "evil.pt", {"model": _Payload(torch.nn.Identity().forward, 1)})
    with pytest.raises(InvalidArgument, match="calls a computed object"):
        inspect_checkpoint(path)


def test_getattr_of_private_attributes_is_refused(tmp_path: Path) -> None:
    from ultralytics.nn.modules.conv import Conv

    path = saved(tmp_path / "evil.pt", {"model": _Payload(getattr, Conv, "__init__")})
    with pytest.raises(InvalidArgument, match="not a loadable YOLO checkpoint"):
        inspect_checkpoint(path)


@pytest.mark.parametrize(
    "content",
    [b"", os.urandom(4096), b"PK\x03\x04" + os.urandom(100)],
    ids=["empty", "random", "zip-header"],
)
def test_not_a_checkpoint(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(InvalidArgument, match="is not a loadable YOLO checkpoint"):
        inspect_checkpoint(path)


@pytest.mark.slow
def test_truncated_checkpoint(trained_run: TrainedRun, tmp_path: Path) -> None:
    data = trained_run.weights.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidArgument, match="is not a loadable YOLO checkpoint"):
        inspect_checkpoint(path)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (torch.nn.Linear(2, 2).state_dict(), "no 'model' entry"),
        ({"epoch": 3, "optimizer": None}, "no 'model' entry"),
        ([1, 2, 3], "holds a list"),
        ({"model": {"weight": torch.zeros(2)}}, "not a model"),
        ({"model": torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))}, "no valid class names"),
    ],
    ids=["state-dict", "no-model", "list", "model-is-a-dict", "no-names"],
)
def test_not_a_yolo_checkpoint(tmp_path: Path, obj: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        inspect_checkpoint(saved(tmp_path / "model.pt", obj))
