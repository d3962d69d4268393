"""The segmentation service's gRPC client of the OCR service (text lines inside screenshots)."""

from __future__ import annotations

import grpc
import structlog
from visionmesh.ocr.v1 import ocr_pb2, ocr_pb2_grpc

from services.common.channels import mesh_channel
from services.common.envelope import EnvelopeError, Err
from services.common.geometry import Box, TextLine

log = structlog.get_logger(__name__)

_READ_TIMEOUT_S = 120.0
_INVALID_STATUSES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)


class GrpcTextReader:
    """Reads the text lines of an encoded image with the OCR service."""

    def __init__(self, address: str, max_message_bytes: int) -> None:
        options = [("grpc.max_send_message_length", max_message_bytes)]
        self._channel = mesh_channel(address, options)
        self._stub = ocr_pb2_grpc.TextReaderStub(self._channel)
        self._address = address

    async def read(self, image: bytes) -> list[TextLine]:
        try:
            response = await self._stub.ReadText(ocr_pb2.ReadTextRequest(image=image), timeout=_READ_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            if error.code() in _INVALID_STATUSES:
                raise EnvelopeError(
                    Err.INVALID_IMAGE, f"The OCR service refused the image: {error.details()}"
                ) from error
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise EnvelopeError(Err.TIMEOUT, "Reading the text took too long", http_status=503) from error
            log.warning("ocr service call failed", address=self._address, code=error.code().name)
            detail = f"The OCR service did not answer ({error.code().name}); try again shortly"
            raise EnvelopeError(Err.UNKNOWN_ERROR, detail, http_status=503) from error
        return [
            TextLine(Box(line.left, line.top, line.left + line.width, line.top + line.height), line.text, line.score)
            for line in response.lines
        ]

    async def close(self) -> None:
        await self._channel.close()
