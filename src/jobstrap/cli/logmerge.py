"""``jobstrap logs RUN --all``: every job's output and errors, merged in time order."""

from __future__ import annotations

import os
import re
import time

import click

from jobstrap.errors import UserError
from jobstrap.store.logmerge import log_files, merge_logs, parse_since
from jobstrap.store.registry import RunRecord

__all__ = ["print_all"]


def print_all(run: RunRecord, *, grep: str | None, since: str | None) -> None:
    """Print the lines of every log of ``run``, each tagged with its job and stream."""
    try:
        start = parse_since(since, now=time.time()) if since else None
    except ValueError as error:
        raise UserError(f"--since: {error}") from None
    paths = [(job_id, *run.log_paths(job_id)) for job_id in run.job_ids]
    files = log_files(paths, os.path.join(run.run_dir, "logs"))
    if not files:
        raise UserError(f"no logs yet for run {run.run_id} (are its jobs still pending?)")
    try:
        lines = merge_logs(files, grep=grep, since=start)
    except re.error as error:
        raise UserError(f"--grep: not a regular expression ({error})") from None
    for line in lines:
        click.echo(str(line))
