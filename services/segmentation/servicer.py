"""gRPC servicers of the segmentation service: map messages to domain calls and back, in document 004's
envelope (services/common/envelope.py), nothing more."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import grpc
from google.api import httpbody_pb2
from google.protobuf import json_format, struct_pb2
from visionmesh.segmentation.v1 import segmentation_pb2 as pb
from visionmesh.segmentation.v1 import segmentation_pb2_grpc

from services.common.envelope import EnvelopeError, Err, TaskStatus, envelope_errors, success
from services.common.grpc_http import stream_download
from services.common.uploads import UploadReceiver, receive_upload
from services.segmentation.domain.ingest import DOCUMENT_TIME_FORMAT, IngestState, IngestTasks
from services.segmentation.domain.resources import TrainingResources
from services.segmentation.domain.service import ComponentOut, ComponentService, SamQuery
from services.segmentation.domain.training import TrainingManager, TrainingState
from services.segmentation.settings import SegmentationSettings

RESOURCE_ADDED = 900  # get_info code of an entry that was added


def _values(message: struct_pb2.ListValue) -> list[Any]:
    return json_format.MessageToDict(message) if message.values else []


def _lists(messages: Any) -> list[Any]:
    return [json_format.MessageToDict(message) for message in messages]


def _query(request: Any, *, cut_outline: bool) -> SamQuery:
    prompt = request.prompt
    return SamQuery(
        image_url=request.image_url,
        input_point=_lists(prompt.input_point),
        input_label=list(prompt.input_label),
        input_box=_values(prompt.input_box),
        is_predict_type=request.is_predict_type,
        resnet_model_id=request.resnet_model_id,
        read_text_types=list(request.read_text_component_list),
        cut_outline=cut_outline,
    )


def _component(component: ComponentOut, origin: tuple[int, int] = (0, 0)) -> pb.ComponentInfo:
    cut = component.cut
    info = pb.ComponentInfo(
        top_left_coord=[cut.box.x0 - origin[0], cut.box.y0 - origin[1]],
        width=cut.box.width,
        height=cut.box.height,
        rgb_mean=list(cut.rgb_mean),
        img_component_base64=cut.png_base64,
    )
    if component.text is not None:
        info.text.CopyFrom(json_format.ParseDict(component.text, struct_pb2.ListValue()))
    if component.component_type is not None:
        info.component_type = component.component_type
    return info


def _echo(request: Any) -> dict[str, str]:
    return {"topic_id": request.topic_id, "user_id": request.user_id}


class IngestServicer(segmentation_pb2_grpc.IngestServiceServicer):
    def __init__(self, tasks: IngestTasks, settings: SegmentationSettings) -> None:
        self._tasks = tasks
        self._settings = settings

    async def Ingest(
        self, request_iterator: AsyncIterator[pb.IngestUpload], context: grpc.aio.ServicerContext
    ) -> pb.IngestResponse:
        task_id = ""
        # Each request receives into its own staging directory: part files are named by their position only.
        with envelope_errors({}), self._tasks.staging() as staging:
            receiver = UploadReceiver(
                staging,
                self._settings.max_upload_bytes,
                raw_field="image",
                raw_filename="upload",
                parts={"image", "image_url", "user_id"},
            )
            upload, _first = await receive_upload(request_iterator, lambda message: message.body, receiver)
            images = [received for received in upload.files if received.field == "image"]
            if len(images) > 1:
                raise EnvelopeError(Err.INVALID_PARAMETER, "Send one image (multipart field `image`)")
            image_url = upload.fields.get("image_url", "")
            if images and image_url:
                raise EnvelopeError(Err.INVALID_PARAMETER, "Send either `image` or `image_url`, not both")
            user_id = upload.fields.get("user_id", "") or "anonymous"
            task_id = await self._tasks.submit(user_id, upload=images[0].path if images else None, image_url=image_url)
        with envelope_errors({"task_id": task_id}):
            state = await self._tasks.wait(task_id, self._settings.ingest_wait_seconds)
            if state.task_status == TaskStatus.FAILED:
                raise EnvelopeError(Err(state.err or Err.UNKNOWN_ERROR), state.detail or "The task failed")
        payload = pb.IngestPayload(
            task_id=task_id, task_status=state.task_status, segmenter=state.segmenter, image_url=_upload_url(state)
        )
        if state.result is not None:
            json_format.ParseDict(state.result, payload)
        return success(pb.IngestResponse, payload)

    async def IngestStatus(
        self, request: pb.IngestStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.IngestStatusResponse:
        with envelope_errors({"task_id": request.task_id}):
            if not request.task_id:
                raise EnvelopeError(Err.INVALID_PARAMETER, "task_id is required")
            state = await self._tasks.wait(request.task_id, 0)
        payload = pb.IngestStatusPayload(
            task_id=state.task_id,
            task_status=state.task_status,
            created_at=state.created_at.strftime(DOCUMENT_TIME_FORMAT),
            segmenter=state.segmenter,
        )
        if state.finished_at is not None:
            payload.finished_at = state.finished_at.strftime(DOCUMENT_TIME_FORMAT)
        if state.result is not None:
            json_format.ParseDict(state.result, payload.result)
        if state.err is not None:
            payload.err = state.err
            payload.detail = state.detail or ""
        return success(pb.IngestStatusResponse, payload)

    def ServeUpload(
        self, request: pb.ServeUploadRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        return stream_download(context, self._tasks.open_upload, request.filename)


def _upload_url(state: IngestState) -> str:
    return f"/uploads/{state.upload_name}" if state.upload_name else ""


class ComponentServicer(segmentation_pb2_grpc.ComponentServiceServicer):
    def __init__(self, service: ComponentService) -> None:
        self._service = service

    async def PredictSam(self, request: pb.SamRequest, context: grpc.aio.ServicerContext) -> pb.SamResponse:
        with envelope_errors(_echo(request)):
            result = await self._service.predict_sam(_query(request, cut_outline=request.cut_outline_flag))
        return self._sam_response(request, result.components, result.segmenter)

    async def PredictSam3(self, request: pb.Sam3Request, context: grpc.aio.ServicerContext) -> pb.SamResponse:
        with envelope_errors({**_echo(request), "task_status": int(TaskStatus.FAILED)}, err_style="name"):
            result = await self._service.predict_sam3(_query(request, cut_outline=True), _lists(request.points))
        return self._sam_response(request, result.components, result.segmenter)

    @staticmethod
    def _sam_response(request: Any, components: list[ComponentOut], segmenter: str) -> pb.SamResponse:
        payload = pb.SamPayload(
            task_id=f"samPredict_{uuid4()}",
            task_status=int(TaskStatus.DONE),
            component_info=[_component(component) for component in components],
            segmenter=segmenter,
            **_echo(request),
        )
        return success(pb.SamResponse, payload)

    async def PredictSam2(self, request: pb.Sam2Request, context: grpc.aio.ServicerContext) -> pb.Sam2Response:
        with envelope_errors(_echo(request)):
            father, segmenter = await self._service.predict_sam2(
                _query(request, cut_outline=request.cut_outline_flag), _values(request.select_box)
            )
        box = father.cut.box
        node = pb.FatherComponent(
            top_left_coord=[box.x0, box.y0],
            width=box.width,
            height=box.height,
            rgb_mean=list(father.cut.rgb_mean),
            background_color=list(father.background_color),
            img_component_base64=father.cut.png_base64,
            children=[_component(child, (box.x0, box.y0)) for child in father.children],
        )
        payload = pb.Sam2Payload(
            task_id=f"samPredict_{uuid4()}",
            task_status=int(TaskStatus.DONE),
            component_info=[node],
            segmenter=segmenter,
            **_echo(request),
        )
        return success(pb.Sam2Response, payload)

    async def PredictResnet(self, request: pb.ResnetRequest, context: grpc.aio.ServicerContext) -> pb.ResnetResponse:
        with envelope_errors(_echo(request)):
            result = await self._service.predict_resnet(
                list(request.image_url_list), request.model_id, request.input_component_type
            )
        payload = pb.ResnetPayload(
            task_id=f"resnetPredict_{uuid4()}",
            task_status=int(TaskStatus.DONE),
            component_type=result.component_type,
            predict_result=result.predict_result,
            image_num=result.image_num,
            model_id=result.model_id,
            failed=result.failed,
            **_echo(request),
        )
        return success(pb.ResnetResponse, payload)


def _task(state: TrainingState) -> pb.TrainingTask:
    return pb.TrainingTask(
        train_task_id=state.task_id, task_type=state.task_type, user_id=state.user_id, task_status=state.task_status
    )


class ClassifierTrainingServicer(segmentation_pb2_grpc.ClassifierTrainingServicer):
    def __init__(self, manager: TrainingManager, resources: TrainingResources) -> None:
        self._manager = manager
        self._resources = resources

    async def StartTraining(
        self, request: pb.StartTrainingRequest, context: grpc.aio.ServicerContext
    ) -> pb.TrainingTaskResponse:
        with envelope_errors({"user_id": request.user_id, "task_type": request.task_type}):
            params = request.train_params
            state = await self._manager.start(
                request.user_id,
                request.task_type or "train",
                epochs=params.epochs or 10,
                batch_size=params.batch_size or 8,
                learning_rate=params.learning_rate or 0.001,
            )
        return success(pb.TrainingTaskResponse, _task(state))

    async def QueryTraining(
        self, request: pb.TrainingTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.TrainingProgressResponse:
        echo = {"train_task_id": request.train_task_id, "user_id": request.user_id, "task_type": request.task_type}
        with envelope_errors(echo):
            state = await self._manager.query(request.train_task_id.strip(), request.user_id)
        payload = pb.TrainingProgress(
            train_task_id=state.task_id,
            user_id=state.user_id,
            task_type=state.task_type,
            task_status=state.task_status,
            model_ready=state.model_ready,
        )
        json_format.ParseDict(state.progress, payload, ignore_unknown_fields=True)
        if state.detail:
            payload.detail = state.detail
        if state.heldout_acc is not None:
            payload.heldout_acc = state.heldout_acc
        return success(pb.TrainingProgressResponse, payload)

    async def StopTraining(
        self, request: pb.TrainingTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.TrainingTaskResponse:
        echo = {"train_task_id": request.train_task_id, "user_id": request.user_id, "task_type": request.task_type}
        with envelope_errors(echo):
            state = await self._manager.stop(request.train_task_id.strip(), request.user_id)
        return success(pb.TrainingTaskResponse, _task(state))

    async def AddTrainingResource(
        self, request: pb.AddTrainingResourceRequest, context: grpc.aio.ServicerContext
    ) -> pb.AddTrainingResourceResponse:
        with envelope_errors({"user_id": request.user_id}):
            if not request.dataset:
                raise EnvelopeError(Err.DATA_FORMAT_ERROR, "dataset is empty")
            dataset = {key: (entry.url, entry.component_type) for key, entry in request.dataset.items()}
            codes = await self._resources.add_resources(request.user_id or "anonymous", dataset)
        payload = pb.AddTrainingResourcePayload(user_id=request.user_id, get_info=codes)
        if any(code != RESOURCE_ADDED for code in codes.values()):
            # The document's failure shape: the same payload in the failure envelope (added entries stay added).
            failure = EnvelopeError(Err.DATA_FORMAT_ERROR, "Some training resources were not added (see get_info)")
            failure.payload = {"user_id": request.user_id, "get_info": dict(codes)}
            raise failure
        return success(pb.AddTrainingResourceResponse, payload)
