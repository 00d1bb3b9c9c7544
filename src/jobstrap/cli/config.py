"""``jobstrap config``: show a resolved profile with sources, check profile files."""

from __future__ import annotations

from pathlib import Path

import click
import yaml

from jobstrap.cli.options import profile_options, resolve
from jobstrap.config.profile import _build, _normalise, available_profiles, read_profile_file


@click.group()
def config() -> None:
    """Inspect and check site profiles."""


@config.command()
@profile_options
@click.option("--resolved", is_flag=True, help="Every setting, with where its value came from.")
def show(resolved: bool, **options: object) -> None:
    """Print the merged profile (as YAML, or a table of values and sources)."""
    profile = resolve(**options)  # type: ignore[arg-type]
    values = profile.to_dict()
    if not resolved:
        changed = {k: v for k, v in values.items() if profile.sources.get(k) != "default"}
        click.echo(yaml.safe_dump(changed, sort_keys=False), nl=False)
        return
    width = max(len(k) for k in values)
    for key, value in values.items():
        shown = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
        shown = shown.removesuffix("\n...").removesuffix(" ...")
        click.echo(f"{key:<{width}}  {shown:<40}  # {profile.sources.get(key, 'default')}")


@config.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def check(files: tuple[str, ...]) -> None:
    """Validate profile FILES on their own (unknown keys, bad values); exit 2 on error."""
    for name in files:
        data = read_profile_file(Path(name))
        data.pop("extends", None)
        data.pop("description", None)
        source = str(name)
        _build(_normalise(data, source), dict.fromkeys(data, source))
        click.echo(f"{name}: ok")


@config.command(name="list")
def list_profiles() -> None:
    """List the shipped and user profiles."""
    for name in available_profiles():
        click.echo(name)


def register(group: click.Group) -> None:
    group.add_command(config)
