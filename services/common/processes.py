"""Child processes that die with their parent, and what a supervisor needs so that none of its descendants
outlives it: the process table, process groups, and the child-subreaper role.

The parent-death signal is set by util-linux's `setpriv` in the new process, right before it execs the
real command. A `preexec_fn` would do the same from Python, but it forces a plain fork of a process whose
gRPC threads are running, and gRPC can abort the child between fork and exec.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket

import psutil

_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def dying_with_parent(command: list[str], death_signal: signal.Signals) -> list[str]:
    """`command`, wrapped so that it receives `death_signal` when the process that started it dies."""
    return ["setpriv", "--pdeathsig", death_signal.name.removeprefix("SIG"), "--", *command]


def become_child_subreaper() -> None:
    """Make this process the parent of every orphan among its descendants (instead of init), so that a
    process whose parent died can still be found, killed and reaped here. Linux only."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(error)}")


def group_members(group: int) -> list[int]:
    """The processes of a process group that have not ended (zombies have)."""
    members = []
    for process in psutil.process_iter(["status"]):
        try:
            if process.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(process.pid) == group:
                members.append(process.pid)
        except (ProcessLookupError, psutil.Error):
            continue  # ended meanwhile
    return members


def children_of_this_process() -> list[tuple[int, str, bool]]:
    """(pid, name, ended) of every child of this process: a subreaper's orphans are among them."""
    found = []
    for child in psutil.Process().children():
        try:
            found.append((child.pid, child.name(), child.status() == psutil.STATUS_ZOMBIE))
        except psutil.NoSuchProcess:
            continue  # reaped meanwhile
    return found


def signal_group(group: int, signum: int) -> bool:
    """Send `signum` to every process of a process group (0: none, only check that it has processes); False
    when the group has no process left."""
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        return False
    return True


def kill_and_reap(pid: int) -> bool:
    """SIGKILL a child of this process and reap it if it has ended; False while it has not ended yet."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    try:
        reaped, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not (or no longer) a child: someone else reaps it
        return True
    return reaped == pid


def ended_here(host: str, pid: int) -> bool:
    """Whether process `pid` of host `host` is known to have ended: only a process of this host can be looked
    at (one of another host may be running or not: False)."""
    if host != socket.gethostname():
        return False
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
