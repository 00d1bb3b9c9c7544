"""Batch systems: one module of pure builders and parsers each.

A new batch system is a module with a ``SYSTEM`` object implementing
:class:`~jobstrap.systems.base.BatchSystem` plus a template, registered under the
``jobstrap.systems`` entry-point group; nothing else changes.
"""

from __future__ import annotations

from functools import cache
from importlib import import_module
from importlib.metadata import entry_points
from typing import cast

from jobstrap.errors import ConfigError
from jobstrap.systems.base import BatchSystem, JobRecord

__all__ = ["BatchSystem", "JobRecord", "available", "get_system"]

_BUILTIN = {"local": "jobstrap.systems.local", "slurm": "jobstrap.systems.slurm",
            "pbs": "jobstrap.systems.pbs"}  # fmt: skip


@cache
def _plugins() -> dict[str, str]:
    found = dict(_BUILTIN)
    plugins = sorted(entry_points(group="jobstrap.systems"), key=lambda entry: entry.name)
    for entry in plugins:
        found.setdefault(entry.name, entry.value.split(":")[0])
    return found


def available() -> list[str]:
    """Names of every batch system known: the built-in ones, then plugins by name."""
    return list(_plugins())


def get_system(name: str) -> BatchSystem:
    """The builders/parsers object of batch system ``name``."""
    try:
        module = _plugins()[name]
    except KeyError:
        raise ConfigError("system", name, f"must be one of {', '.join(available())}") from None
    return cast(BatchSystem, import_module(module).SYSTEM)
