"""Child processes that die with their parent.

The parent-death signal is set by util-linux's `setpriv` in the new process, right before it execs the
real command. A `preexec_fn` would do the same from Python, but it forces a plain fork of a process whose
gRPC threads are running, and gRPC can abort the child between fork and exec.
"""

from __future__ import annotations

import signal


def dying_with_parent(command: list[str], death_signal: signal.Signals) -> list[str]:
    """`command`, wrapped so that it receives `death_signal` when the process that started it dies."""
    return ["setpriv", "--pdeathsig", death_signal.name.removeprefix("SIG"), "--", *command]
