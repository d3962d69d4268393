"""Component images classified by a ResNet served on Triton: the same preprocessing as training
(classifier.preprocess), batched requests, argmax over the model's labels."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from services.segmentation.domain.classifier import preprocess


@dataclass(frozen=True)
class ClassifierModel:
    model_id: str
    labels: list[str]


@dataclass(frozen=True)
class Classification:
    label: str
    score: float


class ClassifierModels(Protocol):
    def resolve_model(self, model_id: str) -> ClassifierModel: ...


class ModelServer(Protocol):
    async def infer(self, model_id: str, batch: np.ndarray) -> np.ndarray: ...


class ComponentClassifier:
    def __init__(self, models: ClassifierModels, server: ModelServer, batch_size: int) -> None:
        self._models = models
        self._server = server
        self._batch_size = batch_size

    async def model(self, model_id: str) -> ClassifierModel:
        """The model a request names ("" = the default); EnvelopeError 805 when it cannot be used."""
        return await asyncio.to_thread(self._models.resolve_model, model_id)

    async def classify(self, model: ClassifierModel, images: Sequence[Image.Image]) -> list[Classification]:
        results: list[Classification] = []
        for start in range(0, len(images), self._batch_size):
            batch = await asyncio.to_thread(preprocess, images[start : start + self._batch_size])
            probabilities = await self._server.infer(model.model_id, batch)
            for row in probabilities:
                best = int(np.argmax(row))
                results.append(Classification(model.labels[best], float(row[best])))
        return results
