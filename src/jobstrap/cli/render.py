"""``jobstrap render``: print the job script a profile produces, submitting nothing."""

from __future__ import annotations

import os

import click

from jobstrap.batch.submit import batch_profile
from jobstrap.cli.options import engine_option, profile_options, resolve
from jobstrap.jobs.render import render_script
from jobstrap.jobs.spec import app_job, new_tag, scheduler_job, worker_job
from jobstrap.systems import get_system


@click.command(context_settings={"allow_interspersed_args": False})  # APP's options are its own
@profile_options
@engine_option
@click.option(
    "--role",
    type=click.Choice(["workers", "app", "scheduler"]),
    default="workers",
    show_default=True,
    help="What the job runs.",
)
@click.argument("app", nargs=-1, type=click.UNPROCESSED)
def render(role: str, app: tuple[str, ...], **options: object) -> None:
    """Print the job script for a profile (APP and its arguments with --role app)."""
    profile = resolve(**options)  # type: ignore[arg-type]
    run_dir = os.path.join(os.path.expanduser(profile.run_root), "RUN_ID")
    tag = new_tag()
    if role == "app":
        if not app:
            raise click.UsageError("--role app needs the application: render --role app app.py")
        # What `jobstrap submit` would send: batch mode's ranks, the app after "--".
        spec = app_job(batch_profile(profile), run_dir, tag, list(app))
    elif role == "scheduler":
        spec = scheduler_job(profile, run_dir, tag)
    else:
        spec = worker_job(profile, run_dir, tag, scheduler_address="SCHEDULER_ADDRESS")
    click.echo(render_script(spec, get_system(profile.system), template=profile.template), nl=False)


def register(group: click.Group) -> None:
    group.add_command(render)
