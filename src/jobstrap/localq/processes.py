"""The processes of a task: finding them (process group plus marker) and signalling them.

The marker environment variable is the local stand-in for a cgroup: processes that left
the task's process group (``setsid``, daemons) are still found and ended with it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from jobstrap.localq.spool import MARKER, MARKER_SPOOL


def process_start_time(pid: int) -> float | None:
    """The process's start time, or None if it is gone (or a zombie)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(process.create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def is_alive(pid: int | None, create_time: float | None) -> bool:
    """Whether ``pid`` still runs and is the process started at ``create_time``."""
    if not pid:
        return False
    started = process_start_time(pid)
    # A different start time means the pid was reused by an unrelated process.
    return started is not None and (create_time is None or abs(started - create_time) < 0.05)


def _environ(pid: int) -> dict[str, str]:
    """The environment ``pid`` started with, read whole from ``/proc/PID/environ``.

    A process that retitles itself (Ray's ``ray::DashboardAgent``, setproctitle) writes
    its title over the start of that block; psutil's ``environ()`` then reads it as
    empty, and the process would escape its task. Every entry that is still whole
    is kept.
    """
    with open(f"/proc/{pid}/environ", "rb") as handle:
        return parse_environ(handle.read())


def parse_environ(block: bytes) -> dict[str, str]:
    """The ``NAME=value`` entries of an environment block, past any blank or garbled part.

    psutil stops at the first empty entry, which a retitled process's zeroed title
    area is.
    """
    env = {}
    for entry in block.split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if sep and name:
            env[name.decode(errors="replace")] = value.decode(errors="replace")
    return env


def task_processes(spool: Path, key: str, pgid: int | None) -> list[int]:
    """Live pids of a task: its process group plus every process carrying its marker.

    The marker is the local stand-in for a cgroup: it finds what left the group
    (``setsid``, daemons). Zombies do not count: they are dead, only not yet reaped
    (``killpg(pgid, 0)`` would still succeed on them).
    """
    import psutil

    found = []
    me = os.getpid()
    for process in psutil.process_iter():
        if process.pid == me:
            continue
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            if pgid and os.getpgid(process.pid) == pgid:
                found.append(process.pid)
                continue
            env = _environ(process.pid)
        except (psutil.Error, OSError):
            continue
        if env.get(MARKER) == key and env.get(MARKER_SPOOL) == str(spool):
            found.append(process.pid)
    return found


def signal_task(spool: Path, key: str, pgid: int | None, signum: int, *, sweep: bool) -> None:
    """Send ``signum`` to the task's process group and, with ``sweep``, to all its processes."""
    if pgid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)
    if sweep:
        for pid in task_processes(spool, key, pgid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)


def kill_wait() -> float:
    """Seconds between SIGTERM and SIGKILL: ``$JOBSTRAP_LOCAL_KILL_WAIT``, default 10."""
    try:
        return max(0.0, float(os.environ.get("JOBSTRAP_LOCAL_KILL_WAIT", "10")))
    except ValueError:
        return 10.0
