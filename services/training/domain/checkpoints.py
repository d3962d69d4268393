"""What an uploaded Ultralytics checkpoint (.pt) holds, read without trusting it.

A .pt file is a pickle, and unpickling can call any function it names (`os.system`, `builtins.eval`...), so
`torch.load(weights_only=False)` on an upload would run the uploader's code. We load with
`weights_only=True`, which only builds allowlisted globals, and check the pickle before that:

1. every global it references must pass `_resolve_global`: torch's own tensor machinery, nn.Module classes
   from `torch.nn.modules` / `ultralytics.nn`, loss helpers from `ultralytics.utils.{loss,tal}`, and a few
   plain value types (numpy scalars, namespaces, paths). Everything else is refused, with the name;
2. model classes may only be created the way pickle restores objects (`cls.__new__` + state), never called:
   calling `DetectionModel(cfg)` would run Ultralytics' model builder on attacker data (its `eval` of the
   activation string, file reads). `_check_calls` walks the opcodes and refuses any REDUCE (a call) whose
   callable is not a plain value constructor or one of torch's tensor rebuild helpers that call nothing
   else (torch's default `_rebuild_from_type_v2` calls a function of the pickle's choosing: refused).

Errors: InvalidArgument for anything that is not a usable YOLO checkpoint, with the reason.
"""

from __future__ import annotations

import _compat_pickle
import functools
import importlib
import os
import pickletools
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.errors import InvalidArgument


@dataclass(frozen=True)
class CheckpointInfo:
    classes: list[str]  # class names ordered by class id
    task: str  # detect | segment | classify | pose | obb
    imgsz: int | None  # training image size, when the checkpoint records it
    architecture: str | None  # model YAML name, e.g. "yolov8n.yaml"


# Refused by name whatever the rest of the allowlist says, a second line of defence should it ever be
# widened: process execution, imports, interpreters, raw memory (only builtins.getattr is mapped, below).
_FORBIDDEN_MODULES = frozenset(
    {
        "builtins", "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy", "pickle",
        "marshal", "ctypes", "code", "codeop", "pty", "webbrowser", "multiprocessing", "operator", "functools",
    }
)  # fmt: skip
# nn.Module classes from these packages are allowed (restored with __new__ + __setstate__, never called).
_MODULE_PACKAGES = ("torch.nn.modules", "ultralytics.nn.modules")
_MODULE_MODULES = frozenset({"ultralytics.nn.tasks"})
# Plain classes (losses, assigners) that some Ultralytics versions leave attached to the model.
_HELPER_MODULES = frozenset({"ultralytics.utils.loss", "ultralytics.utils.tal"})

# Callables a pickle may call (REDUCE): containers and plain tensor/parameter rebuilds (what Ultralytics
# checkpoints use), plus the value types of `_value_globals`. A subset of torch's weights_only defaults:
# torch also allows torch._tensor._rebuild_from_type_v2(func, type, args, state), which calls `func(*args)`
# with any allowlisted global, i.e. DetectionModel(attacker config) -> Ultralytics evals its activation
# string. Tensor subclasses, quantized, sparse and meta tensors never occur in YOLO checkpoints either.
_TORCH_CALLABLES = frozenset(
    {
        "collections.OrderedDict", "collections.Counter", "builtins.set", "builtins.bytearray",
        "builtins.complex", "_codecs.encode", "torch.Size", "torch.device", "torch.serialization._get_layout",
        "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state",
    }
)  # fmt: skip

# The opcodes torch's weights_only unpickler implements (it refuses the others, so we may too) that neither
# call nor involve globals, MARK or the memo; _SymbolicPickle handles those.
_PLAIN_OPCODES = frozenset(
    {
        "PROTO", "STOP", "BUILD", "APPEND", "SETITEM", "TUPLE1", "TUPLE2", "TUPLE3", "NONE", "NEWFALSE",
        "NEWTRUE", "EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "BININT", "BININT1", "BININT2",
        "BINFLOAT", "BINUNICODE", "SHORT_BINSTRING", "LONG1", "BINPERSID",
    }
)  # fmt: skip

# torch.serialization.safe_globals edits a process-wide set and removes its entries on exit: concurrent
# loads would strip each other's allowlist mid-unpickle (and get_unsafe_globals_in_checkpoint would see
# another load's entries as safe). One load at a time.
_LOAD_LOCK = threading.Lock()


