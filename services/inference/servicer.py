"""gRPC servicers of the inference service: map messages to domain calls and back, nothing more."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Collection
from contextlib import aclosing
from pathlib import Path

import grpc
from google.api import httpbody_pb2
from google.protobuf import struct_pb2
from google.protobuf.message import Message
from visionmesh.inference.v1 import inference_pb2 as pb
from visionmesh.inference.v1 import inference_pb2_grpc

from services.common.clock import iso, utcnow_precise
from services.common.errors import InvalidArgument, ServiceError
from services.common.grpc_http import stream_download
from services.common.messages import nullable
from services.common.triton.link import TritonLink
from services.common.uploads import ReceivedFile, ReceivedUpload, UploadReceiver, client_named, receive_upload
from services.inference.domain.detection import Detection
from services.inference.domain.engine import Thresholds
from services.inference.domain.service import ImageResult, InferenceService, StreamedFrame, StreamRequest
from services.inference.domain.tasks import TaskQueue
from services.inference.settings import InferenceSettings

_RAW_BODY_NAME = "upload"  # a non-multipart body, until the client's `filename` names it


def _rounded(detection: Detection) -> tuple[float, dict[str, float]]:
    """Confidence to 4 decimals and box corners to 1/100 pixel: what every answer prints."""
    corners = {"x1": detection.x1, "y1": detection.y1, "x2": detection.x2, "y2": detection.y2}
    return round(detection.confidence, 4), {name: round(value, 2) for name, value in corners.items()}


def _detection(detection: Detection) -> pb.Detection:
    confidence, box = _rounded(detection)
    return pb.Detection(
        class_id=detection.class_id,
        class_name=detection.class_name,
        confidence=confidence,
        bbox=pb.BoundingBox(**box),
    )


def _detection_json(detection: Detection) -> dict[str, object]:
    """The same as _detection, for the JSON of an SSE event."""
    confidence, box = _rounded(detection)
    return {"class_id": detection.class_id, "class_name": detection.class_name, "confidence": confidence, "bbox": box}


def _exported_detection(detection: Detection) -> pb.ExportedDetection:
    confidence, box = _rounded(detection)
    return pb.ExportedDetection(class_id=detection.class_id, class_name=detection.class_name, conf=confidence, **box)


def _infer_response(result: ImageResult) -> pb.InferResponse:
    return pb.InferResponse(
        model_id=result.model_id, image_path=result.image_path, detections=map(_detection, result.detections)
    )


def _images(upload: ReceivedUpload) -> list[ReceivedFile]:
    """The images of a multi-image request: fields `files` (documented), or `file`."""
    return [received for received in upload.files if received.field in ("files", "file")]


def _sse(data: dict[str, object], event: str = "") -> httpbody_pb2.HttpBody:
    head = f"event: {event}\n" if event else ""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return httpbody_pb2.HttpBody(content_type="text/event-stream", data=f"{head}data: {payload}\n\n".encode())


def _parse_threshold(upload: ReceivedUpload, first: pb.InferRequest, name: str) -> float | None:
    raw = upload.fields.get(name, "").strip()
    if raw:
        try:
            return float(raw)
        except ValueError:
            raise InvalidArgument(f"{name} must be a number between 0 and 1, not {raw!r}") from None
    return _optional(first, name)


def _optional(message: Message, name: str) -> float | None:
    return getattr(message, name) if message.HasField(name) else None


def _stream_request(message: pb.FrameRequest) -> StreamRequest:
    payload = message.WhichOneof("payload")
    return StreamRequest(
        model_id=message.model_id,
        conf=_optional(message, "conf"),
        iou=_optional(message, "iou"),
        annotate=message.annotate,
        image=message.image if payload == "image" else None,
        video_chunk=message.video_chunk if payload == "video_chunk" else None,
    )


def _frame_result(frame: StreamedFrame) -> pb.FrameResult:
    return pb.FrameResult(
        frame=frame.index,
        detections=map(_detection, frame.detections),
        width=frame.width,
        height=frame.height,
        inference_ms=frame.inference_ms,
        annotated_jpeg=frame.annotated_jpeg,
    )


def _frame_event(frame: StreamedFrame) -> dict[str, object]:
    return {
        "frame": frame.index,
        "image_data": base64.b64encode(frame.annotated_jpeg).decode(),
        "detections": [_detection_json(d) for d in frame.detections],
    }


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """The settings give only what each route accepts from the wire (upload bytes); the rest is the domain's."""

    def __init__(self, service: InferenceService, settings: InferenceSettings) -> None:
        self._service = service
        self._settings = settings

    async def _receive(
        self,
        messages: AsyncIterator[pb.InferRequest],
        staging: Path,
        raw_field: str,
        max_bytes: int,
        parts: Collection[str] = (),
    ) -> tuple[ReceivedUpload, pb.InferRequest, Thresholds]:
        """The upload of one of the detection routes: its files, and the thresholds (`conf`, `iou`) every route
        takes; `parts` are the route's other form fields."""
        receiver = UploadReceiver(
            staging, max_bytes, raw_field=raw_field, raw_filename=_RAW_BODY_NAME, parts={*parts, "conf", "iou"}
        )
        upload, first = await receive_upload(messages, lambda message: message.body, receiver)
        upload.files[:] = [client_named(f, first) if f.filename == _RAW_BODY_NAME else f for f in upload.files]
        thresholds = self._service.thresholds(
            _parse_threshold(upload, first, "conf"), _parse_threshold(upload, first, "iou")
        )
        return upload, first, thresholds

    async def Infer(
        self, request_iterator: AsyncIterator[pb.InferRequest], context: grpc.aio.ServicerContext
    ) -> pb.InferResponse:
        with self._service.staging() as staging:
            upload, first, thresholds = await self._receive(
                request_iterator, staging, "file", self._settings.max_image_upload_bytes
            )
            result = await self._service.infer_image(first.model_id, upload.single_file("file"), thresholds)
        return _infer_response(result)

    async def InferBatch(
        self, request_iterator: AsyncIterator[pb.InferRequest], context: grpc.aio.ServicerContext
    ) -> pb.BatchInferResponse:
        with self._service.staging() as staging:
            upload, _, thresholds = await self._receive(
                request_iterator, staging, "files", self._settings.max_image_upload_bytes, ("file", "model_ids")
            )
            results = await self._service.infer_batch(
                upload.fields.get("model_ids", ""),
                _images(upload),
                thresholds,
            )
        return pb.BatchInferResponse(results=map(_infer_response, results))

    async def InferVideo(
        self, request_iterator: AsyncIterator[pb.InferRequest], context: grpc.aio.ServicerContext
    ) -> pb.VideoInferResponse:
        with self._service.staging() as staging:
            upload, first, thresholds = await self._receive(
                request_iterator, staging, "file", self._settings.max_video_upload_bytes
            )
            video = upload.single_file("file")
            result, video_data = await self._service.annotate_video_inline(
                first.model_id, video.path, thresholds, staging
            )
        return pb.VideoInferResponse(
            model_id=first.model_id,
            video_data=base64.b64encode(video_data).decode(),
            stats=pb.VideoStats(
                total_frames=len(result.detections_per_frame),
                detections_per_frame=result.detections_per_frame,
                fps=round(result.info.fps, 3),
                width=result.info.width,
                height=result.info.height,
            ),
        )

    async def StreamVideo(
        self, request_iterator: AsyncIterator[pb.InferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        with self._service.staging() as staging:
            upload, first, thresholds = await self._receive(
                request_iterator, staging, "file", self._settings.max_video_upload_bytes
            )
            # Everything that can be refused is checked before the first event (the status is still 400-able).
            stream = await self._service.open_video_stream(first.model_id, upload.single_file("file").path, thresholds)
            await context.send_initial_metadata((("cache-control", "no-cache"), ("x-accel-buffering", "no")))
            frames = 0
            try:
                async with aclosing(stream.frames):
                    async for frame in stream.frames:
                        yield _sse(_frame_event(frame))
                        frames += 1
            except ServiceError as error:
                yield _sse({"detail": error.detail, "frames_sent": frames}, event="error")
                return
            yield _sse({"model_id": stream.model_id, "total_frames": frames, "fps": stream.info.fps}, event="end")

    async def ExportInfer(
        self, request_iterator: AsyncIterator[pb.InferRequest], context: grpc.aio.ServicerContext
    ) -> pb.ExportSession:
        with self._service.staging() as staging:
            upload, first, thresholds = await self._receive(
                request_iterator, staging, "files", self._settings.max_image_upload_bytes, ("file",)
            )
            session = await self._service.export_session(first.model_id, _images(upload), thresholds)
        return pb.ExportSession(
            session_id=session.session_id,
            session_dir=str(session.directory),
            results=[
                pb.ExportedImage(
                    image_uuid=image.image_uuid,
                    image_filename=image.image_filename,
                    model_id=image.model_id,
                    image_width=image.image_width,
                    image_height=image.image_height,
                    detection_count=image.detection_count,
                    detections=map(_exported_detection, image.detections),
                )
                for image in session.images
            ],
        )

    def DownloadSession(
        self, request: pb.SessionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        return stream_download(context, self._service.session_archive, request.session_id)

    def GetUpload(
        self, request: pb.UploadFileRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        return stream_download(context, self._service.open_upload, request.filename)

    async def DetectStream(
        self, request_iterator: AsyncIterator[pb.FrameRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.FrameResult]:
        requests = (_stream_request(message) async for message in request_iterator)
        frames = self._service.detect_stream(requests, self._settings.max_video_upload_bytes)
        async with aclosing(frames):
            async for frame in frames:
                yield _frame_result(frame)


class ServingControlServicer(inference_pb2_grpc.ServingControlServicer):
    def __init__(self, service: InferenceService) -> None:
        self._service = service

    async def LoadModel(self, request: pb.ServedModelRequest, context: grpc.aio.ServicerContext) -> pb.ServedModel:
        await self._service.load_model(request.model_id)
        return pb.ServedModel(model_id=request.model_id, state="READY", message="Model loaded")

    async def UnloadModel(self, request: pb.ServedModelRequest, context: grpc.aio.ServicerContext) -> pb.ServedModel:
        await self._service.unload_model(request.model_id)
        return pb.ServedModel(model_id=request.model_id, state="UNLOADED", message="Model unloaded")


_RESULT_MESSAGES = {
    "completed": "任务已完成",
    "failed": "任务失败",
    "pending": "任务尚未完成",
    "processing": "任务尚未完成",
}


def _seconds(value: float | None) -> struct_pb2.Value:
    return struct_pb2.Value(number_value=round(value, 3)) if value is not None else nullable(None)


class TaskServicer(inference_pb2_grpc.TaskServiceServicer):
    def __init__(self, tasks: TaskQueue, triton: TritonLink) -> None:
        self._tasks = tasks
        self._triton = triton

    async def SubmitTask(
        self, request: pb.SubmitTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitTaskResponse:
        task = await self._tasks.submit(request.index)
        return pb.SubmitTaskResponse(task_id=task.task_id, index=task.index, message="任务已创建，正在处理中")

    async def GetTaskStatus(self, request: pb.TaskRequest, context: grpc.aio.ServicerContext) -> pb.TaskStatus:
        task = await asyncio.to_thread(self._tasks.get, request.task_id)
        return pb.TaskStatus(
            task_id=task.task_id,
            index=task.index,
            status=task.status,
            created_at=iso(task.created_at),
            completed_at=nullable(iso(task.completed_at) or None),
            inference_time=_seconds(task.inference_time),
            error_message=nullable(task.error_message),
        )

    async def GetTaskResult(self, request: pb.TaskRequest, context: grpc.aio.ServicerContext) -> pb.TaskResult:
        task = await asyncio.to_thread(self._tasks.get, request.task_id)
        files = await asyncio.to_thread(self._tasks.result_files, task.task_id) if task.status == "completed" else []
        return pb.TaskResult(
            task_id=task.task_id,
            index=task.index,
            status=task.status,
            inference_time=_seconds(task.inference_time),
            created_at=iso(task.created_at),
            completed_at=nullable(iso(task.completed_at) or None),
            files=[pb.ResultFile(filename=f.filename, type=f.type, url=f.url) for f in files],
            message=_RESULT_MESSAGES.get(task.status, ""),
            error_message=nullable(task.error_message),
        )

    def GetTaskFile(
        self, request: pb.TaskFileRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        return stream_download(context, self._tasks.open_file, request.task_id, request.filename)

    async def ListTasks(self, request: pb.ListTasksRequest, context: grpc.aio.ServicerContext) -> pb.ListTasksResponse:
        page = request.page if request.HasField("page") else None
        page_size = request.page_size if request.HasField("page_size") else None
        tasks, total, page, page_size = await asyncio.to_thread(self._tasks.list, page, page_size, request.status)
        return pb.ListTasksResponse(
            total=total,
            page=page,
            page_size=page_size,
            tasks=[
                pb.TaskSummary(
                    task_id=t.task_id,
                    index=t.index,
                    status=t.status,
                    created_at=iso(t.created_at),
                    completed_at=nullable(iso(t.completed_at) or None),
                )
                for t in tasks
            ],
        )

    async def GetSystemStatus(
        self, request: pb.SystemStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemStatus:
        stats = await asyncio.to_thread(self._tasks.stats)
        return pb.SystemStatus(
            status="running",
            ssh_connected=self._triton.connected,
            queue_size=stats.pending,
            queue_running=stats.running,
            processing=stats.processing,
        )

    async def Health(self, request: pb.HealthRequest, context: grpc.aio.ServicerContext) -> pb.HealthResponse:
        return pb.HealthResponse(status="healthy", timestamp=utcnow_precise().isoformat(timespec="microseconds"))
