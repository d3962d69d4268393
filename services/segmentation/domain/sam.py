"""Segment Anything (SAM) and MobileSAM on the CPU: automatic masks over a whole image, and masks for point
and box prompts.

vit_b/vit_l/vit_h come from Meta's `segment_anything`; vit_t (MobileSAM, a TinyViT image encoder with SAM's
prompt encoder and mask decoder) comes from `mobile_sam`. Each package's own SamPredictor and
SamAutomaticMaskGenerator are used with its own model, so the code path is the upstream one.

The image encoder is the expensive step (about 1.6 s for vit_t on this CPU, whatever the image size, because
SAM always encodes a 1024 px square); a prompt afterwards costs about 0.1 s. Callers typically send several
prompts for one screenshot, so the predictor keeps the embeddings of the last two images, keyed by a digest of
the pixels. The automatic mask generator shares that predictor, so auto masks and later prompts on the same
image encode it once. One lock serialises use of the model: the predictor holds the "current image" as state.

Masks come back as Regions: the tight bounding box of the mask, the mask cropped to that box, and SAM's
predicted IoU as the score.
"""

from __future__ import annotations

import hashlib
import importlib
import pickle
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from services.common.errors import InvalidArgument
from services.common.geometry import Box
from services.segmentation.domain.regions import Region

SAM_MODEL_TYPES = ("vit_t", "vit_b", "vit_l", "vit_h")
_EMBEDDINGS_KEPT = 2
# Full-resolution float masks are upsampled per box; batching bounds that memory for many boxes.
_BOXES_PER_BATCH = 16


def _package(model_type: str) -> ModuleType:
    """The package providing `model_type`: mobile_sam for MobileSAM (vit_t), segment_anything otherwise."""
    if model_type not in SAM_MODEL_TYPES:
        raise ValueError(f"unknown SAM model type {model_type!r}; expected one of {', '.join(SAM_MODEL_TYPES)}")
    # mobile_sam imports timm through deprecated module paths and re-registers timm's TinyViT names,
    # which prints FutureWarning/UserWarning noise on every start.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        return importlib.import_module("mobile_sam" if model_type == "vit_t" else "segment_anything")


def build_model(model_type: str) -> torch.nn.Module:
    """The model with random initial weights, in eval mode."""
    return _package(model_type).sam_model_registry[model_type](checkpoint=None)


def _load_model(model_type: str, checkpoint: Path) -> torch.nn.Module:
    described = f"SAM checkpoint {checkpoint} (model type {model_type})"
    if not checkpoint.is_file():
        raise ValueError(f"{described} does not exist")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise ValueError(f"{described} is not a PyTorch state dict: {error}") from error
    if not isinstance(state, dict):
        raise ValueError(f"{described} holds a {type(state).__name__}, not a state dict")
    model = build_model(model_type)
    try:
        outcome = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # tensors of the wrong shape
        summary = " ".join(str(error).split())[:400]
        raise ValueError(f"{described} does not fit that model: {summary}") from error
    if outcome.missing_keys or outcome.unexpected_keys:
        raise ValueError(
            f"{described} does not fit that model: {len(outcome.missing_keys)} missing keys"
            f" (e.g. {outcome.missing_keys[:2]}), {len(outcome.unexpected_keys)} unexpected keys"
            f" (e.g. {outcome.unexpected_keys[:2]})"
        )
    return model.eval()