def inspect_checkpoint(path: Path) -> CheckpointInfo:
    """Class names, task, image size and architecture of an Ultralytics checkpoint, loaded safely."""
    _ensure_offline()
    import torch

    label = path.name
    try:
        if path.stat().st_size == 0:
            raise InvalidArgument(f"{label} is not a loadable YOLO checkpoint: the file is empty")
    except OSError as error:
        raise InvalidArgument(f"{label} is not a loadable YOLO checkpoint: {error.strerror}") from error
    with _LOAD_LOCK:
        try:
            referenced = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
            pickle_bytes = torch._C.PyTorchFileReader(str(path)).get_record("data.pkl")
        except Exception as error:  # any parse failure of untrusted bytes means "not a checkpoint"
            raise InvalidArgument(f"{label} is not a loadable YOLO checkpoint: {_reason(error)}") from error
        # Names first, so a pickle cannot make us import anything outside the allowed packages.
        refused = [name for name in sorted(referenced) if not _name_allowed(name)]
        allowed = {} if refused else {name: _resolve_global(name) for name in sorted(referenced)}
        refused += [name for name, obj in allowed.items() if obj is None]
        if refused:
            raise InvalidArgument(
                f"{label} is refused: it references {', '.join(refused[:5])}, which a YOLO checkpoint does not "
                "need (loading it could run code)"
            )
        _check_calls(pickle_bytes, label, callables=_TORCH_CALLABLES | _VALUE_NAMES)
        safe: list[Any] = [(obj, name) for name, obj in allowed.items()]
        if "numpy.dtype" in allowed:
            # np.dtype(...) returns e.g. numpy.dtypes.Float64DType, which the following BUILD must accept too.
            safe += _numpy_dtype_classes()
        try:
            with torch.serialization.safe_globals(safe):
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # weights_only refusals, corrupt tensors, truncated files
            raise InvalidArgument(f"{label} is not a loadable YOLO checkpoint: {_reason(error)}") from error
    return _describe(checkpoint, label)


def _ensure_offline() -> None:
    # Importing Ultralytics probes the network unless YOLO_OFFLINE is set; the service should have applied
    # ultralytics_environment() already, this only makes the safe choice the default.
    os.environ.setdefault("YOLO_OFFLINE", "1")


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300]}" if text else type(error).__name__


# -- the allowlist -----------------------------------------------------------------------------------------


def _name_allowed(name: str) -> bool:
    """The static part of the allowlist, checked for every name before anything is imported."""
    module, _, attr = name.rpartition(".")
    if name in _VALUE_NAMES:
        return True
    if not module or not attr or attr.startswith("__") or module.split(".")[0] in _FORBIDDEN_MODULES:
        return False
    in_packages = any(module == package or module.startswith(package + ".") for package in _MODULE_PACKAGES)
    return in_packages or module in _MODULE_MODULES or module in _HELPER_MODULES


def _resolve_global(name: str) -> object | None:
    """The object an allowed name stands for; None if it is not an allowed class after all."""
    if name in _VALUE_NAMES:
        return _value_globals()[name]
    module, _, attr = name.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), attr, None)
    except ImportError:
        return None
    return obj if _allowed_class(obj, module) else None


def _allowed_class(obj: object, module: str) -> bool:
    """Classes only: functions (e.g. ultralytics.nn.tasks.torch_safe_load) are never needed."""
    import torch

    if not isinstance(obj, type):
        return False
    if module in _HELPER_MODULES:
        return obj.__module__ == module  # defined there, not imported into it
    return issubclass(obj, torch.nn.Module)


_VALUE_NAMES = frozenset(
    {
        "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype", "types.SimpleNamespace",
        "argparse.Namespace", "ultralytics.utils.IterableSimpleNamespace",
        "ultralytics.yolo.utils.IterableSimpleNamespace", "pathlib.PosixPath", "pathlib.WindowsPath",
        "pathlib._local.PosixPath", "pathlib._local.WindowsPath", "builtins.getattr",
    }
)  # fmt: skip


