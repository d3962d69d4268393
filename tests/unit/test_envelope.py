"""Document 004's failure envelope and the errors that become it."""

from __future__ import annotations

import pytest

from services.common.envelope import EnvelopeError, Err, as_envelope_error, envelope_errors
from services.common.errors import InvalidArgument, NotFound, Unavailable


def test_failure_envelope_in_each_documented_err_style() -> None:
    error = EnvelopeError(Err.READ_URL_FAIL, "Could not read image_url")
    error.payload = {"user_id": "u1"}
    assert error.envelope() == {
        "code": -3000,
        "status": 400,
        "message": "失败",
        "payload": {"err": 801, "detail": "Could not read image_url", "user_id": "u1"},
    }
    error.err_style = "string"
    assert error.envelope()["payload"]["err"] == "801"
    error.err_style = "name"
    assert error.envelope()["payload"]["err"] == "READ_URL_FAIL"
    assert EnvelopeError(Err.MODEL_ID_ERROR, "x").http_status == 404
    assert EnvelopeError(Err.TRAINING_RUNNING, "x").http_status == 409


def test_shared_errors_are_translated() -> None:
    assert as_envelope_error(InvalidArgument("bad")).err == Err.INVALID_PARAMETER
    assert as_envelope_error(NotFound("gone")).err == Err.UNKNOWN_TASK
    unavailable = as_envelope_error(Unavailable("down"))
    assert (unavailable.err, unavailable.http_status) == (Err.UNKNOWN_ERROR, 503)
    crash = as_envelope_error(RuntimeError("boom"))
    assert (crash.err, crash.http_status, crash.detail) == (Err.UNKNOWN_ERROR, 500, "Unknown error")


def test_envelope_errors_echo_the_request() -> None:
    with pytest.raises(EnvelopeError) as raised, envelope_errors({"topic_id": "t", "user_id": "u"}, err_style="name"):
        raise InvalidArgument("bad prompt")
    assert raised.value.payload == {"topic_id": "t", "user_id": "u"}
    assert raised.value.envelope()["payload"]["err"] == "INVALID_PARAMETER"