class _EmbeddingCache:
    """Mixed in before a package's SamPredictor: set_image restores the embedding of one of the last
    `_EMBEDDINGS_KEPT` images instead of running the image encoder again."""

    features: torch.Tensor | None
    original_size: tuple[int, ...] | None
    input_size: tuple[int, ...] | None
    is_image_set: bool

    def __init__(self, sam_model: torch.nn.Module) -> None:
        super().__init__(sam_model)  # type: ignore[call-arg]
        self._embeddings: OrderedDict[bytes, tuple[Any, ...]] = OrderedDict()

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        key = _pixel_digest(image, image_format)
        cached = self._embeddings.get(key)
        if cached is not None:
            self._embeddings.move_to_end(key)
            self.features, self.original_size, self.input_size = cached
            self.is_image_set = True
            return
        super().set_image(image, image_format)  # type: ignore[misc]
        self._embeddings[key] = (self.features, self.original_size, self.input_size)
        if len(self._embeddings) > _EMBEDDINGS_KEPT:
            self._embeddings.popitem(last=False)


@cache
def _caching_predictor_class(package: ModuleType) -> type:
    """`package`'s SamPredictor with the embedding cache mixed in."""
    return type("CachingSamPredictor", (_EmbeddingCache, package.SamPredictor), {})


def _pixel_digest(image: np.ndarray, image_format: str) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.shape}{image.dtype}{image_format}".encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.digest()


