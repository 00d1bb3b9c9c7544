"""Reading what jobs leave behind: the one log-tail reader.

Job logs can be large (a chatty app, a traceback per task), live on a shared file
system and be written while we read. Every reader of a log's end (the cluster's
failure report, ``JobFuture.logs``, ``jobstrap logs``, ``jobstrap doctor``) goes
through :func:`read_tail`, which seeks to the end instead of reading the whole file.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["read_tail"]

#: Bytes read from the end of a file when only its last lines are wanted.
TAIL_BYTES = 256 * 1024


def read_tail(
    path: str | os.PathLike[str],
    lines: int | None = 20,
    *,
    limit: int = TAIL_BYTES,
    skip_blank: bool = False,
) -> str | None:
    """The last ``lines`` lines of ``path``, or ``None`` when it cannot be read.

    Parameters
    ----------
    path
        The file.
    lines
        How many lines to keep from the end; ``None`` for the whole file, ``0`` for
        none (an empty string, still ``None`` for a missing file).
    limit
        Read at most this many bytes from the end (ignored when ``lines`` is ``None``).
    skip_blank
        Drop blank lines before counting (a traceback's last lines matter, not the
        empty lines after it).

    Returns
    -------
    str or None
        The text (undecodable bytes replaced), or ``None`` if the file is missing or
        unreadable.
    """
    try:
        with open(Path(path), "rb") as handle:
            if lines is None:
                data = handle.read()
            else:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - limit))
                data = handle.read()
                if size > limit:
                    # The first line read is most likely cut: drop it.
                    data = data.partition(b"\n")[2]
    except OSError:
        return None
    text = data.decode("utf-8", errors="replace")
    if lines is None:
        return text
    kept = text.splitlines(keepends=True)
    if skip_blank:
        kept = [line for line in kept if line.strip()]
    return "".join(kept[-lines:]) if lines > 0 else ""
