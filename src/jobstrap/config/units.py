"""Memory and walltime: parse what people write, render what batch systems read.

Memory
    ``4GB`` is 4 * 10**9 bytes and ``4GiB`` is 4 * 2**30: SI and IEC units stay
    distinct. A bare letter (``4G``, ``4000M``) follows Slurm's convention and is
    binary (``4G`` == ``4GiB``). A plain number is bytes. Suffixes are
    case-insensitive. Rendering for a batch system rounds *up* to the system's
    unit, never below what was asked.

Walltime
    ``HH:MM:SS``, ``D-HH:MM:SS`` (also ``D-HH`` and ``D-HH:MM``), ``MM:SS``,
    unit strings such as ``90m``, ``1h30m``, ``2d``, ``45s``, and plain seconds
    (an integer, or a string of digits). Rendered for Slurm as ``D-HH:MM:SS`` and
    for PBS as ``HH:MM:SS`` (hours may exceed 24).
"""

from __future__ import annotations

import math
import re

from jobstrap.errors import ConfigError

KiB = 2**10
MiB = 2**20
GiB = 2**30
TiB = 2**40

_MEMORY_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "pb": 10**15,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "tib": TiB,
    "pib": 2**50,
    # Slurm's single letters are binary: --mem=4G is 4 GiB.
    "k": KiB,
    "m": MiB,
    "g": GiB,
    "t": TiB,
    "p": 2**50,
}

_MEMORY_RE = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)?|\.\d+)\s*(?P<unit>[a-zA-Z]*)\s*$", re.ASCII)

#: Largest memory setting, 1 EiB: far beyond any node, and a typo if asked for.
MAX_MEMORY = 2**60
#: Largest walltime (and other duration) setting: 10 years, beyond any site's limit.
MAX_WALLTIME = 3650 * 86400


def parse_memory(value: object, field: str = "memory") -> int:
    """Parse a memory size into bytes.

    Parameters
    ----------
    value
        ``"4GB"``, ``"4GiB"``, ``"4000M"``, ``"512MiB"``, ``"1.5 GiB"`` or an int (bytes).
    field
        The setting's name, used in the error message.

    Returns
    -------
    int
        The size in bytes, rounded up to a whole byte; always positive.

    Raises
    ------
    ConfigError
        Unknown unit, negative, zero, infinite, over :data:`MAX_MEMORY`, or not a size.
    """
    if isinstance(value, bool):
        raise ConfigError(field, value, "expected a size such as '4GiB' or '4000MB'")
    if isinstance(value, int):
        number: float = value
        unit = ""
    elif isinstance(value, float):
        number = value
        unit = ""
    elif isinstance(value, str):
        if value.strip().startswith("-"):
            raise ConfigError(field, value, "must be positive")
        match = _MEMORY_RE.match(value)
        if not match:
            raise ConfigError(field, value, "expected a size such as '4GiB', '4GB' or '4000M'")
        number = float(match["number"])
        unit = match["unit"].lower()
        if unit not in _MEMORY_UNITS:
            allowed = "B, KB, MB, GB, TB, KiB, MiB, GiB, TiB, K, M, G, T"
            raise ConfigError(field, value, f"unknown unit {match['unit']!r} (use {allowed})")
    else:
        raise ConfigError(field, value, "expected a size such as '4GiB' or '4000MB'")
    if isinstance(number, float) and not math.isfinite(number):
        raise ConfigError(field, value, "must be a finite size")  # YAML's .inf and .nan
    if number * _MEMORY_UNITS[unit] > MAX_MEMORY:
        raise ConfigError(field, value, "must be at most 1 EiB")
    if number < 0:
        raise ConfigError(field, value, "must be positive")
    nbytes = math.ceil(number * _MEMORY_UNITS[unit])
    if nbytes <= 0:
        raise ConfigError(field, value, "must be more than zero")
    return nbytes


def format_memory(nbytes: int) -> str:
    """Render bytes exactly, in the largest unit that divides them.

    ``parse_memory(format_memory(x)) == x`` for every positive ``x``.
    """
    if nbytes <= 0:
        raise ValueError(f"memory must be positive, got {nbytes}")
    for unit, size in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if nbytes % size == 0:
            return f"{nbytes // size}{unit}"
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if nbytes % size == 0:
            return f"{nbytes // size}{unit}"
    return f"{nbytes}B"


