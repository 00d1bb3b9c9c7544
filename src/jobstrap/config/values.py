"""What a profile value may be: one parser per kind of setting.

Each parser takes the field's name and the raw value (from YAML, the environment or
a keyword) and returns the typed value, or raises a one-line
:class:`~jobstrap.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterable, Mapping

from jobstrap.config.units import parse_memory, parse_walltime
from jobstrap.errors import ConfigError

_JOB_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Partition, queue (PBS: ``queue@server``), account and QOS names; Slurm takes a
#: comma-separated list of partitions. Never a leading ``-`` (it would read as an option).
_SITE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@:+,-]{0,255}$")
#: Largest whole-number setting: batch systems keep counts in 32-bit integers.
MAX_INTEGER = 2**31 - 1
#: Longest path Linux opens (PATH_MAX, with its terminating NUL).
_PATH_MAX = 4096
#: Largest TCP port.
MAX_PORT = 65535


def _did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    options = list(candidates)
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not close:
        # Same stem, different ending (wallclock -> walltime): a shared 4-letter prefix.
        close = [o for o in options if len(word) >= 4 and o[:4] == word[:4]][:1]
    return f"did you mean {close[0]!r}?" if close else None


# --- value parsers: each takes (field name, raw value) and returns the typed value ---------


def _check_text(name: str, value: object) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ConfigError(name, value, "expected a string")
    text = str(value)
    if "\n" in text or "\r" in text or "\x00" in text:
        # A newline would let a value start a new line in the script: a new directive.
        raise ConfigError(name, value, "must be a single line (newlines would inject lines)")
    return text


def _optional_text(name: str, value: object) -> str | None:
    if value is None or value == "":
        return None
    return _check_text(name, value)


def _text(name: str, value: object) -> str:
    text = _check_text(name, value)
    if not text:
        raise ConfigError(name, value, "must not be empty")
    return text


def _choice(options: tuple[str, ...]) -> Callable[[str, object], str]:
    def parse(name: str, value: object) -> str:
        text = _check_text(name, value).lower()
        if text not in options:
            hint = _did_you_mean(text, options)
            raise ConfigError(name, value, f"must be one of {', '.join(options)}", hint)
        return text

    return parse


def _optional_choice(options: tuple[str, ...]) -> Callable[[str, object], str | None]:
    strict = _choice(options)

    def parse(name: str, value: object) -> str | None:
        return None if value is None or value == "" else strict(name, value)

    return parse


def _integer(minimum: int, maximum: int = MAX_INTEGER) -> Callable[[str, object], int]:
    def parse(name: str, value: object) -> int:
        if isinstance(value, bool):
            raise ConfigError(name, value, "expected a whole number")
        if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]{1,30}\s*", value):
            value = int(value)
        if not isinstance(value, int):
            raise ConfigError(name, value, "expected a whole number")
        if value < minimum:
            raise ConfigError(name, value, f"must be at least {minimum}")
        if value > maximum:
            raise ConfigError(name, value, f"must be at most {maximum}")
        return value

    return parse


def _optional_integer(minimum: int) -> Callable[[str, object], int | None]:
    strict = _integer(minimum)

    def parse(name: str, value: object) -> int | None:
        return None if value is None or value == "" else strict(name, value)

    return parse


def _boolean(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, value, "expected true or false")


def _memory(name: str, value: object) -> int | None:
    return None if value is None or value == "" else parse_memory(value, name)


def _walltime(name: str, value: object) -> int:
    return parse_walltime(value, name)


def _optional_walltime(name: str, value: object) -> int | None:
    return None if value is None or value == "" else parse_walltime(value, name)


def _lines(name: str, value: object) -> tuple[str, ...]:
    """A list of script lines; a single string is split into its lines."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(line for line in value.splitlines() if line.strip())
    if isinstance(value, list | tuple):
        return tuple(_check_text(f"{name}[{i}]", item) for i, item in enumerate(value))
    raise ConfigError(name, value, "expected a list of lines (or one string)")


def _words(name: str, value: object) -> tuple[str, ...]:
    """A list of words; a string is split on commas (``"ib0,eth0"``)."""
    if value is None:
        return ()
    if isinstance(value, str):
        items: Iterable[object] = [w.strip() for w in value.split(",") if w.strip()]
    elif isinstance(value, list | tuple):
        items = value
    else:
        raise ConfigError(name, value, "expected a list (or a comma-separated string)")
    return tuple(_text(f"{name}[{i}]", item) for i, item in enumerate(items))


def _interfaces(name: str, value: object) -> tuple[str, ...]:
    words = _words(name, value)
    if not words:
        # Empty is more likely a variable that expanded to nothing than a wish for auto.
        raise ConfigError(name, value, "must name interfaces (ib0,eth0) or auto, not be empty")
    return words


def _site_name(name: str, value: object) -> str | None:
    """A queue, account or QOS: it goes as it is into a ``#SBATCH``/``#PBS`` line."""
    text = _optional_text(name, value)
    if text is not None and not _SITE_NAME_RE.match(text):
        raise ConfigError(
            name,
            value,
            "use letters, digits and _ . @ : + - , (a name as the batch system knows it);"
            " spaces and shell characters would add options to the job script",
        )
    return text


def _job_name(name: str, value: object) -> str:
    text = _text(name, value)
    if not _JOB_NAME_RE.match(text):
        raise ConfigError(
            name,
            value,
            "use letters, digits and _ . + - (at most 64, starting with a letter or digit);"
            " shell metacharacters are not allowed",
        )
    return text


def _environment(name: str, value: object) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        pairs: list[tuple[object, object]] = []
        for item in filter(None, (part.strip() for part in value.split(","))):
            var, sep, text = item.partition("=")
            if not sep:
                raise ConfigError(name, value, "expected KEY=VALUE[,KEY=VALUE...]")
            pairs.append((var, text))
    elif isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, list | tuple) and all(
        isinstance(p, list | tuple) and len(p) == 2 for p in value
    ):
        pairs = [(p[0], p[1]) for p in value]
    else:
        raise ConfigError(name, value, "expected a mapping of variable names to values")
    result = []
    for key, val in pairs:
        if not isinstance(key, str) or not _ENV_NAME_RE.match(key):
            raise ConfigError(name, key, "environment variable names are letters, digits and _")
        result.append((key, _check_text(f"{name}.{key}", "" if val is None else val)))
    return tuple(result)


def _path(name: str, value: object) -> str | None:
    text = _optional_text(name, value)
    if text is not None and len(text) >= _PATH_MAX:
        raise ConfigError(name, f"{text[:40]}...", f"longer than a path can be ({_PATH_MAX})")
    return None if text is None else os.path.expanduser(text)
