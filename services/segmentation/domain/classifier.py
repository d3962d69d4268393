"""UI component classifier: a torchvision ResNet-18 that names the component in a crop (Button, Input, ...).

Preprocessing (`preprocess`) is shared by training and serving: the service sends the very array it returns
to Triton. A crop is framed in its own border colour and then resized to an IMAGE_SIZE square, so the shape
survives: a wide Bar stays a strip with background above and below, a square Icon fills the frame. The frame
is not a full square, though: the shorter side is padded to the geometric mean of both (an 8:1 Input
becomes 2.8:1, then squeezed to the square). A full square leaves a 476x62 Input or Select 8 pixels tall at
64 px, too thin to see a Select's chevron; the geometric-mean frame keeps the aspect ratio monotonic (the
strip covers 1/sqrt(aspect) of the height) with three times the rows. Measured with 120 rendered crops per
type, 6 epochs: held-out accuracy 0.82 with square frames, 0.88 with these.
Images with transparency are composited on white first, as a page would show them.

Training (`train_classifier`) is plain PyTorch on the CPU, from random weights (nothing is ever downloaded):
- labels are the sorted set of the samples' labels (ImageFolder's convention; the API document's example
  also starts with "Bar"); the model's output i is labels[i];
- a stratified, seeded split keeps VAL_FRACTION of every label for validation (a label with a single sample
  only trains), so a resumed run validates on the same samples;
- every training sample is augmented afresh each epoch (margin, resolution and colour jitter) because the
  crops the service classifies are cut from real pages by a segmenter: loose or tight, any colour scheme;
- after every epoch `workdir/last.pt` (model, optimizer, history: everything needed to go on) is written,
  and `workdir/best.pt` (model and labels only) when the validation accuracy improves (or equals the best
  with a lower loss). Both are written atomically, so a process killed at any moment leaves the last
  complete ones; when last.pt exists at start, training resumes from it;
- `should_stop()` is asked before every batch; a stop saves last.pt with the samples of the current epoch
  already trained on, and a resumed run skips exactly those (the epoch's order is derived from the seed);
- Adam at the spec's learning rate, decayed along a cosine to 0 by the last epoch (computed from the
  position alone, so a resumed run stays on the curve): from random weights, the decay settles the model
  in the few epochs a first start can afford.

The stem is torchvision's (7x7 stride-2 conv and max-pool, 64 px -> 16 px before the first stage). A stem
that keeps more resolution (3x3, no max-pool) costs 2.3-3x the compute per image (0.42 s per 32-image
training batch on two cores, against 0.95-1.2 s), too slow for the training at first start.

`export_onnx` writes the model with the softmax inside the graph (output "probabilities") and a dynamic
batch dimension, the form services.common.triton.repository deploys to Triton.
"""

from __future__ import annotations

import io
import math
import pickle
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from services.common.errors import Conflict, InvalidArgument
from services.common.storage.files import atomic_write_bytes

if TYPE_CHECKING:
    import torch

IMAGE_SIZE = 64
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
VAL_FRACTION = 0.2
ONNX_OPSET = 17  # run by every onnxruntime of the last years, Triton's included
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
# ImageNet statistics: the usual normalisation for torchvision models, and UI colours are as varied.
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# Source images are kept in memory for the whole run; larger ones are shrunk on loading (the model sees
# IMAGE_SIZE pixels anyway, and augmentation only needs some headroom above that).
_MAX_KEPT_SIDE = 4 * IMAGE_SIZE
_EVAL_BATCH = 128

Sample = tuple[Path | str | Image.Image, str]


def build_model(num_classes: int) -> torch.nn.Module:
    """ResNet-18 with `num_classes` outputs (logits), random weights."""
    import torchvision

    if num_classes < 2:
        raise InvalidArgument(f"A classifier needs at least 2 classes, not {num_classes}")
    return torchvision.models.resnet18(weights=None, num_classes=num_classes)


# --- Preprocessing ----------------------------------------------------------------------------------------


def load_image(source: Path | str | Image.Image) -> Image.Image:
    """An RGB image from a file or a PIL image; transparency composited on white. Files larger than needed
    are shrunk (aspect ratio kept). Unreadable files raise InvalidArgument."""
    if isinstance(source, Image.Image):
        image = to_rgb(source)
    else:
        try:
            with Image.open(source) as opened:
                opened.draft("RGB", (_MAX_KEPT_SIDE, _MAX_KEPT_SIDE))  # JPEG: decode at a reduced scale
                opened.load()
                image = to_rgb(opened)
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
            raise InvalidArgument(f"Cannot read image {Path(source).name}: {error}") from error
    if image.width < 1 or image.height < 1:
        raise InvalidArgument("An image is empty")
    scale = _MAX_KEPT_SIDE / max(image.size)
    if scale >= 1:
        return image
    shrunk = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(shrunk, Image.Resampling.BILINEAR)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB; transparent pixels become white, as on a page."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def border_colour(image: Image.Image) -> tuple[int, int, int]:
    """Median colour of the outermost pixel ring: the background the component sits on."""
    pixels = np.asarray(to_rgb(image))
    ring = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    red, green, blue = np.median(ring, axis=0).astype(int).tolist()
    return red, green, blue


