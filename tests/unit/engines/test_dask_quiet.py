"""Quiet shutdowns: a closed comm is one line, not a traceback."""

from __future__ import annotations

import io
import logging


def test_a_closed_comm_is_logged_as_one_line_without_its_traceback() -> None:
    from distributed.comm.core import CommClosedError

    from jobstrap.engines.dask.quiet import quiet_closed_comm_tracebacks

    quiet_closed_comm_tracebacks()
    quiet_closed_comm_tracebacks()  # idempotent: one filter
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
