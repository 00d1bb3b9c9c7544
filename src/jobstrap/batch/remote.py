"""Exceptions raised inside a graph job, rebuilt on the submitting side.

The graph runner writes the exception (pickled, when it pickles), its type name,
message, traceback text and host into ``error.pkl``; :func:`rebuild` turns that
back into the original exception with the remote traceback chained, or into a
:class:`RemoteError` when the type cannot be rebuilt here.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
from collections.abc import Mapping
from typing import Any

from jobstrap.errors import JobstrapError

__all__ = ["RemoteError", "rebuild"]


class RemoteError(JobstrapError):
    """An exception raised inside the job that could not be rebuilt here.

    Raised when the original exception type cannot be unpickled on this side (its
    module is not installed here, or it does not pickle). The remote traceback is in
    the message and in :attr:`remote_traceback`.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str, host: str = "") -> None:
        self.type_name = type_name
        self.remote_message = message
        self.remote_traceback = remote_traceback
        self.host = host
        where = f" on {host}" if host else ""
        super().__init__(
            f"{type_name}: {message}\n--- remote traceback{where} ---\n{remote_traceback.rstrip()}"
        )


class _RemoteTracebackError(Exception):
    """Chained as ``__cause__`` so the remote traceback prints above the local one."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n" + self.text.rstrip()


def rebuild(info: Mapping[str, Any]) -> BaseException:
    """The remote exception, with the remote traceback attached and chained."""
    text = str(info.get("traceback", ""))
    error: BaseException | None = None
    if info.get("exception"):
        with contextlib.suppress(Exception):
            error = pickle.loads(info["exception"])
    if not isinstance(error, BaseException):
        return RemoteError(
            str(info.get("type", "Exception")),
            str(info.get("message", "")),
            text,
            str(info.get("host", "")),
        )
    with contextlib.suppress(AttributeError, TypeError):
        error.remote_traceback = text  # type: ignore[attr-defined]
    # The remote frames are in the chained text; frames restored by unpickling would
    # only print them twice.
    error.__traceback__ = None
    error.__cause__ = _RemoteTracebackError(text)
    error.__suppress_context__ = True
    if sys.version_info >= (3, 11):
        host = info.get("host")
        error.add_note(f"(raised in the batch job{' on ' + str(host) if host else ''})")
    return error
