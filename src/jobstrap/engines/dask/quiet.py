"""Messages: one-line notices from the bootstrap, and silence while shutting down.

When a run ends, every connection between scheduler, workers and clients closes
within a second, and ``distributed`` logs each one from both ends, sometimes with a
``CommClosedError`` traceback. None of it means anything once the run is over, so
the loggers that produce it are raised to CRITICAL for the shutdown only; during
the run they stay as they are, so a real failure is still visible. One kind of
record is dropped at any time (:func:`quiet_shutdown_tracebacks`): an ERROR whose
exception is a cancellation, which ``distributed`` logs with a traceback when a
scheduler closes while a retired worker's stream is still being read.
"""

from __future__ import annotations

import asyncio
import logging

from jobstrap.bootstrap import messages
from jobstrap.bootstrap.messages import logger, say

__all__ = [
    "NOISY_LOGGERS",
    "configure_logging",
    "logger",
    "quiet_shutdown_tracebacks",
    "say",
    "silence_for_shutdown",
]

#: Loggers whose output at shutdown is only the echo of connections closing.
NOISY_LOGGERS: tuple[str, ...] = (
    "distributed",
    "distributed.batched",
    "distributed.client",
    "distributed.comm",
    "distributed.core",
    "distributed.nanny",
    "distributed.process",
    "distributed.scheduler",
    "distributed.worker",
    "distributed.worker_memory",
    "distributed.active_memory_manager",
    "tornado.application",
    "tornado.general",
    "asyncio",
)


class _NoClosedCommTraceback(logging.Filter):
    """Keep the line, drop the traceback of a ``CommClosedError``.

    ``distributed.batched`` logs "Batched Comm Closed" with the full traceback of
    the ``CommClosedError`` whenever the other end of a stream went away first: a
    worker retiring on a drain while the scheduler still sends to it, or any rank
    leaving at the end of a run. The line says all there is to say (the scheduler
    logs the worker's removal too); the traceback reads like a crash, and arrives
    before :func:`silence_for_shutdown` can run when every rank gets the signal at
    once (Ctrl-C under mpiexec, a walltime SIGTERM).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and type(error).__name__ == "CommClosedError":
            record.exc_info = None
            record.exc_text = None
        return True


class _CancelledIsNotAnError(logging.Filter):
    """Drop a record whose exception is a cancellation, at any level.

    A scheduler closing while a retired worker's stream is still open cancels the
    coroutine reading that stream, and ``distributed``'s ``log_errors`` logs the
    ``CancelledError`` as an ERROR: an empty message and a traceback of
    ``comm.read()``, shown in the notebook on every ``cluster.close()`` that
    retires workers. A cancellation is how asyncio stops work, never a failure.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, asyncio.CancelledError)


_closed_comm_filter = _NoClosedCommTraceback()
_cancelled_filter = _CancelledIsNotAnError()

#: Loggers ``log_errors`` reports a cancelled server coroutine under.
_CANCELLING_LOGGERS = ("distributed.scheduler", "distributed.worker", "distributed.nanny",
                       "distributed.core")  # fmt: skip


def quiet_shutdown_tracebacks() -> None:
    """Install the filters: ``CommClosedError`` tracebacks on ``distributed.batched``,
    cancellations on the servers' loggers (idempotent; call in every process)."""
    batched = logging.getLogger("distributed.batched")
    if _closed_comm_filter not in batched.filters:
        batched.addFilter(_closed_comm_filter)
    for name in _CANCELLING_LOGGERS:
        server = logging.getLogger(name)
        if _cancelled_filter not in server.filters:
            server.addFilter(_cancelled_filter)


def configure_logging(rank: int | None = None) -> None:
    """Send ``jobstrap.*`` log records to stderr (see :mod:`jobstrap.bootstrap.messages`),
    and keep ``CommClosedError`` tracebacks out of them."""
    quiet_shutdown_tracebacks()
    messages.configure_logging(rank)


def silence_for_shutdown() -> None:
    """Raise the noisy loggers to CRITICAL; called once the run is over."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