def _check_rgb(image: np.ndarray) -> tuple[int, int]:
    """(width, height) of an RGB uint8 image."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}")
    return image.shape[1], image.shape[0]


def _checked_points(
    points: Sequence[tuple[float, float]], labels: Sequence[int], width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    if len(points) != len(labels):
        raise InvalidArgument(f"{len(points)} prompt points but {len(labels)} labels")
    try:
        coords = np.asarray(points, dtype=np.float32).reshape(len(points), 2)
        label_array = np.asarray(labels, dtype=np.int64).reshape(len(labels))
    except (TypeError, ValueError) as error:
        raise InvalidArgument("prompt points must be [x, y] pairs and labels integers") from error
    if not np.isin(label_array, (0, 1)).all():
        raise InvalidArgument("prompt labels must be 1 (foreground) or 0 (background)")
    outside = (coords[:, 0] < 0) | (coords[:, 0] > width) | (coords[:, 1] < 0) | (coords[:, 1] > height)
    if outside.any():
        x, y = coords[np.argmax(outside)]
        raise InvalidArgument(f"prompt point ({x:g}, {y:g}) lies outside the {width}x{height} image")
    return coords, label_array


def _region_from_mask(mask: np.ndarray, score: float, within: Box | None = None) -> Region | None:
    """The tight box of the image-sized mask (restricted to `within`, if given) and the mask cropped to that
    box; None for an empty mask."""
    x_offset, y_offset = 0, 0
    if within is not None:
        mask = mask[within.y0 : within.y1, within.x0 : within.x1]
        x_offset, y_offset = within.x0, within.y0
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    columns = np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(columns[0]), int(columns[-1]) + 1
    box = Box(x_offset + left, y_offset + top, x_offset + right, y_offset + bottom)
    return Region(box=box, mask=np.array(mask[top:bottom, left:right], dtype=bool), score=score, source="sam")


class SamSegmenter:
    """One SAM or MobileSAM model on the CPU, safe to share between threads."""

    name = "sam"

    def __init__(
        self,
        model_type: str,
        checkpoint: Path,
        *,
        threads: int = 2,
        points_per_side: int = 16,
        pred_iou_thresh: float = 0.86,
        stability_score_thresh: float = 0.92,
        min_mask_region_area: int = 0,
    ) -> None:
        torch.set_num_threads(threads)
        self.model_type = model_type
        self.model = _load_model(model_type, checkpoint)
        package = _package(model_type)
        self._predictor = _caching_predictor_class(package)(self.model)
        self._mask_generator = package.SamAutomaticMaskGenerator(
            self.model,
            points_per_side=points_per_side,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            min_mask_region_area=min_mask_region_area,
            output_mode="binary_mask",
        )
        # The generator builds its own predictor; sharing ours lets it reuse cached embeddings.
        self._mask_generator.predictor = self._predictor
        self._lock = threading.Lock()

    def regions(self, image: np.ndarray) -> list[Region]:
        """Automatic masks over the whole image (a grid of point prompts, filtered and de-duplicated by SAM)."""
        _check_rgb(image)
        with self._lock, torch.inference_mode():
            records = self._mask_generator.generate(image)
        regions = (_region_from_mask(record["segmentation"], float(record["predicted_iou"])) for record in records)
        return [region for region in regions if region is not None]

    def at_points(
        self, image: np.ndarray, points: Sequence[tuple[float, float]], labels: Sequence[int]
    ) -> Region | None:
        """The best of SAM's three candidate masks for foreground (1) / background (0) points; None if empty."""
        width, height = _check_rgb(image)
        if not points:
            raise InvalidArgument("a point prompt needs at least one point")
        coords, label_array = _checked_points(points, labels, width, height)
        with self._lock, torch.inference_mode():
            self._predictor.set_image(image)
            masks, scores, _ = self._predictor.predict(
                point_coords=coords, point_labels=label_array, multimask_output=True
            )
        best = int(np.argmax(scores))
        return _region_from_mask(masks[best], float(scores[best]))

    def in_boxes(
        self,
        image: np.ndarray,
        boxes: Sequence[Box],
        points: Sequence[tuple[float, float]] | None = None,
        labels: Sequence[int] | None = None,
    ) -> list[Region]:
        """One Region per box: the mask SAM finds for it, cut to the box. Points, if given, refine the boxes
        that contain them. A box whose mask comes out empty is returned as itself (clipped to the image),
        without a mask and with score 0."""
        width, height = _check_rgb(image)
        if not boxes:
            return []
        clipped = [box.clipped(width, height) for box in boxes]
        for box, inside_image in zip(boxes, clipped, strict=True):
            if inside_image.area == 0:
                raise InvalidArgument(f"prompt box {box} has no area inside the {width}x{height} image")
        coords, label_array = _checked_points(points or [], labels or [], width, height)
        regions: list[Region] = []
        with self._lock, torch.inference_mode():
            self._predictor.set_image(image)
            for start in range(0, len(clipped), _BOXES_PER_BATCH):
                regions += self._predict_boxes(clipped[start : start + _BOXES_PER_BATCH], coords, label_array)
        return regions

    def _predict_boxes(self, boxes: list[Box], coords: np.ndarray, labels: np.ndarray) -> list[Region]:
        """Batched box prompts on the current image, as SAM's README does for several boxes."""
        predictor = self._predictor
        image_size = predictor.original_size
        box_tensor = torch.tensor([[box.x0, box.y0, box.x1, box.y1] for box in boxes], dtype=torch.float32)
        point_tensor, label_tensor = None, None
        if len(coords):
            # Each box gets the points inside it; label -1 is SAM's "not a point" padding for the others.
            belongs = np.array([[box.contains_point(x, y) for x, y in coords] for box in boxes])
            per_box = max(1, int(belongs.sum(axis=1).max()))
            padded_coords = np.zeros((len(boxes), per_box, 2), dtype=np.float32)
            padded_labels = np.full((len(boxes), per_box), -1, dtype=np.int64)
            for index, members in enumerate(belongs):
                count = int(members.sum())
                padded_coords[index, :count] = coords[members]
                padded_labels[index, :count] = labels[members]
            point_tensor = predictor.transform.apply_coords_torch(torch.from_numpy(padded_coords), image_size)
            label_tensor = torch.from_numpy(padded_labels)
        masks, scores, _ = predictor.predict_torch(
            point_coords=point_tensor,
            point_labels=label_tensor,
            boxes=predictor.transform.apply_boxes_torch(box_tensor, image_size),
            multimask_output=False,
        )
        regions = []
        for box, mask, score in zip(boxes, masks[:, 0].numpy(), scores[:, 0].tolist(), strict=True):
            region = _region_from_mask(mask, float(score), within=box)
            regions.append(region or Region(box=box, mask=None, score=0.0, source="sam"))
        return regions
