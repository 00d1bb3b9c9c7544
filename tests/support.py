"""Helpers shared by the unit, integration and fault tests (``pythonpath`` in pyproject)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

__all__ = ["wait_until"]


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
