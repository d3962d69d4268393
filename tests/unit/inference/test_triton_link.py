"""services.common.triton.link.TritonLink against the bundled tritonserver: while Triton is down, requests fail
with a 503 that tells the client to retry, and never where Triton listens (that stays in the service's log)."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import numpy as np
import pytest

from launcher.instance import free_port
from services.common.errors import Unavailable
from services.common.triton.link import TritonLink
from services.common.triton.repository import write_triton_model
from services.common.triton.settings import TritonSettings
from tests.unit.test_triton_server import IMGSZ, doubling_onnx, images, tritonserver

ADDRESS = re.compile(r"\d{1,3}(\.\d{1,3}){3}|localhost|:\d{2,5}\b")


def assert_says_retry_without_the_address(error: Unavailable, settings: TritonSettings) -> None:
    assert "retry" in error.detail and "Triton" in error.detail, error.detail
    assert settings.grpc_address not in error.detail and not ADDRESS.search(error.detail), error.detail


def test_a_triton_that_was_never_reachable_is_a_503_without_its_address(tmp_path: Path) -> None:
    settings = TritonSettings(data_root=tmp_path, grpc_port=free_port())

    async def scenario() -> Unavailable:
        link = TritonLink(settings)
        try:
            with pytest.raises(Unavailable) as caught:
                await link.ensure_loaded("double")
            return caught.value
        finally:
            await link.close()

    assert_says_retry_without_the_address(asyncio.run(scenario()), settings)


def test_a_triton_that_stops_answering_between_two_probes_is_a_503_without_its_address(tmp_path: Path) -> None:
    """The link still believes Triton is up (no watch() probe ran since): the failed call itself says so. The
    server is frozen (SIGSTOP) rather than killed, so that its model processes end with it afterwards."""
    settings = TritonSettings(
        data_root=tmp_path / "data",
        grpc_port=free_port(),
        metrics_port=0,
        model_format="python",
        request_timeout_seconds=1.0,
    )
    onnx_file = doubling_onnx(tmp_path / "double.onnx")
    write_triton_model(settings.repository, "double", onnx_file, ["x"], IMGSZ, settings=settings)
    with tritonserver(settings, tmp_path / "tritonserver.log") as server:

        async def scenario() -> Unavailable:
            link = TritonLink(settings)
            try:
                doubled = await link.infer("double", images(1, 1.5))
                assert np.allclose(doubled, 3.0)
                server.send_signal(signal.SIGSTOP)
                try:
                    with pytest.raises(Unavailable) as caught:
                        await link.infer("double", images(1, 1.5))
                finally:
                    server.send_signal(signal.SIGCONT)
                return caught.value
            finally:
                await link.close()

        assert_says_retry_without_the_address(asyncio.run(scenario()), settings)