def pad_to_frame(image: Image.Image) -> Image.Image:
    """The image centred on its border colour, its shorter side padded to the geometric mean of both sides:
    the aspect ratio becomes its square root (8:1 -> 2.8:1, 2:1 -> 1.4:1, squares stay)."""
    rgb = to_rgb(image)
    width, height = rgb.size
    short = round(math.sqrt(width * height))
    frame_size = (max(width, short), max(height, short))
    if frame_size == rgb.size:
        return rgb
    frame = Image.new("RGB", frame_size, border_colour(rgb))
    frame.paste(rgb, ((frame_size[0] - width) // 2, (frame_size[1] - height) // 2))
    return frame


def model_view(image: Image.Image) -> Image.Image:
    """The IMAGE_SIZE square the model sees: the framed image, resized."""
    if image.width < 1 or image.height < 1:
        raise InvalidArgument("An image to classify is empty")
    return pad_to_frame(image).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)


def preprocess(images: Sequence[Image.Image]) -> np.ndarray:
    """float32 NCHW batch (N, 3, IMAGE_SIZE, IMAGE_SIZE), ImageNet-normalised: the model's input."""
    batch = np.empty((len(images), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for index, image in enumerate(images):
        pixels = np.asarray(model_view(image), dtype=np.float32) / 255.0
        batch[index] = ((pixels - _MEAN) / _STD).transpose(2, 0, 1)
    return batch


def augment(image: Image.Image, rng: random.Random) -> Image.Image:
    """A training variant of an RGB crop, as a segmenter and another page might give it: every side moved
    by -5..+12 % (tighter or looser box, new margin in the border colour), sometimes a lower resolution,
    and jittered brightness, contrast, saturation and hue. Returned as model_view's square (preprocess
    leaves it as it is), so the colour jitter works on IMAGE_SIZE pixels, not on the whole crop."""
    import torchvision.transforms.functional as tf

    width, height = image.size
    left, right = (round(rng.uniform(-0.05, 0.12) * width) for _ in range(2))
    top, bottom = (round(rng.uniform(-0.05, 0.12) * height) for _ in range(2))
    canvas = Image.new("RGB", (max(1, width + left + right), max(1, height + top + bottom)), border_colour(image))
    canvas.paste(image, (left, top))
    view = model_view(canvas)
    if rng.random() < 0.3:  # small or blurry crops: down to 40 % of the resolution and back
        side = round(IMAGE_SIZE * rng.uniform(0.4, 1.0))
        view = view.resize((side, side), Image.Resampling.BILINEAR).resize(view.size, Image.Resampling.BILINEAR)
    view = tf.adjust_brightness(view, rng.uniform(0.75, 1.25))
    view = tf.adjust_contrast(view, rng.uniform(0.75, 1.25))
    view = tf.adjust_saturation(view, rng.uniform(0.6, 1.4))
    return tf.adjust_hue(view, rng.uniform(-0.08, 0.08))


def rendered_samples(per_class: int, seed: int) -> list[tuple[Image.Image, str]]:
    """`per_class` rendered crops of every COMPONENT_TYPES kind, deterministic for a seed."""
    from services.segmentation.domain.rendering import COMPONENT_TYPES, render_component

    if per_class < 0:
        raise InvalidArgument(f"Samples per class must be >= 0, not {per_class}")
    rng = random.Random(seed)
    return [(render_component(kind, rng), kind) for _ in range(per_class) for kind in COMPONENT_TYPES]


# --- Training ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSpec:
    epochs: int
    batch_size: int
    learning_rate: float  # Adam's rate at the start; it follows a cosine down to 0 by the last epoch
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise InvalidArgument(f"epochs must be >= 1, not {self.epochs}")
        if self.batch_size < 1:
            raise InvalidArgument(f"batch_size must be >= 1, not {self.batch_size}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise InvalidArgument(f"learning_rate must be a positive number, not {self.learning_rate}")


@dataclass
class TrainingProgress:
    """What the training query API reports. acc, loss, model_epoch and single_acc describe the saved (best)
    model: None / 0 / [] until the first epoch has been validated; a single_acc entry is None for a label
    without validation samples. epoch is the epoch being trained, or the one just finished when
    val_acc_list has as many entries."""

    labels: list[str]
    dataset_num: int
    epoch: int = 0
    model_epoch: int = 0
    acc: float | None = None
    loss: float | None = None
    single_acc: list[float | None] = field(default_factory=list)
    val_acc_list: list[float] = field(default_factory=list)
    val_loss_list: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "acc": self.acc,
            "loss": self.loss,
            "epoch": self.epoch,
            "modelEpoch": self.model_epoch,
            "labels": list(self.labels),
            "singleAcc": list(self.single_acc),
            "dataset_num": self.dataset_num,
            "valAccList": list(self.val_acc_list),
            "valLossList": list(self.val_loss_list),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainingProgress:
        return cls(
            labels=list(raw["labels"]),
            dataset_num=raw["dataset_num"],
            epoch=raw["epoch"],
            model_epoch=raw["modelEpoch"],
            acc=raw["acc"],
            loss=raw["loss"],
            single_acc=list(raw["singleAcc"]),
            val_acc_list=list(raw["valAccList"]),
            val_loss_list=list(raw["valLossList"]),
        )


@dataclass(frozen=True)
class TrainingOutcome:
    progress: TrainingProgress
    stopped: bool  # should_stop() ended the run before the last epoch
    best_checkpoint: Path | None  # None when no epoch was completed


def stratified_split(labels: Sequence[str], seed: int) -> tuple[list[int], list[int]]:
    """(train indices, validation indices): VAL_FRACTION of every label (at least one, never all) validates."""
    by_label: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        by_label.setdefault(label, []).append(index)
    rng = random.Random(seed)
    train: list[int] = []
    val: list[int] = []
    for label in sorted(by_label):
        indices = by_label[label]
        rng.shuffle(indices)
        count = min(len(indices) - 1, max(1, round(VAL_FRACTION * len(indices))))
        val += indices[:count]
        train += indices[count:]
    return sorted(train), sorted(val)


def train_classifier(
    spec: TrainSpec,
    samples: Sequence[Sample],
    workdir: Path,
    *,
    on_epoch: Callable[[TrainingProgress], None],
    should_stop: Callable[[], bool],
    threads: int | None = None,
) -> TrainingOutcome:
    """Train (or resume training) a classifier on labelled samples; checkpoints go to workdir.

    on_epoch gets the progress when an epoch starts and when it has been validated. `threads` caps torch's
    CPU threads (None: torch's default, which honours OMP_NUM_THREADS)."""
    import torch

    if threads is not None:
        torch.set_num_threads(max(1, threads))
    trainer = _Trainer(spec, _Data.of(samples, spec.seed), workdir)
    completed, samples_done = trainer.resume()
    for epoch in range(completed + 1, spec.epochs + 1):
        trainer.progress.epoch = epoch
        on_epoch(trainer.progress)
        stopped_at = trainer.train_epoch(epoch, samples_done, should_stop)
        if stopped_at is not None:
            trainer.save_last(epoch - 1, stopped_at)
            return trainer.outcome(stopped=True)
        samples_done = 0
        trainer.validate(epoch)
        trainer.save_last(epoch, 0)
        on_epoch(trainer.progress)
    return trainer.outcome(stopped=False)


@dataclass
class _Data:
    labels: list[str]
    images: list[Image.Image]
    targets: list[int]  # index into labels, per image
    train_indices: list[int]
    val_inputs: torch.Tensor
    val_targets: torch.Tensor

    @classmethod
    def of(cls, samples: Sequence[Sample], seed: int) -> _Data:
        """Images loaded, labels indexed, the split made and the validation batch preprocessed once."""
        import torch

        labels = sorted({label for _source, label in samples})
        if len(labels) < 2:
            raise InvalidArgument(f"Training needs samples of at least 2 component types, got {labels}")
        images = [load_image(source) for source, _label in samples]
        targets = [labels.index(label) for _source, label in samples]
        train_indices, val_indices = stratified_split([label for _source, label in samples], seed)
        if not val_indices:
            raise InvalidArgument("Validation needs at least one component type with 2 or more samples")
        val_inputs = torch.from_numpy(preprocess([images[index] for index in val_indices]))
        val_targets = torch.tensor([targets[index] for index in val_indices])
        return cls(labels, images, targets, train_indices, val_inputs, val_targets)


class _Trainer:
    """The model, its optimizer and the progress of one train_classifier call, and their checkpoints."""

    def __init__(self, spec: TrainSpec, data: _Data, workdir: Path) -> None:
        import torch

        self.spec = spec
        self.data = data
        torch.manual_seed(spec.seed)
        self.model = build_model(len(data.labels))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=spec.learning_rate)
        self.progress = TrainingProgress(labels=data.labels, dataset_num=len(data.images))
        workdir.mkdir(parents=True, exist_ok=True)
        self.last_path = workdir / LAST_CHECKPOINT
        self.best_path = workdir / BEST_CHECKPOINT

    def resume(self) -> tuple[int, int]:
        """Load last.pt if there is one: (epochs completed, samples of the next epoch already trained on)."""
        import torch

        if not self.last_path.exists():
            return 0, 0
        state = torch.load(self.last_path, map_location="cpu", weights_only=True)
        saved = TrainingProgress.from_dict(state["progress"])
        if saved.labels != self.progress.labels or saved.dataset_num != self.progress.dataset_num:
            raise Conflict(
                f"{self.last_path} was trained on {saved.dataset_num} samples of {saved.labels}, not on "
                f"{self.progress.dataset_num} of {self.progress.labels}: delete it to start over"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.progress = saved
        return state["epoch"], state["samples_done"]

    def train_epoch(self, epoch: int, first_sample: int, should_stop: Callable[[], bool]) -> int | None:
        """Train on the epoch's shuffled samples from first_sample on. Returns None when done, or the
        position in the epoch's order where should_stop() interrupted it."""
        import torch

        spec = self.spec
        order = list(self.data.train_indices)
        random.Random(spec.seed * 100_003 + epoch).shuffle(order)  # the same order again on resume
        augment_rng = random.Random(spec.seed * 100_003 + epoch * 1_009 + first_sample)
        self.model.train()
        for start in range(first_sample, len(order), spec.batch_size):
            if should_stop():
                return start
            # Cosine decay over the whole run, from the position alone, so a resumed run follows the curve.
            done = (epoch - 1 + start / len(order)) / spec.epochs
            for group in self.optimizer.param_groups:
                group["lr"] = spec.learning_rate * 0.5 * (1 + math.cos(math.pi * done))
            batch = order[start : start + spec.batch_size]
            inputs = torch.from_numpy(preprocess([augment(self.data.images[index], augment_rng) for index in batch]))
            targets = torch.tensor([self.data.targets[index] for index in batch])
            loss = torch.nn.functional.cross_entropy(self.model(inputs), targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return None

    def validate(self, epoch: int) -> None:
        """Validate, record the epoch in the history, and save best.pt if this model is the best yet:
        higher accuracy, or the same with a lower loss (small validation sets often tie)."""
        import torch

        self.model.eval()
        with torch.inference_mode():
            logits = torch.cat([self.model(chunk) for chunk in self.data.val_inputs.split(_EVAL_BATCH)])
        targets = self.data.val_targets
        loss = torch.nn.functional.cross_entropy(logits, targets).item()
        correct = logits.argmax(dim=1) == targets
        acc = correct.float().mean().item()
        progress = self.progress
        progress.val_acc_list.append(acc)
        progress.val_loss_list.append(loss)
        if progress.acc is None or progress.loss is None or (acc, -loss) > (progress.acc, -progress.loss):
            progress.acc, progress.loss, progress.model_epoch = acc, loss, epoch
            progress.single_acc = [
                correct[targets == label].float().mean().item() if (targets == label).any() else None
                for label in range(len(progress.labels))
            ]
            best = {"model": self.model.state_dict(), "labels": progress.labels, "epoch": epoch, "acc": acc}
            _save(best, self.best_path)

    def save_last(self, epochs_completed: int, samples_done: int) -> None:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": epochs_completed,
            "samples_done": samples_done,
            "progress": self.progress.as_dict(),
        }
        _save(state, self.last_path)

    def outcome(self, *, stopped: bool) -> TrainingOutcome:
        return TrainingOutcome(self.progress, stopped, self.best_path if self.best_path.exists() else None)


def _save(state: dict[str, Any], path: Path) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


# --- Export -----------------------------------------------------------------------------------------------


def export_onnx(checkpoint: Path, output: Path) -> list[str]:
    """Write `output` (.onnx) from a best.pt or last.pt of train_classifier; returns the labels, in the
    order of the output's probabilities. The file appears atomically."""
    import torch

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        labels = list(state["labels"]) if "labels" in state else list(state["progress"]["labels"])
        model = build_model(len(labels))
        model.load_state_dict(state["model"])
    except (OSError, EOFError, RuntimeError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as error:
        raise InvalidArgument(f"{checkpoint.name} is not a component classifier checkpoint: {error}") from error
    graph = torch.nn.Sequential(model, torch.nn.Softmax(dim=1)).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export's, which needs onnxscript (not
        # installed); its output is what Triton's onnxruntime runs either way.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            graph,
            (torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE),),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    atomic_write_bytes(output, buffer.getvalue())
    return labels
