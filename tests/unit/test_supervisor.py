"""launcher.supervisor with real processes: no descendant of a child outlives the child's crash (it is gone
before the child is started again), the supervisor's stop, or a kill -9 of the supervisor itself.

Each child is a small program that starts descendants that ignore SIGTERM, as Triton's model processes once
did: one in the child's process group, and one in a session of its own (out of the group's reach).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from services.common.settings import REPO_ROOT

STOP_TIMEOUT_S = 2.0

# argv: <pids file> <"session": also start a descendant in a session of its own>. Writes the PIDs of its
# descendants and, from its previous run's file, which of those were still alive when it started.
_CHILD = r"""
import json, os, signal, subprocess, sys, time
pids_file, with_session = sys.argv[1], sys.argv[2] == "session"
previous = json.loads(open(pids_file).read())["descendants"] if os.path.exists(pids_file) else []
def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
stubborn = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"]
descendants = [subprocess.Popen(stubborn).pid]
if with_session:
    descendants.append(subprocess.Popen(stubborn, start_new_session=True).pid)
time.sleep(0.3)  # the descendants have set up their SIGTERM handling
with open(pids_file + ".tmp", "w") as out:
    report = {"child": os.getpid(), "descendants": descendants, "alive_at_start": [p for p in previous if alive(p)]}
    json.dump(report, out)
os.replace(pids_file + ".tmp", pids_file)
time.sleep(600)
"""

_SUPERVISOR = r"""
import asyncio, json, os, sys
from pathlib import Path
from launcher.supervisor import Component, Supervisor

async def ready() -> bool:
    return True

async def main(spec: dict) -> None:
    components = [Component(name, command, ready) for name, command in spec["components"].items()]
    state_file, stop_timeout_s = Path(spec["state_file"]), spec["stop_timeout_s"]
    supervisor = Supervisor(components, dict(os.environ), state_file, stop_timeout_s=stop_timeout_s)
    if await supervisor.start():
        await supervisor.supervise()
    else:
        await supervisor.stop()

asyncio.run(main(json.loads(sys.argv[1])))
"""


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        time.sleep(0.05)


def gone(process: psutil.Process) -> bool:
    """Ended (a zombie has ended too: only its exit status waits for its parent)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Run:
    """A supervisor process with one child, "tree", and what that child reports."""

    def __init__(self, root: Path, with_session: bool) -> None:
        self.pids_file = root / "tree.json"
        self.state_file = root / "state.json"
        spec = {
            "components": {"tree": [sys.executable, "-c", _CHILD, str(self.pids_file), "session" * with_session]},
            "state_file": str(self.state_file),
            "stop_timeout_s": STOP_TIMEOUT_S,
        }
        self.process = subprocess.Popen([sys.executable, "-c", _SUPERVISOR, json.dumps(spec)], cwd=REPO_ROOT)
        self.tracked: list[psutil.Process] = []

    def report(self) -> dict:
        try:
            return json.loads(self.pids_file.read_text())
        except FileNotFoundError:
            return {}

    def wait_for_child(self, not_pid: int | None = None) -> dict:
        wait_until(lambda: self.report().get("child") not in (None, not_pid), 30, "the child reported")
        report = self.report()
        self.tracked += [psutil.Process(pid) for pid in [report["child"], *report["descendants"]]]
        return report

    def close(self) -> None:
        """Whatever the test left running (the test's own processes: it may fail before they are gone)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for process in self.tracked:
            if not gone(process):
                process.kill()


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Callable[[bool], Run]]:
    runs: list[Run] = []

    def start(with_session: bool) -> Run:
        runs.append(Run(tmp_path, with_session))
        return runs[-1]

    yield start
    for started in runs:
        started.close()


def test_a_crashed_childs_descendants_are_gone_before_it_is_started_again(run: Callable[[bool], Run]) -> None:
    supervised = run(True)
    first = supervised.wait_for_child()
    os.kill(first["child"], signal.SIGKILL)
    second = supervised.wait_for_child(not_pid=first["child"])
    assert second["alive_at_start"] == []
    assert all(gone(psutil.Process(pid)) for pid in first["descendants"] if psutil.pid_exists(pid))
    # The supervisor reaps what it killed: no zombies of them are left as its children.
    assert [p.pid for p in psutil.Process(supervised.process.pid).children() if gone(p)] == []


def test_a_stopped_supervisor_leaves_no_process(run: Callable[[bool], Run]) -> None:
    supervised = run(True)
    supervised.wait_for_child()
    everything = psutil.Process(supervised.process.pid).children(recursive=True)
    assert set(supervised.tracked) <= set(everything)
    supervised.process.send_signal(signal.SIGTERM)
    assert supervised.process.wait(timeout=30) == 0
    assert [p.pid for p in everything if not gone(p)] == []


def test_a_killed_supervisor_leaves_no_process_group_behind(run: Callable[[bool], Run]) -> None:
    supervised = run(False)
    supervised.wait_for_child()
    everything = psutil.Process(supervised.process.pid).children(recursive=True)
    supervised.process.kill()
    supervised.process.wait()
    # The child got SIGTERM from the kernel and ended; its descendant ignores SIGTERM until the guardian,
    # after the stop timeout, kills the child's group; then the guardian itself ends.
    wait_until(lambda: all(gone(p) for p in everything), STOP_TIMEOUT_S + 10, "everything ended")
