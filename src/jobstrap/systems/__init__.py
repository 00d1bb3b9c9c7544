"""Batch systems: one module of pure builders and parsers each.

A new batch system is a module with a ``SYSTEM`` object implementing
:class:`~jobstrap.systems.base.BatchSystem` plus a template, registered under the
``jobstrap.systems`` entry-point group; nothing else changes.
"""

from __future__ import annotations

from importlib import import_module
from typing import cast

from jobstrap.config.plugins import available_systems, system_module
from jobstrap.errors import ConfigError
from jobstrap.systems.base import BatchSystem, JobRecord

__all__ = ["BatchSystem", "JobRecord", "available", "get_system"]


def available() -> list[str]:
    """Names of every batch system known: the built-in ones, then plugins by name."""
    return available_systems()


def get_system(name: str) -> BatchSystem:
    """The builders/parsers object of batch system ``name``."""
    module = system_module(name)
    if module is None:
        raise ConfigError("system", name, f"must be one of {', '.join(available())}")
    return cast(BatchSystem, import_module(module).SYSTEM)