@functools.cache
def _value_globals() -> dict[str, Any]:
    """Plain value types older or other Ultralytics versions pickle; calling them only builds values."""
    import argparse
    import pathlib
    import types

    import numpy as np
    from ultralytics.utils import IterableSimpleNamespace

    scalar = np.float64(0).__reduce__()[0]  # numpy's scalar(dtype, bytes) rebuild function
    values = {
        "numpy.core.multiarray.scalar": scalar,
        "numpy._core.multiarray.scalar": scalar,
        "numpy.dtype": np.dtype,
        "types.SimpleNamespace": types.SimpleNamespace,
        "argparse.Namespace": argparse.Namespace,
        "ultralytics.utils.IterableSimpleNamespace": IterableSimpleNamespace,
        "ultralytics.yolo.utils.IterableSimpleNamespace": IterableSimpleNamespace,  # before 8.0.44
        # Paths pickled on either OS (or by Python 3.13's pathlib._local) load as this OS's path.
        **{f"{m}.{c}": pathlib.PosixPath for m in ("pathlib", "pathlib._local") for c in ("PosixPath", "WindowsPath")},
        # Some YOLOv8 segment/pose checkpoints pickle `Detect.forward` as getattr(Detect, "forward").
        "builtins.getattr": _module_getattr,
    }
    assert values.keys() == _VALUE_NAMES
    return values


def _module_getattr(obj: object, name: str) -> object:
    """The only getattr a checkpoint gets: public attributes of nn.Module classes, forward of modules."""
    import pickle

    import torch

    if isinstance(obj, type) and issubclass(obj, torch.nn.Module) and not name.startswith("_"):
        return getattr(obj, name)
    if isinstance(obj, torch.nn.Module) and name in {"forward", "forward_fuse"}:
        return getattr(type(obj), name).__get__(obj)
    raise pickle.UnpicklingError(f"getattr({type(obj).__name__}, {name!r}) is not allowed in a checkpoint")


