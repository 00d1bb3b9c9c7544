"""Options shared by the commands that resolve a profile (render, submit, run, doctor)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from jobstrap.cli.complete import profile_names
from jobstrap.config.choices import ENGINES
from jobstrap.config.profile import Profile, load_profile, parse_assignments

F = TypeVar("F", bound=Callable[..., Any])


def profile_options(function: F) -> F:
    """Add ``--profile``, ``--set``, ``--system``, ``--nodes``, ``--ntasks-per-node``."""
    decorators = [
        click.option("--profile", "-p", "profile_name", metavar="P", shell_complete=profile_names,
                     help=("Site profile name or YAML file "
                           "(default: $JOBSTRAP_PROFILE, else default).")),
        click.option("--set", "-s", "assignments", multiple=True, metavar="KEY=VALUE",
                     help="Override one setting (repeatable), e.g. --set walltime=2h."),
        click.option("--system", type=click.Choice(["slurm", "pbs", "local"]),
                     help="Batch system (overrides the profile)."),
        click.option("--nodes", type=int, help="Nodes per job."),
        click.option("--ntasks-per-node", "tasks_per_node", type=int,
                     help="Ranks per node (batch mode)."),
    ]  # fmt: skip
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


def engine_option(function: F) -> F:
    """Add ``--engine`` (the profile's ``engine``) to a command that renders an app job."""
    return click.option(
        "--engine",
        type=click.Choice(ENGINES),
        help="What the job runs: dask (default) or ray (the profile's engine setting).",
    )(function)


def resolve(
    profile_name: str | None,
    assignments: tuple[str, ...],
    system: str | None,
    nodes: int | None,
    tasks_per_node: int | None,
    **extra: object,
) -> Profile:
    """The profile from the shared options (flags win over ``--set``)."""
    overrides = parse_assignments(assignments)
    flags = {"system": system, "nodes": nodes, "tasks_per_node": tasks_per_node, **extra}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    return load_profile(profile_name, overrides)
