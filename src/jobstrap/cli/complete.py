"""Shell completion: commands and options (click's own), profile names and run ids.

Enabled per shell with click's recipe (see docs/cli.md)::

    eval "$(_JOBSTRAP_COMPLETE=bash_source jobstrap)"

Completion runs on every Tab press, so it reads only local files (the profile
directories and the run registry), never asks the batch system, and never prints:
a damaged record or an unreadable directory yields fewer candidates, not noise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import click
from click.shell_completion import CompletionItem

__all__ = ["attach_run_ids", "file_names", "profile_names", "run_ids"]

#: Parameter names that take a run id (``RUN`` / ``RUN...``) in every command.
_RUN_PARAMETERS = frozenset({"run_id", "runs"})


def file_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Let the shell complete a file name (for arguments that are not a click.Path)."""
    return [CompletionItem(incomplete, type="file")]


def profile_names(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Shipped and user profile names starting with ``incomplete`` (a path: files)."""
    if os.sep in incomplete or incomplete.startswith("."):
        return [CompletionItem(incomplete, type="file")]  # --profile accepts a YAML file
    from jobstrap.config.profile import available_profiles

    try:
        names = available_profiles()
    except OSError:
        return []
    return [CompletionItem(name) for name in names if name.startswith(incomplete)]


def run_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Saved run ids starting with ``incomplete``, newest first, with their kind."""
    from jobstrap.store import registry

    try:
        records = registry.list(report=lambda line: None)
    except OSError:
        return []
    return [
        CompletionItem(record.run_id, help=f"{record.kind} {record.status}")
        for record in reversed(records)
        if record.run_id.startswith(incomplete)
    ]


def _parameters(group: click.Group) -> Iterator[click.Parameter]:
    for command in group.commands.values():
        if isinstance(command, click.Group):
            yield from _parameters(command)
        else:
            yield from command.params


def attach_run_ids(group: click.Group) -> None:
    """Give every ``RUN`` argument of ``group``'s commands run-id completion.

    One rule for all commands (``status``, ``cancel``, ``logs``, ``result``, ``tunnel``,
    ...) instead of a ``shell_complete=`` in each: a command added later gets it too.
    """
    for param in _parameters(group):
        # click keeps the shell_complete= callback here; set it only where none was given.
        if param.name in _RUN_PARAMETERS and param._custom_shell_complete is None:
            param._custom_shell_complete = run_ids
