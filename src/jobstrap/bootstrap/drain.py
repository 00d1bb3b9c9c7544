"""Being told to wind down: the hook an app uses to hear SIGTERM/SIGUSR1.

Batch systems warn a job before they kill it: Slurm sends SIGTERM at the walltime
(then SIGKILL after ``KillWait``), and ``--signal=USR1@120`` sends SIGUSR1 two
minutes early. The bootstrap catches these on the client rank and reports them
here, so an app can checkpoint and stop cleanly::

    from jobstrap.bootstrap import on_drain, draining

    on_drain(lambda: print("asked to stop; saving a checkpoint"))
    for step in steps:
        if draining():
            break
        ...

The same news is also written to a file whose path is in ``$JOBSTRAP_DRAIN_FILE``
(``<run_dir>/drain``), so child processes of the app and code that cannot import
jobstrap can check for it.

This module imports nothing heavy and installs nothing at import time.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "DRAIN_FILE_ENV",
    "drain_file",
    "drain_reason",
    "draining",
    "on_drain",
    "request_drain",
    "wait_for_drain",
]

#: Environment variable holding the path of the drain file.
DRAIN_FILE_ENV = "JOBSTRAP_DRAIN_FILE"

_event = threading.Event()
_lock = threading.Lock()
_callbacks: list[Callable[[], object]] = []
_reason: str | None = None


def drain_file() -> Path | None:
    """The drain file named by ``$JOBSTRAP_DRAIN_FILE``, or ``None`` outside a job."""
    value = os.environ.get(DRAIN_FILE_ENV)
    return Path(value) if value else None


def draining() -> bool:
    """Whether the batch system has asked this job to wind down.

    True once SIGTERM or SIGUSR1 reached the client rank (in this process), or once
    the drain file exists (in any process of the job that sees the variable).
    """
    if _event.is_set():
        return True
    path = drain_file()
    return path is not None and path.exists()


def drain_reason() -> str | None:
    """The signal that asked for the drain (``"SIGTERM"``, ``"SIGUSR1"``), or ``None``."""
    return _reason


def wait_for_drain(timeout: float | None = None) -> bool:
    """Block until a drain is requested in this process; return whether it was."""
    return _event.wait(timeout)


def on_drain(callback: Callable[[], object]) -> Callable[[], object]:
    """Call ``callback()`` once when the job is asked to wind down.

    Callbacks run in a separate thread named ``jobstrap-drain``, one after the
    other, so a callback may block (e.g. write a checkpoint) without stopping the
    app's main thread; an exception in one is printed and does not stop the
    others. A callback registered after the drain started is called right away.
    Usable as a decorator.

    Returns
    -------
    callable
        ``callback`` itself.
    """
    with _lock:
        already = _event.is_set()
        if not already:
            _callbacks.append(callback)
    if already:
        _run_callbacks([callback])
    return callback


def request_drain(reason: str) -> bool:
    """Record a drain request (called by the bootstrap's signal handlers).

    Safe to call from a signal handler: it only sets an event, writes a small file
    and starts a thread. Returns ``False`` if a drain was already requested.
    """
    global _reason
    with _lock:
        if _event.is_set():
            return False
        _reason = reason
        _event.set()
        callbacks = list(_callbacks)
        _callbacks.clear()
    path = drain_file()
    if path is not None:
        with contextlib.suppress(OSError):  # telling the app matters more than the file
            from jobstrap.store.rundir import atomic_write_text

            atomic_write_text(path, f"{reason} {time.time():.3f}\n")
    _run_callbacks(callbacks)
    return True


def _run_callbacks(callbacks: list[Callable[[], object]]) -> None:
    if not callbacks:
        return

    def run() -> None:
        import traceback

        for callback in callbacks:
            try:
                callback()
            except Exception:
                traceback.print_exc()

    threading.Thread(target=run, name="jobstrap-drain", daemon=True).start()


def _reset_for_tests() -> None:
    """Forget any drain request (tests run several scenarios in one process)."""
    global _reason
    with _lock:
        _event.clear()
        _callbacks.clear()
        _reason = None


# --------------------------------------------------------------- before the handlers

_early: list[str] = []


def catch_early_signals() -> None:
    """Record SIGTERM/SIGUSR1 that arrive before the bootstrap's real handlers exist.

    Their default action kills the process, and the batch system may signal a
    rank while it is still importing ``distributed``. Called first thing by the
    bootstrap; the real handlers replay what was caught (:func:`early_signals`).
    """
    import signal

    def record(signum: int, _frame: object) -> None:
        _early.append(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, record)


def early_signals() -> list[str]:
    """Names of the signals caught before the real handlers, oldest first (then forgotten)."""
    caught = list(_early)
    _early.clear()
    return caught
