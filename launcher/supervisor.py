"""A small process supervisor: start children in order, wait until each is ready, restart a child that
crashes (with back-off), stop everything in reverse order on SIGINT/SIGTERM.

No process it started outlives it, nor a child's crash (Triton's Python-backend model processes once kept
running after a kill -9 of Triton, ignoring SIGTERM):
- each child leads a process group of its own (a new session), which its descendants stay in unless they
  start a session themselves (Triton's model processes stay): once a child has ended, crashed or stopped,
  whatever is left of its group is killed, and the child is started again only when the group is empty;
- the supervisor is a child subreaper: a descendant whose parent died becomes its child (not init's), and
  such orphans are killed and reaped (e.g. a worker in a session of its own after its service died);
- killed outright itself (kill -9, the OOM killer), it cannot act: its children get SIGTERM from the kernel
  (dying_with_parent), and the guardian (launcher/guardian.py), a process that notices its end, kills the
  groups still there after the stop timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from launcher.guardian import RELEASE
from services.common.processes import (
    become_child_subreaper,
    children_of_this_process,
    dying_with_parent,
    group_members,
    kill_and_reap,
    signal_group,
)

log = structlog.get_logger("launcher")

_MAX_BACKOFF_S = 30.0
_STABLE_AFTER_S = 60.0
# A child that is not ready after this long is said to be awaited, and again every _WAITING_EVERY_S.
_WAITING_AFTER_S = 5.0
_WAITING_EVERY_S = 15.0
# SIGKILLed processes end at once unless stuck in the kernel; this bounds the wait for an ended child's group.
_GROUP_CLEAR_TIMEOUT_S = 10.0
# Orphans are also looked for between crashes: a descendant's parent may die while the child lives on.
_ORPHAN_SWEEP_EVERY_S = 2.0


@dataclass
class Component:
    name: str
    command: list[str]
    ready: Callable[[], Awaitable[bool]]
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 120.0
    # What a slow start is busy with, for the operator (the "waiting" lines); empty = nothing in particular.
    start_note: str = ""
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0


class Supervisor:
    def __init__(
        self, components: list[Component], base_env: dict[str, str], state_file: Path, *, stop_timeout_s: float
    ) -> None:
        self._components = components
        self._base_env = base_env
        self._state_file = state_file
        self._stop_timeout_s = stop_timeout_s
        self._stopping = asyncio.Event()
        self._status = "starting"
        # Held while a child is being started: until its Process exists, it would look like an orphan.
        self._spawn_lock = asyncio.Lock()
        self._guardian: asyncio.subprocess.Process | None = None
        self._guardian_pipe: int | None = None
        self._background: list[asyncio.Task[None]] = []

    def _write_state(self) -> None:
        """Record the status and the children's PIDs (for operators, tests that kill one on purpose, and the
        guardian; each PID is also its child's process group)."""
        state = {
            "launcher": os.getpid(),
            "status": self._status,
            "components": {
                c.name: {"pid": c.process.pid if c.process else None, "restarts": c.restarts} for c in self._components
            },
        }
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self._state_file)

    async def _spawn(self, component: Component) -> bool:
        """Start the component's process; False (nothing started) once a stop has begun."""
        async with self._spawn_lock:
            if self._stopping.is_set():
                return False
            component.process = await asyncio.create_subprocess_exec(
                # If the launcher dies (even by SIGKILL), its children get SIGTERM.
                *dying_with_parent(component.command, signal.SIGTERM),
                env={**self._base_env, **component.env},
                stdin=asyncio.subprocess.DEVNULL,
                # Their own session: Ctrl-C reaches only the launcher, which stops the children in order; and
                # a process group per child, which is what is killed once the child has ended.
                start_new_session=True,
            )
        component.started_at = time.monotonic()
        self._write_state()
        log.info("started", component=component.name, pid=component.process.pid)
        return True

    async def _wait_ready(self, component: Component) -> bool:
        """True once the component is ready; False when a stop begins first."""
        deadline = component.started_at + component.ready_timeout_s
        next_note = component.started_at + _WAITING_AFTER_S
        while (now := time.monotonic()) < deadline:
            assert component.process is not None
            if self._stopping.is_set():
                return False
            if component.process.returncode is not None:
                raise RuntimeError(f"{component.name} exited with code {component.process.returncode} while starting")
            if await component.ready():
                log.info("ready", component=component.name, seconds=round(time.monotonic() - component.started_at, 2))
                return True
            if now >= next_note:
                waiting = {"busy_with": component.start_note} if component.start_note else {}
                log.info(
                    "waiting until ready",
                    component=component.name,
                    seconds=round(now - component.started_at),
                    timeout_s=round(component.ready_timeout_s),
                    **waiting,
                )
                next_note = now + _WAITING_EVERY_S
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{component.name} was not ready within {component.ready_timeout_s:.0f}s")

    async def start(self) -> bool:
        """Start every component in order, each once the previous one is ready. True when all are ready (the
        platform is up); False when SIGINT/SIGTERM came first (call stop())."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._stopping.set)
        become_child_subreaper()
        await self._start_guardian()
        self._background.append(asyncio.create_task(self._sweep_orphans()))
        self._write_state()
        for component in self._components:
            if not (await self._spawn(component) and await self._wait_ready(component)):
                return False
        self._status = "up"
        self._write_state()
        return True

    async def _start_guardian(self) -> None:
        # The write end stays here only (not inheritable, and subprocesses close other descriptors): it closes
        # when the launcher ends, however it ends.
        read_end, self._guardian_pipe = os.pipe()
        try:
            self._guardian = await asyncio.create_subprocess_exec(
                *[sys.executable, "-m", "launcher.guardian", str(self._state_file), str(self._stop_timeout_s)],
                env=self._base_env,
                stdin=read_end,
                start_new_session=True,
            )
        finally:
            os.close(read_end)

    async def _release_guardian(self) -> None:
        if self._guardian is None or self._guardian_pipe is None:
            return
        os.write(self._guardian_pipe, RELEASE)
        os.close(self._guardian_pipe)
        self._guardian_pipe = None
        await self._guardian.wait()

    async def _watch(self, component: Component) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            assert component.process is not None
            code = await component.process.wait()
            if self._stopping.is_set():
                return
            if time.monotonic() - component.started_at > _STABLE_AFTER_S:
                backoff = 1.0
            component.restarts += 1
            log.error(
                "crashed; restarting",
                component=component.name,
                exit_code=code,
                restart_in_s=backoff,
                restarts=component.restarts,
            )
            await self._clear_group(component)
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=backoff)
                return
            except TimeoutError:
                pass
            backoff = min(backoff * 2, _MAX_BACKOFF_S)
            if not await self._spawn(component):
                return
            try:
                await self._wait_ready(component)
            except RuntimeError as error:
                log.error("restart failed", component=component.name, error=str(error))

    async def _clear_group(self, component: Component) -> None:
        """Kill whatever is left of an ended child's process group and the orphans (such as its descendants in
        sessions of their own), until the group is empty and every orphan is reaped."""
        assert component.process is not None
        group = component.process.pid
        left = group_members(group)
        if left:
            log.warning("killing what it left behind", component=component.name, pids=left)
        deadline = time.monotonic() + _GROUP_CLEAR_TIMEOUT_S
        while True:
            orphans_reaped = await self._reap_orphans()
            if not signal_group(group, signal.SIGKILL) and orphans_reaped:
                return
            if time.monotonic() > deadline:
                log.error("what it left behind does not end", component=component.name, pids=group_members(group))
                return
            await asyncio.sleep(0.05)

    async def _reap_orphans(self) -> bool:
        """Kill and reap every child of the launcher that is not one of its components (or the guardian): a
        descendant whose parent has died. False while one of them has not ended yet."""
        async with self._spawn_lock:
            own = {c.process.pid for c in self._components if c.process is not None}
            if self._guardian is not None:
                own.add(self._guardian.pid)
            reaped = True
            for pid, name, ended in children_of_this_process():
                if pid in own:
                    continue
                if not ended:
                    log.warning("killing an orphan", pid=pid, name=name)
                reaped = kill_and_reap(pid) and reaped
            return reaped

    async def _sweep_orphans(self) -> None:
        while True:
            await asyncio.sleep(_ORPHAN_SWEEP_EVERY_S)
            await self._reap_orphans()

    async def supervise(self) -> None:
        """Watch the children until SIGINT/SIGTERM, then stop them."""
        watchers = [asyncio.create_task(self._watch(component)) for component in self._components]
        await self._stopping.wait()
        await self.stop()
        for watcher in watchers:
            watcher.cancel()

    async def stop(self) -> None:
        self._stopping.set()
        async with self._spawn_lock:  # a child being started now is started before the stop looks at it
            self._status = "stopping"
            self._write_state()
        for component in reversed(self._components):
            process = component.process
            if process is None:
                continue
            if process.returncode is None:
                log.info("stopping", component=component.name)
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), timeout=self._stop_timeout_s)
                except TimeoutError:
                    log.warning("did not stop in time; killing", component=component.name)
                    process.kill()
                    await process.wait()
            await self._clear_group(component)
        for task in self._background:
            task.cancel()
        await self._reap_orphans()
        await self._release_guardian()
        self._status = "stopped"
        self._write_state()
        log.info("all stopped")
