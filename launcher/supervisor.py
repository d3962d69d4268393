"""A small process supervisor: start children in order, wait until each is ready, restart a child that
crashes (with back-off), stop everything in reverse order on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from services.common.processes import dying_with_parent

log = structlog.get_logger("launcher")

_STOP_TIMEOUT_S = 15.0
_MAX_BACKOFF_S = 30.0
_STABLE_AFTER_S = 60.0


@dataclass
class Component:
    name: str
    command: list[str]
    ready: Callable[[], Awaitable[bool]]
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 120.0
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0


class Supervisor:
    def __init__(self, components: list[Component], base_env: dict[str, str], state_file: Path) -> None:
        self._components = components
        self._base_env = base_env
        self._state_file = state_file
        self._stopping = asyncio.Event()

    def _write_state(self) -> None:
        """Record the children's PIDs (for operators and tests that need to kill one on purpose)."""
        state = {
            "launcher": os.getpid(),
            "components": {
                c.name: {"pid": c.process.pid if c.process else None, "restarts": c.restarts} for c in self._components
            },
        }
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self._state_file)

    async def _spawn(self, component: Component) -> None:
        component.process = await asyncio.create_subprocess_exec(
            # If the launcher dies (even by SIGKILL), its children get SIGTERM.
            *dying_with_parent(component.command, signal.SIGTERM),
            env={**self._base_env, **component.env},
            stdin=asyncio.subprocess.DEVNULL,
            # Their own session: Ctrl-C reaches only the launcher, which stops the children in order.
            start_new_session=True,
        )
        component.started_at = time.monotonic()
        self._write_state()
        log.info("started", component=component.name, pid=component.process.pid)

    async def _wait_ready(self, component: Component) -> None:
        deadline = time.monotonic() + component.ready_timeout_s
        while time.monotonic() < deadline:
            assert component.process is not None
            if component.process.returncode is not None:
                raise RuntimeError(f"{component.name} exited with code {component.process.returncode} while starting")
            if await component.ready():
                log.info("ready", component=component.name, seconds=round(time.monotonic() - component.started_at, 2))
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{component.name} was not ready within {component.ready_timeout_s:.0f}s")

    async def start(self) -> None:
        for component in self._components:
            await self._spawn(component)
            await self._wait_ready(component)

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
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=backoff)
                return
            except TimeoutError:
                pass
            backoff = min(backoff * 2, _MAX_BACKOFF_S)
            await self._spawn(component)
            try:
                await self._wait_ready(component)
            except RuntimeError as error:
                log.error("restart failed", component=component.name, error=str(error))

    async def supervise(self) -> None:
        """Watch the children until SIGINT/SIGTERM, then stop them."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._stopping.set)
        watchers = [asyncio.create_task(self._watch(component)) for component in self._components]
        await self._stopping.wait()
        await self.stop()
        for watcher in watchers:
            watcher.cancel()

    async def stop(self) -> None:
        self._stopping.set()
        for component in reversed(self._components):
            process = component.process
            if process is None or process.returncode is not None:
                continue
            log.info("stopping", component=component.name)
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=_STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("did not stop in time; killing", component=component.name)
                process.kill()
                await process.wait()
        log.info("all stopped")