def _numpy_dtype_classes() -> list[type]:
    import numpy as np

    # Numeric dtypes only: an object dtype ("O") could smuggle arbitrary objects into arrays.
    return list({type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"})


# -- the call check ------------------------------------------------------------------------------------------


class _Global:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


_VALUE = object()  # anything on the pickle stack that is not a bare global
_MARK = object()


def _check_calls(pickle_bytes: bytes, label: str, callables: set[str] | frozenset[str]) -> None:
    """Refuse a pickle that calls anything but the allowed value constructors (classes are only __new__'d)."""
    machine = _SymbolicPickle(label, callables)
    try:
        for opcode, arg, _position in pickletools.genops(pickle_bytes):
            machine.step(opcode, arg)
    except (ValueError, IndexError, KeyError) as error:  # malformed pickle: truncated, stack underflow, bad memo
        raise InvalidArgument(f"{label} is not a loadable YOLO checkpoint: malformed pickle ({error})") from error


class _SymbolicPickle:
    """The pickle machine run on symbols: it tracks which stack items are globals (through the memo too), so
    at each REDUCE (a call) and NEWOBJ (cls.__new__) it knows what the real unpickler would use."""

    def __init__(self, label: str, callables: set[str] | frozenset[str]) -> None:
        self.label = label
        self.callables = callables
        self.stack: list[object] = []
        self.memo: dict[int, object] = {}

    def step(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        op = opcode.name
        handler = getattr(self, f"op_{op.lower()}", None)
        if handler is not None:
            handler(arg)
        elif op in _PLAIN_OPCODES:
            for _ in opcode.stack_before:
                self.stack.pop()
            self.stack.extend(_VALUE for _ in opcode.stack_after)
        else:
            raise InvalidArgument(f"{self.label} is refused: its pickle uses the {op} opcode, which checkpoints do not")

    def op_global(self, arg: object) -> None:
        module, name = str(arg).split(" ", 1)
        # torch maps Python 2 names the same way (e.g. __builtin__.set -> builtins.set).
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        self.stack.append(_Global(f"{module}.{name}"))

    def op_reduce(self, _arg: object) -> None:
        self.stack.pop()
        func = self.stack.pop()
        if not (isinstance(func, _Global) and func.name in self.callables):
            called = func.name if isinstance(func, _Global) else "a computed object"
            raise InvalidArgument(f"{self.label} is refused: its pickle calls {called} (loading it could run code)")
        self.stack.append(_VALUE)

    def op_newobj(self, _arg: object) -> None:
        self.stack.pop()
        if not isinstance(self.stack.pop(), _Global):
            raise InvalidArgument(f"{self.label} is refused: its pickle creates an object of a computed class")
        self.stack.append(_VALUE)

    def op_mark(self, _arg: object) -> None:
        self.stack.append(_MARK)

    def _pop_to_mark(self) -> None:
        for index in range(len(self.stack) - 1, -1, -1):
            if self.stack[index] is _MARK:
                del self.stack[index:]
                return
        raise ValueError("MARK missing")

    def op_appends(self, _arg: object) -> None:
        self._pop_to_mark()

    def op_setitems(self, _arg: object) -> None:
        self._pop_to_mark()

    def op_tuple(self, _arg: object) -> None:
        self._pop_to_mark()
        self.stack.append(_VALUE)

    def op_binput(self, arg: object) -> None:
        self.memo[int(arg)] = self.stack[-1]  # type: ignore[call-overload]

    op_long_binput = op_binput

    def op_binget(self, arg: object) -> None:
        self.stack.append(self.memo[int(arg)])  # type: ignore[call-overload]

    op_long_binget = op_binget


# -- what the checkpoint says ----------------------------------------------------------------------------------

_TASK_BY_MODEL = {
    "DetectionModel": "detect",
    "SegmentationModel": "segment",
    "PoseModel": "pose",
    "ClassificationModel": "classify",
    "OBBModel": "obb",
    "RTDETRDetectionModel": "detect",
    "WorldModel": "detect",
    "YOLOEModel": "detect",
    "YOLOESegModel": "segment",
}
_TASKS = frozenset(_TASK_BY_MODEL.values())


def _describe(checkpoint: object, label: str) -> CheckpointInfo:
    import torch

    def invalid(reason: str) -> InvalidArgument:
        return InvalidArgument(f"{label} is not a loadable YOLO checkpoint: {reason}")

    if not isinstance(checkpoint, dict):
        raise invalid(f"it holds a {type(checkpoint).__name__}, not an Ultralytics checkpoint dictionary")
    # Ultralytics prefers the EMA weights when a (mid-training) checkpoint has both.
    model = checkpoint.get("ema")
    if model is None:
        model = checkpoint.get("model")
    if model is None:
        raise invalid("it has no 'model' entry")
    if not isinstance(model, torch.nn.Module):
        raise invalid(f"its 'model' entry is a {type(model).__name__}, not a model")
    classes = _class_names(getattr(model, "names", None))
    if classes is None:
        raise invalid("its model has no valid class names (names: {id: name} with ids 0..n-1)")
    train_args = checkpoint.get("train_args")
    train_args = train_args if isinstance(train_args, dict) else {}
    model_args = _as_dict(getattr(model, "args", None))
    task = next(
        (t for t in (train_args.get("task"), model_args.get("task")) if isinstance(t, str) and t in _TASKS),
        None,
    ) or _TASK_BY_MODEL.get(type(model).__name__)
    if task is None:
        raise invalid(f"its model is a {type(model).__name__}, not an Ultralytics YOLO model")
    imgsz = _imgsz(train_args.get("imgsz")) or _imgsz(model_args.get("imgsz"))
    yaml = getattr(model, "yaml", None)
    yaml_file = yaml.get("yaml_file") if isinstance(yaml, dict) else None
    architecture = Path(yaml_file).name if isinstance(yaml_file, str) and yaml_file else None
    return CheckpointInfo(classes=classes, task=task, imgsz=imgsz, architecture=architecture)


def _class_names(names: object) -> list[str] | None:
    if isinstance(names, list | tuple):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        return None
    if not all(isinstance(key, int) for key in names) or sorted(names) != list(range(len(names))):
        return None  # ids must index the model's outputs; labels.txt lines follow them
    if not all(isinstance(value, str) for value in names.values()):
        return None
    return [names[key] for key in sorted(names)]


def _as_dict(value: object) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    return dict(vars(value)) if hasattr(value, "__dict__") and not callable(value) else {}


def _imgsz(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, list | tuple) and value and all(isinstance(v, int) and v > 0 for v in value):
        return max(value)  # [h, w]: the longer side is what letterboxing resizes to
    return None
