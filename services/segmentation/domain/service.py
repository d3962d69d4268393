"""The segmentation service's use cases: a page's components (/ingest), the predictSam routes and predictResnet.

Each route loads its image (URL under the fetch policy, or an upload), reads the page's text with the OCR
service when something needs it, segments with the configured segmenter (SAM or the layout segmenter), cuts
the components out and, when asked, classifies them with a ResNet on Triton and attaches their text.
Segmentation and OCR run in threads bounded by `timeout_seconds` (err 802 beyond it).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
from PIL import Image

from services.common.envelope import EnvelopeError, Err
from services.common.fetch import FetchPolicy
from services.common.geometry import Box, TextLine
from services.common.image_urls import LoadedImage, load_image_url
from services.segmentation.domain.classification import ClassifierModel, ComponentClassifier
from services.segmentation.domain.components import (
    ComponentCut,
    background_color,
    cut_component,
    filter_regions,
    inside,
    merge_text_regions,
)
from services.segmentation.domain.prompts import (
    Point,
    Prompt,
    check_box_inside,
    check_inside,
    lasso_box,
    parse_box,
    parse_points,
    parse_prompt,
)
from services.segmentation.domain.regions import Region
from services.segmentation.domain.segmenters import Segmenter, Segmenters
from services.segmentation.domain.tree import PageElement, PageSchema, build_schema

T = TypeVar("T")
_DUPLICATE_IOU = 0.85


class TextReader(Protocol):
    async def read(self, image: bytes) -> list[TextLine]: ...


@dataclass(frozen=True)
class SamQuery:
    """What the three predictSam routes share, already decoded from JSON."""

    image_url: str
    input_point: Sequence[Any] = ()
    input_label: Sequence[int] = ()
    input_box: Sequence[Any] = ()
    is_predict_type: bool = False
    resnet_model_id: str = ""
    read_text_types: Sequence[str] = ()
    cut_outline: bool = False


@dataclass(frozen=True)
class ComponentOut:
    cut: ComponentCut
    # Only for prompted components: the texts (None = not reported) and the type (None = not asked).
    text: list[str] | None = None
    component_type: str | None = None


@dataclass(frozen=True)
class SamResult:
    components: list[ComponentOut]
    segmenter: str


@dataclass(frozen=True)
class FatherOut:
    cut: ComponentCut
    background_color: tuple[int, int, int]
    children: list[ComponentOut]  # boxes in page pixels; the servicer makes them relative to the father


@dataclass(frozen=True)
class PageAnalysis:
    schema: PageSchema
    width: int
    height: int
    segmenter: str


@dataclass(frozen=True)
class ResnetResult:
    model_id: str
    component_type: dict[str, str]  # url -> type
    predict_result: dict[str, float]  # type -> count (+ "acc")
    image_num: int
    failed: dict[str, int]  # url -> err


def _crop(image: np.ndarray, box: Box) -> Image.Image:
    clipped = box.clipped(image.shape[1], image.shape[0])
    return Image.fromarray(np.ascontiguousarray(image[clipped.y0 : clipped.y1, clipped.x0 : clipped.x1]))


def _texts_by_region(regions: Sequence[Region], lines: Sequence[TextLine]) -> list[list[str]]:
    """Each line goes to the smallest region holding its centre; texts in reading order."""
    texts: list[list[str]] = [[] for _ in regions]
    for line in sorted(lines, key=lambda line: (line.box.y0, line.box.x0)):
        centre = ((line.box.x0 + line.box.x1) / 2, (line.box.y0 + line.box.y1) / 2)
        holders = [index for index, region in enumerate(regions) if region.box.contains_point(*centre)]
        if holders:
            texts[min(holders, key=lambda index: regions[index].box.area)].append(line.text)
    return texts


class ComponentService:
    def __init__(
        self,
        segmenters: Segmenters,
        text_reader: TextReader,
        classifier: ComponentClassifier,
        *,
        policy: FetchPolicy,
        max_image_pixels: int,
        timeout_seconds: float,
        max_resnet_images: int,
    ) -> None:
        self._segmenters = segmenters
        self._text = text_reader
        self._classifier = classifier
        self._policy = policy
        self._max_pixels = max_image_pixels
        self._timeout = timeout_seconds
        self._max_resnet_images = max_resnet_images

    @property
    def ingest_segmenter(self) -> str:
        return self._segmenters.ingest.name

    async def _bounded(self, work: Awaitable[T], what: str) -> T:
        try:
            return await asyncio.wait_for(work, self._timeout)
        except TimeoutError as error:
            raise EnvelopeError(Err.TIMEOUT, f"{what} took longer than {self._timeout:g} s", http_status=503) from error

    async def _lines(self, image: LoadedImage) -> list[TextLine]:
        return await self._bounded(self._text.read(image.data), "Reading the text")

    async def _segment(self, segmenter: Segmenter, method: str, *args: Any) -> Any:
        return await self._bounded(asyncio.to_thread(getattr(segmenter, method), *args), "The segmentation")

    async def load(self, url: str) -> LoadedImage:
        return await load_image_url(url, self._policy, self._max_pixels)

    # ---- /ingest ----

    async def analyse_page(self, image: LoadedImage, model_id: str = "") -> PageAnalysis:
        """Every component of a screenshot, classified, with its text, as the low-code schema."""
        model = await self._classifier.model(model_id)
        segmenter = self._segmenters.ingest
        height, width = image.rgb.shape[:2]
        lines = await self._lines(image)
        regions = await self._segment(segmenter, "regions", image.rgb, lines)
        if not segmenter.needs_text:  # SAM knows nothing of text: add the lines its masks missed
            kept = filter_regions(regions, width, height)
            regions = merge_text_regions(kept, [line.box for line in lines])
        texts = _texts_by_region(regions, lines)
        crops = [_crop(image.rgb, region.box) for region in regions]
        classes = await self._classifier.classify(model, crops)
        elements = [
            PageElement(region.box, result.label, " ".join(text))
            for region, result, text in zip(regions, classes, texts, strict=True)
        ]
        return PageAnalysis(build_schema(elements), width, height, segmenter.name)

    # ---- predictSam, predictSam2, predictSam3 ----

    async def _describe(
        self, image: LoadedImage, regions: Sequence[Region], query: SamQuery, *, outline: bool
    ) -> list[ComponentOut]:
        """Prompted components: cut out, then typed and read when the request asks."""
        cuts = [cut_component(image.rgb, region, outline=outline) for region in regions]
        wants_text = bool(query.read_text_types)
        if not regions or not (query.is_predict_type or wants_text):
            return [ComponentOut(cut, [] if wants_text else None) for cut in cuts]
        model = await self._classifier.model(query.resnet_model_id)
        classes = await self._classifier.classify(model, [_crop(image.rgb, region.box) for region in regions])
        texts = _texts_by_region(regions, await self._lines(image)) if wants_text else [[] for _ in regions]
        read_types = set(query.read_text_types)
        return [
            ComponentOut(
                cut,
                text if result.label in read_types else [],
                result.label if query.is_predict_type else None,
            )
            for cut, result, text in zip(cuts, classes, texts, strict=True)
        ]

    async def _check_model(self, model_id: str) -> ClassifierModel | None:
        return await self._classifier.model(model_id) if model_id else None

    async def predict_sam(self, query: SamQuery) -> SamResult:
        prompt = parse_prompt(query.input_point, query.input_label, query.input_box)
        await self._check_model(query.resnet_model_id)
        image = await self.load(query.image_url)
        height, width = image.rgb.shape[:2]
        check_inside(prompt, width, height)
        segmenter = self._segmenters.prompts
        if prompt.empty:
            # As the document says: automatic masks come without type or text, cut by their bounding box.
            lines = await self._lines(image) if segmenter.needs_text else []
            regions = await self._segment(segmenter, "regions", image.rgb, lines)
            cuts = [ComponentOut(cut_component(image.rgb, region, outline=False)) for region in regions]
            return SamResult(cuts, segmenter.name)
        regions = await self._prompted(image, prompt)
        return SamResult(await self._describe(image, regions, query, outline=query.cut_outline), segmenter.name)

    async def _prompted(self, image: LoadedImage, prompt: Prompt) -> list[Region]:
        segmenter = self._segmenters.prompts
        lines = await self._lines(image) if segmenter.needs_text else []
        height, width = image.rgb.shape[:2]
        if prompt.boxes:
            boxes = [check_box_inside(box, width, height) for box in prompt.boxes]
            return await self._segment(segmenter, "in_boxes", image.rgb, lines, boxes, prompt.points)
        region = await self._segment(segmenter, "at_points", image.rgb, lines, prompt.points, prompt.labels)
        return [region] if region is not None else []

    async def predict_sam2(self, query: SamQuery, select_box: Sequence[Any]) -> tuple[FatherOut, str]:
        prompt = parse_prompt(query.input_point, query.input_label, ())
        selected = parse_box(select_box, "select_box") if select_box else None
        await self._check_model(query.resnet_model_id)
        image = await self.load(query.image_url)
        height, width = image.rgb.shape[:2]
        check_inside(prompt, width, height)
        area = check_box_inside(selected, width, height) if selected else Box(0, 0, width, height)
        segmenter = self._segmenters.prompts
        lines = await self._lines(image)
        automatic = await self._segment(segmenter, "regions", image.rgb, lines)
        kept = inside(filter_regions(automatic, width, height), area)
        text_boxes = [line.box for line in lines if area.contains(line.box)]
        children = [region for region in merge_text_regions(kept, text_boxes) if region.box != area]
        if prompt.points:
            pointed = await self._segment(segmenter, "at_points", image.rgb, lines, prompt.points, prompt.labels)
            if pointed is not None:
                pointed = Region(pointed.box, pointed.mask, pointed.score, "prompt")
                children = [pointed, *(c for c in children if c.box.iou(pointed.box) < _DUPLICATE_IOU)]
        described = await self._describe(image, children, query, outline=query.cut_outline)
        father = FatherOut(
            cut_component(image.rgb, Region(area), outline=False), background_color(image.rgb, area), described
        )
        return father, segmenter.name

    async def predict_sam3(self, query: SamQuery, lasso: Sequence[Any]) -> SamResult:
        points: list[Point] = parse_points(lasso, "points")
        box = lasso_box(points)
        prompt = parse_prompt(query.input_point, query.input_label, ())
        boxed = SamQuery(
            image_url=query.image_url,
            input_point=[list(point) for point in prompt.points],
            input_label=prompt.labels,
            input_box=[box.x0, box.y0, box.x1, box.y1],
            is_predict_type=query.is_predict_type,
            resnet_model_id=query.resnet_model_id,
            read_text_types=query.read_text_types,
            cut_outline=True,
        )
        return await self.predict_sam(boxed)

    # ---- predictResnet ----

    async def predict_resnet(self, urls: Sequence[str], model_id: str, expected_type: str) -> ResnetResult:
        if not urls:
            raise EnvelopeError(Err.DATA_FORMAT_ERROR, "image_url_list is empty")
        if len(urls) > self._max_resnet_images:
            detail = f"image_url_list has {len(urls)} URLs; at most {self._max_resnet_images} per request"
            raise EnvelopeError(Err.INVALID_PARAMETER, detail)
        model = await self._classifier.model(model_id)
        if expected_type and expected_type not in model.labels:
            detail = f"input_component_type {expected_type!r} is not one of the model's labels {model.labels}"
            raise EnvelopeError(Err.INVALID_PARAMETER, detail)
        unique = list(dict.fromkeys(urls))
        loaded = await asyncio.gather(*(self.load(url) for url in unique), return_exceptions=True)
        failed: dict[str, int] = {}
        images: dict[str, Image.Image] = {}
        for url, outcome in zip(unique, loaded, strict=True):
            if isinstance(outcome, EnvelopeError):
                failed[url] = int(outcome.err)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                images[url] = Image.fromarray(outcome.rgb)
        classes = await self._classifier.classify(model, list(images.values()))
        types = {url: result.label for url, result in zip(images, classes, strict=True)}
        counts: dict[str, float] = {label: float(count) for label, count in Counter(types.values()).items()}
        if expected_type and types:
            counts["acc"] = round(sum(label == expected_type for label in types.values()) / len(types), 4)
        return ResnetResult(model.model_id, types, counts, len(types), failed)
