"""Quiet shutdowns: a closed comm is one line, not a traceback."""

from __future__ import annotations

import io
import logging


def test_a_closed_comm_is_logged_as_one_line_without_its_traceback() -> None:
    from distributed.comm.core import CommClosedError

    from jobstrap.engines.dask.quiet import quiet_shutdown_tracebacks

    quiet_shutdown_tracebacks()
    quiet_shutdown_tracebacks()  # idempotent: one filter
    batched = logging.getLogger("distributed.batched")
    assert len(batched.filters) == 1
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    batched.addHandler(handler)
    try:
        for error in (CommClosedError("gone"), ValueError("real")):
            try:
                raise error
            except Exception:
                batched.info("Batched Comm Closed <TLS>", exc_info=True)
    finally:
        batched.removeHandler(handler)
    text = stream.getvalue()
    assert text.count("Batched Comm Closed") == 2
    assert "CommClosedError" not in text  # the line stays, its traceback goes
    assert "ValueError: real" in text  # any other error keeps its traceback


def test_closing_a_scheduler_with_a_retired_worker_s_stream_open_logs_no_cancellation() -> None:
    import asyncio

    from distributed import Scheduler, Worker

    from jobstrap.engines.dask.quiet import quiet_shutdown_tracebacks

    async def close_with_a_stream_open() -> None:
        async with Scheduler(dashboard_address=":0", port=0) as scheduler:
            worker = await Worker(scheduler.address, nthreads=1)
            # Retired but not closed: its stream to the scheduler is still being read
            # when the scheduler closes (cluster.close() retiring its workers).
            await scheduler.retire_workers([worker.address], close_workers=False, remove=True)
            await scheduler.close()
            await worker.close()

    def errors_logged() -> str:
        logger = logging.getLogger("distributed.scheduler")
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setLevel(logging.ERROR)
        level = logger.level
        logger.setLevel(logging.ERROR)
        logger.addHandler(handler)
        try:
            asyncio.run(close_with_a_stream_open())
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
        return stream.getvalue()

    from jobstrap.engines.dask import quiet

    for name in quiet._CANCELLING_LOGGERS:
        logging.getLogger(name).removeFilter(quiet._cancelled_filter)
    try:
        # Without the filter distributed logs the cancelled read as an error (the test's
        # premise: if distributed stops doing so, the filter can go).
        assert "CancelledError" in errors_logged()
    finally:
        quiet_shutdown_tracebacks()
    assert "CancelledError" not in errors_logged()
