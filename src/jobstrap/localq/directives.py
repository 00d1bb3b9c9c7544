"""Submission options: ``#JOBSTRAP --key=value`` script directives and their values.

``submit`` reads the directives from the script's header (the first block of comment
lines, as ``sbatch`` does); command-line options override them.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import signal
from dataclasses import dataclass, field

from jobstrap.localq.spool import LocalQueueError

#: Largest array index + 1, as Slurm's ``MaxArraySize``.
MAX_ARRAY_SIZE = 1001
PREFIX = "#JOBSTRAP"

_DEFAULT_WALLTIME = 3600
_OPTIONS = ("job-name", "output", "error", "time", "ntasks", "array", "signal")


@dataclass
class Directives:
    """The options of one submission (script header, then the command line)."""

    job_name: str = ""
    output: str = ""
    error: str = ""
    time: int = _DEFAULT_WALLTIME
    ntasks: int = 1
    array: list[int] | None = None
    array_limit: int | None = None
    signal: tuple[int, int] | None = None  #: (signal number, seconds before the walltime)
    given: set[str] = field(default_factory=set)

    def apply(self, key: str, value: str) -> None:
        """Set one option from its ``--key=value`` text; raises on a bad value."""
        if key not in _OPTIONS:
            allowed = ", ".join(f"--{o}" for o in _OPTIONS)
            raise LocalQueueError(f"unknown option --{key} (the local queue knows {allowed})")
        self.given.add(key)
        if key == "job-name":
            self.job_name = value
        elif key == "output":
            self.output = value
        elif key == "error":
            self.error = value
        elif key == "time":
            self.time = _parse_time(value)
        elif key == "ntasks":
            if not value.isdigit() or int(value) < 1:
                raise LocalQueueError(f"--ntasks={value}: expected a whole number >= 1")
            self.ntasks = int(value)
        elif key == "array":
            self.array, self.array_limit = _parse_array(value)
        elif key == "signal":
            self.signal = _parse_signal(value)


def _parse_time(value: str) -> int:
    from jobstrap.config.units import parse_walltime
    from jobstrap.errors import ConfigError

    try:
        return parse_walltime(value, "--time")
    except ConfigError as error:
        raise LocalQueueError(str(error)) from None


def _parse_array(value: str) -> tuple[list[int], int | None]:
    spec, _, limit_text = value.partition("%")
    indices: set[int] = set()
    for part in filter(None, spec.split(",")):
        match = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part.strip())
        if not match:
            raise LocalQueueError(f"--array={value}: expected ranges like 0-9, 1,3,5 or 0-9%2")
        start = int(match[1])
        stop = int(match[2]) if match[2] else start
        step = int(match[3]) if match[3] else 1
        if stop < start or step < 1:
            raise LocalQueueError(f"--array={value}: empty range {part}")
        indices.update(range(start, stop + 1, step))
    if not indices:
        raise LocalQueueError(f"--array={value}: no tasks")
    if max(indices) >= MAX_ARRAY_SIZE:
        raise LocalQueueError(
            f"--array={value}: index {max(indices)} exceeds MaxArraySize={MAX_ARRAY_SIZE}"
        )
    limit = None
    if limit_text:
        if not limit_text.isdigit() or int(limit_text) < 1:
            raise LocalQueueError(f"--array={value}: the %limit must be a whole number >= 1")
        limit = int(limit_text)
    return sorted(indices), limit


def signal_number(name: str) -> int:
    text = name.strip().upper()
    if text.isdigit():
        number = int(text)
        if number in {s.value for s in signal.Signals}:
            return number
    else:
        with contextlib.suppress(AttributeError):
            return int(getattr(signal, text if text.startswith("SIG") else "SIG" + text))
    raise LocalQueueError(f"unknown signal {name!r}")


def _parse_signal(value: str) -> tuple[int, int]:
    # Slurm's B: prefix (signal the batch shell only) is accepted; the whole group is
    # signalled either way, because locally the "steps" are the shell's own children.
    text = value.removeprefix("B:").removeprefix("R:")
    name, _, seconds = text.partition("@")
    if seconds and not seconds.isdigit():
        raise LocalQueueError(f"--signal={value}: expected SIG@SECONDS, e.g. USR1@60")
    return signal_number(name), int(seconds) if seconds else 60


def parse_directives(script_text: str) -> list[tuple[str, str]]:
    """``(key, value)`` pairs from the script's ``#JOBSTRAP --key=value`` header.

    Like ``sbatch``, only the first block of comment lines counts: the first line that
    is neither blank nor a comment ends the header.
    """
    pairs: list[tuple[str, str]] = []
    for line in script_text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("#"):
            break
        if not stripped.startswith(PREFIX + " ") and stripped != PREFIX:
            continue
        for word in shlex.split(stripped[len(PREFIX) :], comments=False):
            pairs.append(split_option(word))
    return pairs


def split_option(word: str) -> tuple[str, str]:
    if not word.startswith("--") or "=" not in word:
        raise LocalQueueError(f"directive {word!r}: expected --key=value")
    key, _, value = word[2:].partition("=")
    return key, value
