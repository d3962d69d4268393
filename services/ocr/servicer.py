"""gRPC servicers of the OCR service: map messages to domain calls and back."""

from __future__ import annotations

import grpc
from google.protobuf import json_format, struct_pb2
from visionmesh.ocr.v1 import ocr_pb2 as pb
from visionmesh.ocr.v1 import ocr_pb2_grpc

from services.common.envelope import envelope_errors, success
from services.ocr.domain.service import OcrService


class OcrServicer(ocr_pb2_grpc.OcrServiceServicer):
    def __init__(self, service: OcrService) -> None:
        self._service = service

    async def PredictText(
        self, request: pb.PredictTextRequest, context: grpc.aio.ServicerContext
    ) -> pb.PredictTextResponse:
        with envelope_errors({"user_id": request.user_id}, err_style="string"):
            layouts = await self._service.predict_text(list(request.image_url_list))
        payload = pb.PredictTextPayload(user_id=request.user_id)
        for url, layout in layouts.items():
            payload.text[url].CopyFrom(json_format.ParseDict(layout.to_payload(), struct_pb2.ListValue()))
        return success(pb.PredictTextResponse, payload)


class TextReaderServicer(ocr_pb2_grpc.TextReaderServicer):
    """Internal: the text lines of screenshots, for the segmentation service."""

    def __init__(self, service: OcrService) -> None:
        self._service = service

    async def ReadText(self, request: pb.ReadTextRequest, context: grpc.aio.ServicerContext) -> pb.ReadTextResponse:
        read = await self._service.read_text(request.image)
        lines = [
            pb.TextLine(
                left=line.box.x0,
                top=line.box.y0,
                width=line.box.width,
                height=line.box.height,
                text=line.text,
                score=line.score,
            )
            for line in read.lines
        ]
        return pb.ReadTextResponse(lines=lines, width=read.width, height=read.height)
