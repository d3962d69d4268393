"""`python -m launcher.guardian <state file> <stop timeout>`: what keeps a launcher that is killed outright
(kill -9, the OOM killer) from leaving processes behind.

The launcher starts it with stdin the read end of a pipe whose write end only the launcher holds, so the
pipe closes when the launcher ends, however it ends. After a clean stop the launcher writes RELEASE first and
the guardian just exits. Otherwise the launcher's children got SIGTERM at its death (dying_with_parent) and
may still be stopping: the guardian gives their process groups (the PIDs in the state file: each child leads
its own group) the stop timeout to empty, then SIGKILLs what is left, such as a Triton model process that
ignores SIGTERM.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from services.common.processes import signal_group

RELEASE = b"released\n"


def component_groups(state_file: Path) -> dict[str, int]:
    """The launcher's children by name, as their process groups (from the launcher's state file)."""
    try:
        components = json.loads(state_file.read_text())["components"]
    except (OSError, ValueError, KeyError):
        return {}
    return {name: int(entry["pid"]) for name, entry in components.items() if entry.get("pid")}


def clean_up(state_file: Path, stop_timeout_s: float) -> None:
    groups = component_groups(state_file)
    deadline = time.monotonic() + stop_timeout_s
    while (left := {name: group for name, group in groups.items() if signal_group(group, 0)}) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
    if not left:
        return
    # Imported only now: the guardian idles for the platform's whole life, in a quarter of the memory without them.
    import structlog

    from services.common.logging import configure_logging
    from services.common.settings import CommonSettings

    configure_logging("launcher", CommonSettings())
    structlog.get_logger("launcher.guardian").warning(
        "the launcher ended without stopping everything: killing what is left", components=sorted(left)
    )
    for group in left.values():
        signal_group(group, signal.SIGKILL)


def main() -> None:
    state_file, stop_timeout_s = Path(sys.argv[1]), float(sys.argv[2])
    if sys.stdin.buffer.read() != RELEASE:
        clean_up(state_file, stop_timeout_s)


if __name__ == "__main__":
    main()
