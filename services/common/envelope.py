"""Seed document 004's response envelope and error codes, transport-free.

Success: {"code": 100, "status": 200, "message": "成功", "payload": {...}}. Failure: {"code": -3000, "status":
<HTTP status>, "message": "失败", "payload": {"err": <code>, "detail": <reason>, <echoed request fields>}}.
Domain code raises EnvelopeError (or the generic ServiceErrors, translated by `as_envelope_error`); the gRPC
layer attaches the failure envelope to the status (services/common/grpc_server.py) and the gateway shows it to
REST clients as the body.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum
from typing import Any, Literal, TypeVar

import structlog

from services.common.errors import Conflict, InvalidArgument, NotFound, PayloadTooLarge, ServiceError, Unavailable

log = structlog.get_logger(__name__)

SUCCESS_CODE, SUCCESS_STATUS, SUCCESS_MESSAGE = 100, 200, "成功"
FAILURE_CODE, FAILURE_MESSAGE = -3000, "失败"


class Err(IntEnum):
    """The document's `err` codes (返回码汇总)."""

    TRAINING_RUNNING = 800
    READ_URL_FAIL = 801
    TIMEOUT = 802
    UNKNOWN_TASK = 803
    UNKNOWN_USER = 804
    MODEL_ID_ERROR = 805
    DATA_FORMAT_ERROR = 806
    INVALID_PARAMETER = 807
    UNKNOWN_ERROR = 808
    INVALID_IMAGE = 601


class TaskStatus(IntEnum):
    DONE = 200
    RUNNING = 300
    FAILED = 400
    STOPPED = 500


# The HTTP status of each err: the caller's input (400), something the caller named that does not exist (404),
# a conflicting state (409); an unknown error is the server's (500).
_HTTP_STATUS = {
    Err.TRAINING_RUNNING: 409,
    Err.UNKNOWN_TASK: 404,
    Err.UNKNOWN_USER: 404,
    Err.MODEL_ID_ERROR: 404,
    Err.UNKNOWN_ERROR: 500,
}


ErrStyle = Literal["number", "string", "name"]


class EnvelopeError(ServiceError):
    """A failure answered with the 004 envelope. `payload` holds what goes next to `err` (echoed fields)."""

    def __init__(self, err: Err, detail: str, *, http_status: int | None = None) -> None:
        super().__init__(detail)
        self.err = err
        self.http_status = http_status or _HTTP_STATUS.get(err, 400)
        self.payload: dict[str, Any] = {}
        # How the route's document writes err: a number (806), a string ("601", predictText) or the name
        # ("READ_URL_FAIL", predictSam3).
        self.err_style: ErrStyle = "number"

    def envelope(self) -> dict[str, Any]:
        style = self.err_style
        err: int | str = {"number": int(self.err), "string": str(int(self.err)), "name": self.err.name}[style]
        payload = {"err": err, "detail": self.detail, **self.payload}
        return {"code": FAILURE_CODE, "status": self.http_status, "message": FAILURE_MESSAGE, "payload": payload}


def as_envelope_error(error: Exception) -> EnvelopeError:
    """Any error of a 004 route as an EnvelopeError: the shared plumbing raises the generic ServiceErrors."""
    if isinstance(error, EnvelopeError):
        return error
    if isinstance(error, InvalidArgument | PayloadTooLarge):
        return EnvelopeError(Err.INVALID_PARAMETER, error.detail, http_status=error.http_status)
    if isinstance(error, NotFound):
        return EnvelopeError(Err.UNKNOWN_TASK, error.detail)
    if isinstance(error, Conflict | Unavailable):
        return EnvelopeError(Err.UNKNOWN_ERROR, error.detail, http_status=error.http_status)
    if isinstance(error, TimeoutError):
        return EnvelopeError(Err.TIMEOUT, "The operation timed out", http_status=503)
    return EnvelopeError(Err.UNKNOWN_ERROR, "Unknown error", http_status=500)


@contextmanager
def envelope_errors(echo: dict[str, Any], err_style: ErrStyle = "number") -> Iterator[None]:
    """Around a 004 route: every error leaves as an EnvelopeError carrying the request's echoed fields."""
    try:
        yield
    except Exception as error:
        if not isinstance(error, ServiceError | TimeoutError):
            log.exception("unexpected error")
        converted = as_envelope_error(error)
        converted.payload = {**echo, **converted.payload}
        converted.err_style = err_style
        if converted is error:
            raise
        raise converted from error


Response = TypeVar("Response")


def success(response_type: type[Response], payload: Any) -> Response:
    """A 004 response message (code/status/message/payload fields) for a successful answer."""
    return response_type(code=SUCCESS_CODE, status=SUCCESS_STATUS, message=SUCCESS_MESSAGE, payload=payload)
