"""gRPC servicers of the training service: map messages to domain calls and back, nothing more."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import grpc
from google.api import httpbody_pb2
from google.protobuf import struct_pb2
from visionmesh.training.v1 import training_pb2 as pb
from visionmesh.training.v1 import training_pb2_grpc

from services.common.clock import iso
from services.common.grpc_http import stream_download
from services.common.messages import nullable, string_list
from services.common.uploads import ReceivedFile, receive_file
from services.training.domain import logs
from services.training.domain.jobs import JobManager, NewJob
from services.training.domain.metrics import training_metrics
from services.training.domain.models import ModelService
from services.training.settings import TrainingSettings
from services.training.storage.tables import JobRow, ModelRow

_MB = 1024 * 1024


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def _job(row: JobRow, log_file: str, epochs_completed: int) -> pb.Job:
    return pb.Job(
        job_id=row.job_id,
        dataset_id=row.dataset_id,
        version=row.version,
        model_name=row.model_name,
        epochs=row.epochs,
        imgsz=row.imgsz,
        batch=row.batch,
        status=row.status,
        created_at=iso(row.created_at),
        model_id=nullable(row.model_id),
        base_model_id=nullable(row.base_model_id),
        completed_at=nullable(iso(row.completed_at)),
        started_at=nullable(iso(row.started_at)),
        log_file=log_file,
        epochs_completed=epochs_completed,
        weights_source=row.weights_source,
        error=row.error,
    )


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    def __init__(self, jobs: JobManager) -> None:
        self._jobs = jobs

    def _message(self, row: JobRow) -> pb.Job:
        return _job(row, str(self._jobs.log_path(row)), self._jobs.epochs_completed(row))

    async def CreateJob(self, request: pb.CreateJobRequest, context: grpc.aio.ServicerContext) -> pb.CreateJobResponse:
        row = await self._jobs.create(
            NewJob(
                dataset_id=request.dataset_id,
                version=request.version,
                model_name=request.model_name,
                epochs=request.epochs if request.HasField("epochs") else 10,
                imgsz=request.imgsz if request.HasField("imgsz") else 640,
                batch=request.batch if request.HasField("batch") else -1,
                base_model_id=request.base_model_id,
            )
        )
        return pb.CreateJobResponse(job_id=row.job_id, status=row.status)

    async def ListJobs(self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext) -> pb.ListJobsResponse:
        rows, total = await asyncio.to_thread(self._jobs.list, request.page, request.page_size, request.status)
        return pb.ListJobsResponse(jobs=[self._message(row) for row in rows], total=total)

    async def GetJob(self, request: pb.JobRequest, context: grpc.aio.ServicerContext) -> pb.Job:
        return self._message(await asyncio.to_thread(self._jobs.get, request.job_id))

    async def StopJob(self, request: pb.JobRequest, context: grpc.aio.ServicerContext) -> pb.OperationResult:
        return pb.OperationResult(ok=True, message=await self._jobs.stop(request.job_id))

    async def ResumeJob(self, request: pb.JobRequest, context: grpc.aio.ServicerContext) -> pb.ResumeJobResponse:
        row = await self._jobs.resume(request.job_id)
        return pb.ResumeJobResponse(
            ok=True, message="Training job resumed successfully", job_id=row.job_id, status=row.status
        )

    async def DeleteJob(self, request: pb.JobRequest, context: grpc.aio.ServicerContext) -> pb.OperationResult:
        await self._jobs.delete(request.job_id)
        return pb.OperationResult(ok=True, message="Training job deleted successfully")


class LogServicer(training_pb2_grpc.LogServiceServicer):
    def __init__(self, jobs: JobManager) -> None:
        self._jobs = jobs

    def _follow(self, job_id: str) -> AsyncIterator[tuple[str, int]]:
        log_file = self._jobs.log_file(job_id)  # NotFound before anything is streamed
        return logs.follow(log_file, lambda: self._jobs.is_finished(job_id))

    async def StreamLog(
        self, request: pb.LogRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        lines = await asyncio.to_thread(self._follow, request.job_id)
        await context.send_initial_metadata((("cache-control", "no-cache"),))
        async for line, _ in lines:
            yield httpbody_pb2.HttpBody(content_type="text/event-stream", data=f"data: {line}\n\n".encode())

    async def FollowLog(self, request: pb.LogRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.LogLine]:
        lines = await asyncio.to_thread(self._follow, request.job_id)
        async for line, offset in lines:
            yield pb.LogLine(line=line, offset=float(offset))

    async def TailLog(self, request: pb.TailLogRequest, context: grpc.aio.ServicerContext) -> pb.TailLogResponse:
        log_file = await asyncio.to_thread(self._jobs.log_file, request.job_id)
        tail = await asyncio.to_thread(logs.tail, log_file, request.offset)
        return pb.TailLogResponse(offset=float(tail.offset), lines=tail.lines)

    async def GetLogLines(self, request: pb.LogLinesRequest, context: grpc.aio.ServicerContext) -> pb.LogLinesResponse:
        log_file = await asyncio.to_thread(self._jobs.log_file, request.job_id)
        result = await asyncio.to_thread(logs.last_lines, log_file, request.n if request.HasField("n") else 100)
        return pb.LogLinesResponse(lines=result.lines, total=result.total, returned=len(result.lines))


class ModelServicer(training_pb2_grpc.ModelServiceServicer):
    """The settings give only the largest upload the route accepts from the wire."""

    def __init__(self, models: ModelService, settings: TrainingSettings) -> None:
        self._models = models
        self._settings = settings

    def _model(self, row: ModelRow, detail: bool) -> pb.Model:
        message = pb.Model(
            model_id=row.model_id,
            name=row.name,
            description=row.description,
            weights_path=str(self._models.weights_path(row.model_id)),
            file_size=float(row.file_size),
            file_size_mb=round(row.file_size / _MB, 2),
            created_at=iso(row.created_at),
            job_id=nullable(row.job_id),
            dataset_id=nullable(row.dataset_id),
            tags=row.tags,
            source=row.source,
            classes=row.classes,
            imgsz=row.imgsz,
            export_status=row.export_status,
            export_error=row.export_error,
            onnx_path=str(self._models.onnx_path(row.model_id)) if row.export_status == "ready" else "",
        )
        if detail:
            message.metrics.CopyFrom(_struct(row.metrics))
            message.training_metrics.CopyFrom(_struct(training_metrics(row.metrics)))
            message.history.extend(_struct(epoch) for epoch in self._models.history(row.model_id))
        return message

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        rows, total = await asyncio.to_thread(self._models.list, request.page, request.page_size)
        return pb.ListModelsResponse(models=[self._model(row, detail=False) for row in rows], total=total)

    async def GetModel(self, request: pb.ModelRequest, context: grpc.aio.ServicerContext) -> pb.Model:
        row = await asyncio.to_thread(self._models.get, request.model_id)
        return await asyncio.to_thread(self._model, row, True)

    async def UpdateModel(self, request: pb.UpdateModelRequest, context: grpc.aio.ServicerContext) -> pb.Model:
        tags = string_list(request.tags, "tags") if request.HasField("tags") else None
        row = await asyncio.to_thread(
            self._models.update,
            request.model_id,
            request.name if request.HasField("name") else None,
            request.description if request.HasField("description") else None,
            tags,
        )
        return await asyncio.to_thread(self._model, row, True)

    async def DeleteModel(self, request: pb.ModelRequest, context: grpc.aio.ServicerContext) -> pb.OperationResult:
        await self._models.delete(request.model_id)
        return pb.OperationResult(ok=True, message="Model deleted successfully")

    async def UploadModel(
        self, request_iterator: AsyncIterator[pb.UploadModelRequest], context: grpc.aio.ServicerContext
    ) -> pb.Model:
        def receive(staging: Path) -> Awaitable[ReceivedFile]:
            return receive_file(
                request_iterator,
                lambda message: message.body,
                staging,
                self._settings.max_model_upload_bytes,
                "model.zip",
            )

        row = await self._models.upload(receive)  # once the model can be served (or its export failed)
        return await asyncio.to_thread(self._model, row, True)

    def ExportModel(
        self, request: pb.ModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        return stream_download(context, self._models.export_zip, request.model_id)

    async def GetModelCharts(
        self, request: pb.ModelChartsRequest, context: grpc.aio.ServicerContext
    ) -> httpbody_pb2.HttpBody:
        png = await asyncio.to_thread(self._models.chart, request.model_id, request.chart_type)
        return httpbody_pb2.HttpBody(content_type="image/png", data=png)
