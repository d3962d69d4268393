"""gRPC servicers of the dataset service: map messages to domain calls and back, nothing more."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from google.api import httpbody_pb2
from visionmesh.dataset.v1 import dataset_pb2 as pb
from visionmesh.dataset.v1 import dataset_pb2_grpc

from services.common.clock import iso
from services.common.errors import InvalidArgument
from services.common.grpc_http import stream_download
from services.common.messages import string_list
from services.common.uploads import receive_file
from services.dataset.domain.annotations import AnnotationManager, TaskSummary
from services.dataset.domain.datasets import DatasetManager
from services.dataset.domain.labels import PixelBox
from services.dataset.domain.prepare import PrepareReport
from services.dataset.domain.splitting import SplitRatio
from services.dataset.settings import DatasetSettings
from services.dataset.storage.tables import DatasetRow


def _dataset(row: DatasetRow, datasets: DatasetManager, detail: bool) -> pb.Dataset:
    message = pb.Dataset(
        dataset_id=row.dataset_id,
        filename=row.filename,
        size=float(row.size),
        created_at=iso(row.created_at),
        status=row.status,
        versions=[v.version for v in row.versions],
        description=row.description,
        tags=row.tags,
    )
    if detail:
        message.version_info.extend(
            pb.VersionInfo(
                version=v.version,
                classes=v.classes,
                train_count=v.train_count,
                val_count=v.val_count,
                test_count=v.test_count,
                data_yaml=str(datasets.data_yaml_path(v)),
                created_at=iso(v.created_at),
            )
            for v in row.versions
        )
    return message


def _report(report: PrepareReport) -> pb.PrepareReport:
    return pb.PrepareReport(
        images_found=report.images_found,
        images_accepted=report.images_accepted,
        label_files_found=report.label_files_found,
        label_lines_accepted=report.label_lines_accepted,
        ignored_files=report.ignored_files,
        layout=report.layout,
        rejected_images=[pb.Rejection(file=r.file, line=r.line, reason=r.reason) for r in report.rejected_images],
        rejected_labels=[pb.Rejection(file=r.file, line=r.line, reason=r.reason) for r in report.rejected_labels],
        warnings=report.warnings,
    )


class DatasetServicer(dataset_pb2_grpc.DatasetServiceServicer):
    def __init__(self, datasets: DatasetManager, settings: DatasetSettings) -> None:
        self._datasets = datasets
        self._settings = settings

    async def UploadDataset(
        self, request_iterator: AsyncIterator[pb.UploadDatasetRequest], context: grpc.aio.ServicerContext
    ) -> pb.Dataset:
        with self._datasets.upload_staging() as staging:
            received = await receive_file(
                request_iterator, lambda message: message.body, staging, self._settings.max_upload_bytes, "dataset.zip"
            )
            row = await asyncio.to_thread(self._datasets.register_upload, received)
        return _dataset(row, self._datasets, detail=False)

    async def PrepareDataset(
        self, request: pb.PrepareDatasetRequest, context: grpc.aio.ServicerContext
    ) -> pb.PreparedVersion:
        ratio = None
        if request.HasField("split_ratio"):
            ratio = SplitRatio(request.split_ratio.train, request.split_ratio.val, request.split_ratio.test)
        row, content = await asyncio.to_thread(self._datasets.prepare, request.dataset_id, ratio, list(request.classes))
        return pb.PreparedVersion(
            dataset_id=row.dataset_id,
            version=row.version,
            status="prepared",
            classes=row.classes,
            train_count=row.train_count,
            val_count=row.val_count,
            test_count=row.test_count,
            data_yaml=str(self._datasets.data_yaml_path(row)),
            report=_report(content.report),
        )

    async def ListDatasets(
        self, request: pb.ListDatasetsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDatasetsResponse:
        rows, total = await asyncio.to_thread(self._datasets.list, request.page, request.page_size)
        return pb.ListDatasetsResponse(datasets=[_dataset(r, self._datasets, detail=False) for r in rows], total=total)

    async def GetDataset(self, request: pb.GetDatasetRequest, context: grpc.aio.ServicerContext) -> pb.Dataset:
        row = await asyncio.to_thread(self._datasets.get, request.dataset_id)
        return _dataset(row, self._datasets, detail=True)

    async def UpdateDataset(self, request: pb.UpdateDatasetRequest, context: grpc.aio.ServicerContext) -> pb.Dataset:
        description = request.description if request.HasField("description") else None
        tags = string_list(request.tags, "tags") if request.HasField("tags") else None
        row = await asyncio.to_thread(self._datasets.update, request.dataset_id, description, tags)
        return _dataset(row, self._datasets, detail=True)

    async def DeleteDataset(
        self, request: pb.DeleteDatasetRequest, context: grpc.aio.ServicerContext
    ) -> pb.OperationResult:
        await asyncio.to_thread(self._datasets.delete, request.dataset_id)
        return pb.OperationResult(ok=True, message="Dataset deleted successfully")

    def ExportAnnotatedDataset(
        self, request: pb.ExportDatasetRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        return stream_download(context, self._datasets.export, request.dataset_id, request.version, True)

    def ExportOriginalDataset(
        self, request: pb.ExportDatasetRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        return stream_download(context, self._datasets.export, request.dataset_id, request.version, False)

    def GetDatasetFile(
        self, request: pb.GetDatasetFileRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        return stream_download(context, self._datasets.open_image, request.path)


def _task(summary: TaskSummary) -> pb.AnnotationTask:
    task = summary.task
    return pb.AnnotationTask(
        task_id=task.task_id,
        dataset_id=task.dataset_id,
        version=task.version,
        classes=task.classes,
        total_items=summary.total_items,
        annotated_count=summary.annotated_count,
        created_at=iso(task.created_at),
    )


class AnnotationServicer(dataset_pb2_grpc.AnnotationServiceServicer):
    def __init__(self, annotations: AnnotationManager) -> None:
        self._annotations = annotations

    async def CreateTask(self, request: pb.CreateTaskRequest, context: grpc.aio.ServicerContext) -> pb.AnnotationTask:
        if not request.dataset_id:
            raise InvalidArgument("dataset_id is required")
        summary = await asyncio.to_thread(
            self._annotations.create_task, request.dataset_id, request.version, list(request.classes)
        )
        return _task(summary)

    async def ListTaskItems(
        self, request: pb.ListTaskItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTaskItemsResponse:
        items, total = await asyncio.to_thread(
            self._annotations.list_items, request.task_id, request.page, request.page_size
        )
        return pb.ListTaskItemsResponse(
            task_id=request.task_id,
            total=total,
            items=[
                pb.TaskItem(
                    image_id=item.image.image_id,
                    image_path=item.image_path,
                    width=item.image.width,
                    height=item.image.height,
                    has_annotation=item.has_annotation,
                )
                for item in items
            ],
        )

    async def GetItemAnnotation(
        self, request: pb.GetItemAnnotationRequest, context: grpc.aio.ServicerContext
    ) -> pb.ItemAnnotation:
        item = await asyncio.to_thread(self._annotations.get_item, request.task_id, request.image_id)
        return pb.ItemAnnotation(
            image_id=item.image_id,
            boxes=[pb.Box(class_id=b.class_id, x1=b.x1, y1=b.y1, x2=b.x2, y2=b.y2) for b in item.boxes],
            updated_at=iso(item.updated_at),
        )

    async def SaveItemAnnotation(
        self, request: pb.SaveItemAnnotationRequest, context: grpc.aio.ServicerContext
    ) -> pb.OperationResult:
        boxes = [PixelBox(b.class_id, b.x1, b.y1, b.x2, b.y2) for b in request.boxes]
        await asyncio.to_thread(self._annotations.save_item, request.task_id, request.image_id, boxes)
        return pb.OperationResult(ok=True, message="Annotation saved successfully")

    async def ExportTask(
        self, request: pb.ExportTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExportTaskResponse:
        result = await asyncio.to_thread(self._annotations.export, request.task_id, request.format)
        return pb.ExportTaskResponse(
            ok=True,
            message="Annotations exported successfully",
            labels_dir=result.labels_dir,
            exported_count=result.exported_count,
        )
