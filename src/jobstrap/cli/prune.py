"""``jobstrap prune``: forget runs that ended long ago (registry entry and run directory).

Deleting is the one irreversible thing the CLI does, so every run is checked before
anything of it goes:

- it has ended: its batch system was asked (never a live, cancelling or unknown run;
  nor a run of another controller, which cannot be asked from here), and the process
  that made it (a notebook's cluster between scale-ups) is not alive on this host;
- it ended before ``--older-than`` (:func:`jobstrap.cli.runs.ended_at`);
- its run directory is a real directory named after the run, directly in the run root
  its record was made with, owned by the user and private (:func:`check_private`);
  otherwise nothing of the run is removed and one line says why.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Sequence
from pathlib import Path

import click

from jobstrap.cli.runs import RunView, ask, describe, elsewhere, ended_at, recover
from jobstrap.config.units import parse_walltime
from jobstrap.store import registry
from jobstrap.store.registry import RunRecord
from jobstrap.store.rundir import UnsafePathError, check_private, default_run_root

__all__ = ["prune"]


def _age(text: str) -> float:
    """``--older-than``: a duration (``7d``, ``12h``, ``90m``, seconds) or ``0``."""
    if text.strip() == "0":
        return 0.0
    return float(parse_walltime(text, "--older-than"))  # a ConfigError: one line, exit 2


def _owner_alive(run: RunRecord) -> bool:
    """Is the process that saved the run still running here (it may add jobs again)?"""
    if run.owner_host != socket.gethostname() or run.owner_pid <= 0:
        return False  # elsewhere: its jobs are what tells
    if run.owner_pid == os.getpid():
        return False
    try:
        os.kill(run.owner_pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a process of another user took the pid: cannot tell, keep the run
    return True


def _unsafe_dir(run: RunRecord) -> str | None:
    """Why ``run``'s directory must not be deleted, or None when it may be (or is gone)."""
    path = Path(run.run_dir)
    if not os.path.lexists(path):
        return None
    if path.is_symlink() or not path.is_dir():
        return f"{path} is not a plain directory"
    if path.name != run.run_id:
        return f"{path} is not named after the run"
    # The root the run was made in (recorded since runs record the one in effect), and
    # today's: a run made under another $JOBSTRAP_RUN_ROOT is still recognised.
    recorded = (run.profile.get("resolved") or {}).get("run_root")
    roots = {default_run_root()}
    if isinstance(recorded, str) and recorded:
        roots.add(Path(recorded).expanduser())
    parent = Path(os.path.realpath(path.parent))
    if not any(parent == Path(os.path.realpath(root)) for root in roots):
        shown = ", ".join(sorted(str(root) for root in roots))
        return f"{path} is not in the run root ({shown})"
    try:
        check_private(path)
    except UnsafePathError as error:
        return str(error)
    return None


def _remove(run: RunRecord) -> None:
    path = Path(run.run_dir)
    if os.path.lexists(path):
        # rmtree never follows a link inside (it refuses a link at the top, checked above).
        shutil.rmtree(path)
    registry.remove(run.run_id)


def _candidates(records: Sequence[RunRecord], cutoff: float) -> tuple[list[RunView], list[str]]:
    """The views of runs that ended before ``cutoff``; lines saying why others stay."""
    old = [run for run in records if ended_at(run) < cutoff]
    kept: list[str] = []
    old = recover(old)
    away = elsewhere(old)
    for run_id, why in away.items():
        kept.append(f"kept {run_id}: cannot tell whether it ended ({why})")
    asked = [run for run in old if run.run_id not in away]
    found, errors = ask(asked)
    views: list[RunView] = []
    for run in asked:
        view = describe(run, found)
        if view.live:
            kept.append(f"kept {run.run_id}: {view.summary.state} {view.summary.reason}".rstrip())
        elif _owner_alive(run):
            kept.append(f"kept {run.run_id}: the process that made it ({run.owner_pid}) runs")
        else:
            views.append(view)
    return views, [*(f"warning: {e}" for e in errors), *kept]


@click.command()
@click.option(
    "--older-than", "older_than", default="7d", show_default=True, metavar="AGE",
    help="Only runs that ended at least AGE ago (7d, 12h, 90m, 0 for every ended run).",
)  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
def prune(older_than: str, dry_run: bool) -> None:
    """Forget ended runs: remove their registry entries and run directories.

    Never a live run, nor a directory that is not the user's own run directory.
    """
    cutoff = time.time() - _age(older_than)
    views, notes = _candidates(registry.list(), cutoff)
    for line in notes:
        click.echo(line, err=True)
    removed = 0
    verb = "would remove" if dry_run else "removed"
    for view in views:
        run = view.run
        why = _unsafe_dir(run)
        if why is not None:
            click.echo(f"kept {run.run_id}: {why}", err=True)
            continue
        if not dry_run:
            try:
                _remove(run)
            except OSError as error:
                click.echo(f"kept {run.run_id}: cannot remove {error.filename}: {error.strerror}",
                           err=True)  # fmt: skip
                continue
        outcome = view.summary.state
        click.echo(f"{verb} {run.run_id} ({outcome}) {run.run_dir}")
        removed += 1
    click.echo(f"{verb} {removed} run(s) ended more than {older_than} ago")


def register(group: click.Group) -> None:
    group.add_command(prune)
