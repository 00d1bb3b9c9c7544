"""Helpers shared by the unit, integration and fault tests (``pythonpath`` in pyproject)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from jobstrap.batchctl.control import BatchControl

__all__ = ["local_backend_env", "wait_until"]


def wait_until(
    condition: Callable[[], object],
    timeout: float,
    about: Callable[[], object] | str = "",
    interval: float = 0.2,
) -> None:
    """Poll ``condition`` until it is true; fail the test after ``timeout`` seconds.

    ``about`` says what the failure message shows: a callable's value at the moment of
    failure (what the test last saw), or a description of what was awaited.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        last = condition()
        if last:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(interval)
    if callable(about):
        pytest.fail(f"condition not met within {timeout} s; last seen: {about()}")
    pytest.fail(
        f"timed out after {timeout} s waiting for {about or 'the condition'}; last {last!r}"
    )


def local_backend_env(patch: pytest.MonkeyPatch, root: Path, kill_wait: float = 2) -> None:
    """Give the local backend a spool, run root, registry and config of ``root``'s own.

    Subprocesses (the CLI, jobs) inherit them; ``kill_wait`` is the seconds the local
    queue waits between a job's SIGTERM and its SIGKILL.
    """
    patch.setenv("JOBSTRAP_LOCAL_SPOOL", str(root / "spool"))
    patch.setenv("JOBSTRAP_RUN_ROOT", str(root / "runs"))
    patch.setenv("JOBSTRAP_STATE_DIR", str(root / "state"))
    patch.setenv("JOBSTRAP_CONFIG_DIR", str(root / "config"))
    patch.setenv("JOBSTRAP_LOCAL_KILL_WAIT", str(kill_wait))
    patch.delenv("JOBSTRAP_PROFILE", raising=False)
    # A process's batch control (its watcher, and the controller identity it asked for
    # once: `host:/spool` for the local system) belongs to one spool; a module with a
    # spool of its own starts with fresh ones, as a new process would.
    patch.setattr(BatchControl, "_instances", {})


def processes_of_run(run_dir: Path | str) -> list[str]:
    """Every process whose environment names ``run_dir`` (``JOBSTRAP_RUN_DIR``): "pid cmd".

    Read as the local queue reads a task's processes
    (:func:`jobstrap.localq.processes.parse_environ`): Ray's processes retitle
    themselves (``ray::DashboardAgent``), which blanks the start of that block, and
    psutil's ``environ()`` then reads it as empty.
    """
    import os

    from jobstrap.localq.processes import parse_environ

    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if parse_environ(handle.read()).get("JOBSTRAP_RUN_DIR") != str(run_dir):
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found.append(f"{entry} {command.strip()}")
    return found
