"""Which batch systems are registered: names and the modules that implement them.

The registry (built-in systems and the ``jobstrap.systems`` entry-point group) is
kept apart from the systems themselves so that the profile can validate a system's
name without importing any system, which are built on the job model above it.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

__all__ = ["available_systems", "system_module"]

_BUILTIN = {"local": "jobstrap.systems.local", "slurm": "jobstrap.systems.slurm",
            "pbs": "jobstrap.systems.pbs"}  # fmt: skip


@cache
def _systems() -> dict[str, str]:
    found = dict(_BUILTIN)
    plugins = sorted(entry_points(group="jobstrap.systems"), key=lambda entry: entry.name)
    for entry in plugins:
        found.setdefault(entry.name, entry.value.split(":")[0])
    return found


def available_systems() -> list[str]:
    """Names of every batch system known: the built-in ones, then plugins by name."""
    return list(_systems())


def system_module(name: str) -> str | None:
    """The module implementing batch system ``name``, or None if none is registered."""
    return _systems().get(name)
