"""The logs of every job of a run, merged in time order (``jobstrap logs RUN --all``).

Each line is tagged with the job (and stream) it came from. Lines are ordered by
the time stamp they start with: Python logging's ``2026-01-02 03:04:05,678`` (what
Dask and jobstrap write), an ISO 8601 time, or the ``time`` field of a JSON line
(``log_format: json``). A line without a time stamp (a traceback, a ``print``) keeps
its place after the line before it in the same file. Files are read whole only up to
:data:`MAX_BYTES` each (their end: the latest lines).
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MAX_BYTES", "LogLine", "merge_logs", "parse_since"]

#: Bytes read from the end of each log file.
MAX_BYTES = 8 * 1024 * 1024

_STAMP = re.compile(r"^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})(?:[,.](\d{1,6}))?")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")


@dataclass(frozen=True)
class LogLine:
    """One line of one job's log, with the time it is ordered by (epoch seconds)."""

    time: float
    source: str
    text: str

    def __str__(self) -> str:
        return f"[{self.source}] {self.text}"


def _stamp(text: str) -> float | None:
    if text.startswith("{"):
        try:
            value = json.loads(text).get("time")
        except (ValueError, AttributeError):
            return None
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value or "")
    match = _STAMP.match(text)
    if match is None:
        return None
    day, clock, fraction = match.groups()
    try:
        when = datetime.datetime.fromisoformat(f"{day} {clock}")
    except ValueError:
        return None
    return when.timestamp() + (float(f"0.{fraction}") if fraction else 0.0)


def _lines(path: Path, source: str) -> Iterator[LogLine]:
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            handle.seek(max(0, size - MAX_BYTES))
            data = handle.read()
    except OSError:
        return
    if size > MAX_BYTES:
        data = data.split(b"\n", 1)[-1]  # the first line is cut
    last = 0.0
    for raw in data.decode(errors="replace").splitlines():
        when = _stamp(raw)
        if when is not None:
            last = when
        yield LogLine(last, source, raw)


def merge_logs(
    files: Iterable[tuple[str, str | os.PathLike[str]]],
    *,
    grep: str | None = None,
    since: float | None = None,
) -> list[LogLine]:
    """The lines of ``files`` (``(source, path)`` pairs) in time order.

    Parameters
    ----------
    files
        Each log file with the tag its lines get (e.g. ``"123_4 err"``).
    grep
        Keep only lines matching this regular expression.
    since
        Keep only lines stamped at or after this time (epoch seconds).

    Raises
    ------
    re.error
        For a ``grep`` that is not a regular expression.
    """
    pattern = re.compile(grep) if grep else None
    merged: list[LogLine] = []
    for source, path in files:
        merged.extend(_lines(Path(path), source))
    merged.sort(key=lambda line: line.time)  # stable: a file's own order stays
    return [
        line
        for line in merged
        if (since is None or line.time >= since)
        and (pattern is None or pattern.search(line.text) or pattern.search(line.source))
    ]


def parse_since(value: str, *, now: float) -> float:
    """Epoch seconds of ``--since``: a duration ago (``90s``, ``10m``, ``2h``, ``1d``)
    or a local time (``2026-01-02 03:04``, ``2026-01-02T03:04:05``).

    Raises
    ------
    ValueError
        Naming the forms accepted.
    """
    match = _DURATION.match(value.strip())
    if match:
        number, unit = match.groups()
        return now - float(number) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    try:
        return datetime.datetime.fromisoformat(value.strip()).timestamp()
    except ValueError:
        raise ValueError(
            f"{value!r} is neither a duration (90s, 10m, 2h, 1d) nor a time (2026-01-02 03:04)"
        ) from None


def log_files(
    log_paths: Sequence[tuple[str, str, str]], log_dir: str | os.PathLike[str] | None
) -> list[tuple[str, Path]]:
    """``(source, path)`` of each job's stdout and stderr, then any other log in ``log_dir``.

    ``log_paths`` holds ``(job id, stdout, stderr)`` per job.
    """
    found: list[tuple[str, Path]] = []
    seen: set[Path] = set()
    for job_id, out, err in log_paths:
        for stream, path in (("out", Path(out)), ("err", Path(err))):
            if path.exists() and path not in seen:
                seen.add(path)
                found.append((f"{job_id} {stream}", path))
    if log_dir is not None and Path(log_dir).is_dir():
        for path in sorted(Path(log_dir).iterdir()):
            if path.suffix in (".out", ".err") and path not in seen and path.is_file():
                seen.add(path)
                found.append((f"{path.stem} {path.suffix[1:]}", path))
    return found
