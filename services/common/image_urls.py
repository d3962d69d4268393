"""Images named by URL in document 004's requests: fetched under the operator's policy, then decoded, with the
document's error codes (801 unreadable URL, 802 timeout, 601 not a valid image)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from services.common.envelope import EnvelopeError, Err
from services.common.errors import InvalidArgument
from services.common.fetch import FetchFailed, FetchPolicy, fetch_url
from services.common.images import decode_image_rgb
from services.common.settings import UrlFetchSettings


@dataclass(frozen=True)
class LoadedImage:
    data: bytes  # as fetched or uploaded
    rgb: np.ndarray  # HxWx3 uint8, upright


def fetch_policy(settings: UrlFetchSettings) -> FetchPolicy:
    return FetchPolicy.from_strings(
        settings.fetch_max_bytes, settings.fetch_timeout_seconds, settings.fetch_allowed_networks
    )


async def load_image(data: bytes, max_pixels: int) -> LoadedImage:
    """Decode bytes the caller sent or named; 601 when they are not a complete image of an accepted format."""
    try:
        rgb = await asyncio.to_thread(decode_image_rgb, data, max_pixels)
    except InvalidArgument as error:
        raise EnvelopeError(Err.INVALID_IMAGE, f"Invalid image data: {error.detail}") from error
    return LoadedImage(data, rgb)


async def load_image_url(url: str, policy: FetchPolicy, max_pixels: int) -> LoadedImage:
    if not url.strip():
        raise EnvelopeError(Err.DATA_FORMAT_ERROR, "image_url is empty")
    try:
        data = await fetch_url(url.strip(), policy)
    except FetchFailed as error:
        err = Err.TIMEOUT if error.reason == "timeout" else Err.READ_URL_FAIL
        raise EnvelopeError(err, f"Could not read image_url: {error}") from error
    return await load_image(data, max_pixels)
