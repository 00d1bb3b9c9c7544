"""The ``jobstrap`` command line (click).

Each command group lives in its own module and registers itself in :data:`COMMANDS`.
A user error (:class:`~jobstrap.errors.UserError`) prints one line and exits 2, with
no traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from importlib import import_module
from typing import Any

import click

from jobstrap._version import __version__
from jobstrap.cli.complete import attach_run_ids
from jobstrap.errors import UserError

#: Modules that each define ``register(group)``.
COMMANDS = (
    "jobstrap.cli.render",
    "jobstrap.cli.config",
    "jobstrap.cli.tunnel",
    "jobstrap.cli.doctor",
    "jobstrap.cli.run",
    "jobstrap.cli.jobs",
    "jobstrap.cli.prune",
    "jobstrap.cli.submit",
    "jobstrap.cli.metrics",
)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as error:
            click.echo(f"error: {error}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="jobstrap")
def cli() -> None:
    """Dask on HPC batch systems: Slurm, PBS and local process groups."""


def _register() -> None:
    for module in COMMANDS:
        import_module(module).register(cli)
    # Tab completes run ids wherever a command takes a RUN (see jobstrap.cli.complete).
    attach_run_ids(cli)


_register()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="jobstrap")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
