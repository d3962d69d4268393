"""The launcher as an operator sees it, on a platform of its own: it says "up" only once every documented route
can answer (a first start trains the built-in component classifier, with its progress in the output), and no
process it started outlives a crash of Triton, its own stop, or a kill -9 of the launcher itself.

To leave no doubt about orphans, the tests stop (SIGSTOP) Triton's Python-backend model processes first: a
stopped process can neither notice its server's end nor act on SIGTERM, as the two model processes seen running
13 minutes after a kill -9 of Triton. The tests of the launcher's own end stop Triton too, a server that does
not act on SIGTERM (it would stop its model processes itself).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator

import httpx
import psutil
import pytest

from launcher.instance import PlatformInstance
from synthetic.image_server import ImageServer
from synthetic.pages import component
from tests.e2e.conftest import DEFAULT_CLASSIFIER
from tests.e2e.segmentation_data import ok_payload

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BUILTIN_EPOCHS = 2
# A built-in classifier trained in seconds (tens of images), still long enough that the launcher waits for it.
_BUILTIN = {
    "VM_SEGMENTATION_BUILTIN_EPOCHS": str(BUILTIN_EPOCHS),
    "VM_SEGMENTATION_BUILTIN_PER_CLASS": "12",
    "VM_SEGMENTATION_BUILTIN_HELDOUT_PER_CLASS": "4",
}
STUB = "triton_python_backend_stub"
# Short, as a stopped Triton makes every stop take that long.
STOP_TIMEOUT_S = 6


@pytest.fixture(scope="module")
def own_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformInstance]:
    instance = PlatformInstance(
        tmp_path_factory.mktemp("launcher") / "data",
        extra_env={
            "VM_FETCH_ALLOWED_NETWORKS": "127.0.0.1/32",
            "VM_LAUNCHER_STOP_TIMEOUT_SECONDS": str(STOP_TIMEOUT_S),
            **_BUILTIN,
        },
    )
    with instance:
        yield instance


@pytest.fixture
def platform_up(own_platform: PlatformInstance) -> PlatformInstance:
    """The module's platform, started again if a test before stopped or killed its launcher."""
    if own_platform.launcher_pid is None:
        own_platform.stop()
        own_platform.start()
    return own_platform


@pytest.fixture
def leftovers() -> Iterator[list[psutil.Process]]:
    """Processes a test froze: killed at its end whatever happened (a failing test must not leave them)."""
    frozen: list[psutil.Process] = []
    yield frozen
    for process in frozen:
        if not gone(process):
            process.kill()


def gone(process: psutil.Process) -> bool:
    """Ended (a zombie has ended too: only its exit status waits for its parent)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        time.sleep(0.1)


def classify(platform: PlatformInstance, images: ImageServer) -> httpx.Response:
    """POST /imgSeg/v1/predictResnet with the default model: the built-in classifier, served by Triton."""
    url = images.put_image("launcher-button.png", component("Button", 11))
    with httpx.Client(base_url=platform.base_url, timeout=60) as client:
        return client.post("/imgSeg/v1/predictResnet", json={"image_url_list": [url], "user_id": "operator"})


def classified(platform: PlatformInstance, images: ImageServer) -> bool:
    try:
        return classify(platform, images).status_code == 200
    except httpx.HTTPError:
        return False


def freeze_triton(
    platform: PlatformInstance, images: ImageServer, frozen: list[psutil.Process], *, server_too: bool
) -> int:
    """Make Triton run the classifier, then SIGSTOP its model processes (and Triton itself when `server_too`);
    returns Triton's PID."""
    ok_payload(classify(platform, images))
    triton = psutil.Process(platform.pid_of("triton"))
    stubs = [child for child in triton.children() if STUB in " ".join(child.cmdline())]
    assert stubs, "Triton runs the classifier in Python-backend model processes"
    for process in [*stubs, triton] if server_too else stubs:
        process.suspend()
        frozen.append(process)
    return triton.pid


def log_events(platform: PlatformInstance) -> list[dict]:
    """The launcher's output (every component writes there): JSON log lines as dicts, other lines as
    {"line": text} (Triton's and Envoy's own, the banner)."""
    events = []
    for line in platform.log_path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        events.append(event if isinstance(event, dict) else {"line": line})
    return events


def test_up_means_the_classifier_routes_answer_and_the_output_showed_the_training(
    own_platform: PlatformInstance, images: ImageServer
) -> None:
    # At once after start returned (the launcher said "up"): no retry.
    payload = ok_payload(classify(own_platform, images))
    assert payload["model_id"] == DEFAULT_CLASSIFIER and payload["image_num"] == 1

    events = log_events(own_platform)
    names = [event.get("event") or event.get("line") for event in events]
    epochs = [event["epoch"] for event in events if event.get("event") == "built-in classifier: epoch trained"]
    assert epochs == [f"{epoch}/{BUILTIN_EPOCHS}" for epoch in range(1, BUILTIN_EPOCHS + 1)]
    waiting = [event for event in events if event.get("event") == "waiting until ready"]
    assert any(event["component"] == "segmentation" and "classifier" in event["busy_with"] for event in waiting)
    assert names.index("built-in classifier ready") < names.index("VisionMesh is up.")


def test_a_killed_triton_leaves_no_model_process_and_is_served_again(
    platform_up: PlatformInstance, images: ImageServer, leftovers: list[psutil.Process]
) -> None:
    triton = freeze_triton(platform_up, images, leftovers, server_too=False)
    os.kill(triton, signal.SIGKILL)
    wait_until(lambda: platform_up.pid_of("triton") != triton, 60, "Triton started again")
    # The launcher starts a child again only once everything of the one that ended is gone.
    assert [stub.pid for stub in leftovers if not gone(stub)] == []
    wait_until(lambda: classified(platform_up, images), 120, "the classifier served again")


def test_a_stopped_launcher_leaves_no_process(
    platform_up: PlatformInstance, images: ImageServer, leftovers: list[psutil.Process]
) -> None:
    freeze_triton(platform_up, images, leftovers, server_too=True)
    assert platform_up.launcher_pid is not None
    started = psutil.Process(platform_up.launcher_pid).children(recursive=True)
    platform_up.stop()
    assert [f"{p.pid} {p.name()}" for p in started if not gone(p)] == []


def test_a_killed_launcher_leaves_no_process(
    platform_up: PlatformInstance, images: ImageServer, leftovers: list[psutil.Process]
) -> None:
    freeze_triton(platform_up, images, leftovers, server_too=True)
    launcher = platform_up.launcher_pid
    assert launcher is not None
    started = psutil.Process(launcher).children(recursive=True)
    os.kill(launcher, signal.SIGKILL)
    # Its children get SIGTERM from the kernel; what does not end is killed after the stop timeout.
    wait_until(lambda: all(gone(p) for p in started), STOP_TIMEOUT_S + 30, "everything the launcher started ended")
    platform_up.stop()