def format_memory_slurm(nbytes: int) -> str:
    """Render bytes for ``sbatch --mem``: whole GiB as ``NG``, else MiB rounded up as ``NM``."""
    if nbytes % GiB == 0:
        return f"{nbytes // GiB}G"
    return f"{math.ceil(nbytes / MiB)}M"


def format_memory_pbs(nbytes: int) -> str:
    """Render bytes for PBS ``mem=`` (PBS units are binary: ``1kb`` is 1024 bytes)."""
    if nbytes % GiB == 0:
        return f"{nbytes // GiB}gb"
    if nbytes % MiB == 0:
        return f"{nbytes // MiB}mb"
    return f"{math.ceil(nbytes / KiB)}kb"


_WALLTIME_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_UNIT_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m(?:in)?)?(?:(\d+)s)?$", re.ASCII)


def _digits(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also takes ``²``, which ``int`` refuses."""
    return text.isascii() and text.isdigit()


def parse_walltime(value: object, field: str = "walltime") -> int:
    """Parse a walltime into seconds.

    Parameters
    ----------
    value
        ``"01:30:00"``, ``"1-12:00:00"``, ``"30:00"`` (MM:SS), ``"90m"``, ``"1h30m"``,
        ``"2d"``, ``"45s"``, or seconds as an int or a string of digits.
    field
        The setting's name, used in the error message.

    Returns
    -------
    int
        Seconds, always positive.

    Raises
    ------
    ConfigError
        Malformed, out-of-range fields (minutes over 59, ...), negative, zero or
        over :data:`MAX_WALLTIME`.
    """
    if isinstance(value, bool):
        raise ConfigError(field, value, "expected a walltime such as '01:30:00' or '90m'")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str):
        seconds = _parse_walltime_text(value.strip(), value, field)
    else:
        raise ConfigError(field, value, "expected a walltime such as '01:30:00' or '90m'")
    if seconds < 0:
        raise ConfigError(field, value, "must be positive")
    if seconds == 0:
        raise ConfigError(field, value, "must be more than zero")
    if seconds > MAX_WALLTIME:
        raise ConfigError(field, value, "must be at most 3650 days (10 years)")
    return seconds


def _parse_walltime_text(text: str, original: object, field: str) -> int:
    if text.startswith("-"):
        raise ConfigError(field, original, "must be positive")
    if len(text) > 64:  # also keeps int() away from its digit limit
        raise ConfigError(field, original, "too long for a walltime")
    if _digits(text):
        return int(text)
    lowered = text.lower().replace(" ", "")
    match = _UNIT_RE.match(lowered)
    if lowered and match and any(match.groups()):
        return sum(
            int(part) * _WALLTIME_UNITS[unit]
            for part, unit in zip(match.groups(), "dhms", strict=True)
            if part
        )
    days = 0
    clock = text
    if "-" in text:
        day_text, clock = text.split("-", 1)
        if not _digits(day_text):
            raise ConfigError(field, original, "expected D-HH:MM:SS with a whole number of days")
        days = int(day_text)
    parts = clock.split(":")
    if not all(_digits(p) for p in parts) or not 1 <= len(parts) <= 3:
        raise ConfigError(
            field, original, "expected HH:MM:SS, D-HH:MM:SS, MM:SS, or units like '90m', '1h30m'"
        )
    numbers = [int(p) for p in parts]
    if "-" in text:
        # Slurm: D-HH, D-HH:MM, D-HH:MM:SS.
        hours, minutes, seconds = [*numbers, 0, 0][:3]
        if hours > 23:
            raise ConfigError(field, original, "hours must be 0-23 after a day count")
    elif len(numbers) == 3:
        hours, minutes, seconds = numbers
    elif len(numbers) == 2:
        hours, (minutes, seconds) = 0, numbers
    else:  # pragma: no cover - digits-only handled above
        hours, minutes, seconds = 0, 0, numbers[0]
    if minutes > 59:
        raise ConfigError(field, original, "minutes must be 0-59")
    if seconds > 59:
        raise ConfigError(field, original, "seconds must be 0-59")
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def format_walltime_slurm(seconds: int) -> str:
    """Render seconds as Slurm's ``D-HH:MM:SS``."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"


def format_walltime_pbs(seconds: int) -> str:
    """Render seconds as PBS ``HH:MM:SS`` (hours are not capped at 24)."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


def format_duration(seconds: float) -> str:
    """Human-readable duration for tables: ``1h02m``, ``4m05s``, ``12s``."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
