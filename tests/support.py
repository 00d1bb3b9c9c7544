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
