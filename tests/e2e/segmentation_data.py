"""The document 004 envelope as the e2e tests check it, and waiting for a classifier training (the rendered
screenshots and the image server are in synthetic/)."""

from __future__ import annotations

import time

import httpx


def ok_payload(response: httpx.Response) -> dict:
    """The document's success envelope; returns its payload."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["code"], body["status"], body["message"]) == (100, 200, "成功"), body
    return body["payload"]


def failure(response: httpx.Response, status: int, err: int | str) -> dict:
    """The document's failure envelope with HTTP `status` and payload.err `err`; returns its payload."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert (body["code"], body["status"], body["message"]) == (-3000, status, "失败"), body
    assert body["payload"]["err"] == err, body
    return body["payload"]


def wait_for_training(http: httpx.Client, task_id: str, timeout: float = 900, user_id: str = "t") -> dict:
    """Poll queryTrain as `user_id` (a training's owner; any user for the built-in classifier's)."""
    deadline = time.monotonic() + timeout
    while True:
        query = {"train_task_id": task_id, "user_id": user_id}
        payload = ok_payload(http.post("/imgSeg/v1/queryTrain", json=query))
        if payload["task_status"] != 300:
            return payload
        assert time.monotonic() < deadline, payload
        time.sleep(2)
