"""``jobstrap status``, ``cancel`` and ``logs``: saved runs, found through the registry."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import click

from jobstrap.batchctl.control import BatchControl
from jobstrap.cli.logmerge import print_all
from jobstrap.errors import BatchCommandError, UserError
from jobstrap.states import JobState
from jobstrap.store import registry
from jobstrap.store.files import read_tail
from jobstrap.store.registry import JobKey, RunRecord
from jobstrap.systems import JobRecord

_COLUMNS = ("RUN", "KIND", "JOB", "STATE", "NODES", "REASON", "ELAPSED", "LEFT")


def _elsewhere(runs: Sequence[RunRecord]) -> dict[str, str]:
    """Runs whose jobs were numbered by another controller than the one here.

    Returns run id -> why they are not asked about. Their ids mean other jobs (or
    nothing) on this controller: asking, and worse cancelling, would hit the wrong job.
    A record without a controller (older versions) or a controller that cannot say
    its name is asked, as before; the tag check then tells its jobs from others.
    """
    away: dict[str, str] = {}
    for run in runs:
        if not run.controller:
            continue
        here = BatchControl.for_system(run.system).controller()
        if here and here != run.controller:
            away[run.run_id] = f"submitted to {run.system} {run.controller}, this is {here}"
    return away


def _ask(runs: Sequence[RunRecord]) -> tuple[dict[JobKey, JobRecord], list[str]]:
    """Every job of ``runs``: one status query per batch system. Returns records, errors.

    Records are keyed by :class:`JobKey`, never by the id alone: a local run and a
    Slurm run (or two Slurm runs either side of a controller restart) may both have
    job ``5``, and each must get its own system's answer.
    """
    by_system: dict[str, list[RunRecord]] = defaultdict(list)
    for run in runs:
        by_system[run.system].append(run)
    found: dict[JobKey, JobRecord] = {}
    errors: list[str] = []
    for system, group in by_system.items():
        ids = [job_id for run in group for job_id in run.job_ids]
        try:
            answer = BatchControl.for_system(system).status(ids)
        except BatchCommandError as error:
            errors.append(f"cannot ask {system}: {error}")
            for run in group:
                for key in run.job_keys():
                    found[key] = JobRecord(key.job_id, JobState.UNKNOWN, reason="no answer")
            continue
        for run in group:
            found.update((k, answer[k.job_id]) for k in run.job_keys() if k.job_id in answer)
    return found, errors


def _recover(runs: Sequence[RunRecord]) -> list[RunRecord]:
    """Find the jobs of runs whose submitter died before it could save their ids.

    Such a run is saved as ``submitting`` with its tag; the job name is
    ``<job_name>-<tag>``, so the batch system can say which jobs are the run's.
    """
    recovered: list[RunRecord] = []
    for run in runs:
        job_name = (run.profile.get("resolved") or {}).get("job_name")
        if run.status != "submitting" or run.job_ids or not run.tags or not job_name:
            recovered.append(run)
            continue
        batchctl = BatchControl.for_system(run.system)
        ids: list[str] = []
        try:
            for tag in run.tags:
                argv = batchctl.system.find_by_name_argv(f"{job_name}-{tag}")
                ids += batchctl.system.parse_find_by_name(batchctl.run(argv).stdout)
        except BatchCommandError:
            recovered.append(run)  # cannot tell now; the next status asks again
            continue
        if ids:
            run = registry.update(run.run_id, job_ids=ids, status="submitted")
        recovered.append(run)
    return recovered


def _is_ours(run: RunRecord, record: JobRecord) -> bool:
    """Does the batch system's job behind this id still carry the run's tag?"""
    return not record.name or any(record.name.endswith(tag) for tag in run.tags)


def _row(
    run: RunRecord, job_id: str, record: JobRecord | None, away: str | None = None
) -> tuple[str, ...]:
    if away is not None:
        state, nodes, reason, elapsed, left = "UNKNOWN", "", away, "", ""
    elif record is None or not _is_ours(run, record):
        # Gone from the controller and its history (or the id now serves another job).
        state, nodes, reason, elapsed, left = "MISSING", "", "not known to the batch system", "", ""
    else:
        state, nodes, reason, elapsed, left = (
            record.state.value, record.nodes, record.reason, record.elapsed, record.time_left
        )  # fmt: skip
        if record.exit_code and record.state.is_terminal:
            reason = f"{reason} exit {record.exit_code}".strip()
    return (run.run_id, run.kind, job_id, state, nodes, reason, elapsed, left)


def _table(rows: Iterable[tuple[str, ...]]) -> str:
    rows = [_COLUMNS, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


@click.command()
@click.argument("runs", nargs=-1)
def status(runs: tuple[str, ...]) -> None:
    """Show the jobs of RUNS (default: every saved run): state, nodes, reason, times."""
    records = [registry.load(r) for r in runs] if runs else registry.list()
    if not records:
        click.echo(f"no runs saved in {registry.registry_dir()}")
        return
    records = _recover(records)
    away = _elsewhere(records)
    found, errors = _ask([run for run in records if run.run_id not in away])
    for message in errors:
        click.echo(f"warning: {message}", err=True)
    rows = [
        _row(run, key.job_id, found.get(key), away.get(run.run_id))
        for run in records
        for key in run.job_keys()
    ]
    click.echo(_table(rows))
    for run in records:
        if run.status == "submitted" and run.job_ids and not errors and run.run_id not in away:
            states = [found.get(key) for key in run.job_keys()]
            if all(r is None or r.state.is_terminal for r in states):
                registry.update(run.run_id, status="finished")


@click.command()
@click.argument("runs", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Cancel every saved run that is not over.")
def cancel(runs: tuple[str, ...], everything: bool) -> None:
    """Cancel every job of RUNS (or of all runs with --all), from any process."""
    if everything == bool(runs):
        raise click.UsageError("name the runs to cancel, or pass --all (not both)")
    if everything:
        records = [r for r in registry.list() if r.status in ("submitted", "submitting")]
    else:
        records = [registry.load(r) for r in runs]
    records = _recover(records)
    if not records:
        click.echo("nothing to cancel")
        return
    away = _elsewhere(records)
    for run_id, why in away.items():
        click.echo(f"{run_id}: not cancelled: {why}", err=True)
    records = [run for run in records if run.run_id not in away]
    found, errors = _ask(records)
    if errors:
        raise UserError("; ".join(errors))
    for run in records:
        # Only ids that still carry the run's tag: after a controller restart an old id
        # may belong to somebody else's job, which must never be cancelled.
        live = [
            key.job_id
            for key in run.job_keys()
            if (rec := found.get(key)) is not None
            and _is_ours(run, rec)
            and not rec.state.is_terminal
        ]
        if live:
            BatchControl.for_system(run.system).cancel(live)
        registry.update(
            run.run_id, status="cancelled", extra={**run.extra, "cancelled": time.time()}
        )
        click.echo(f"{run.run_id}: cancelled {len(live)} job(s)")


def _job_of(run: RunRecord, task: int) -> str:
    if not run.job_ids:
        raise UserError(f"run {run.run_id} has no jobs (its submission failed)")
    if not 0 <= task < len(run.job_ids):
        raise UserError(f"--task {task}: run {run.run_id} has tasks 0-{len(run.job_ids) - 1}")
    return run.job_ids[task]


def _job_over(run: RunRecord, job_id: str, interval: float) -> bool:
    # The watcher backs off while the job runs quietly and never calls more than needed.
    watcher = BatchControl.for_system(run.system).watcher
    if job_id not in watcher.tracked():
        # Someone is reading along: never let the backoff hide the job's end for long.
        watcher.configure(poll_interval=interval, max_interval=max(interval, 10.0))
        watcher.track([job_id], started_by_us=False)
    return watcher.state(job_id).is_terminal


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option("--task", type=int, default=0, show_default=True, help="Which job or array task.")
@click.option("--tail", "tail", type=int, default=-1, metavar="K", help="Only the last K lines.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
@click.option("--err", is_flag=True, help="Standard error instead of standard output.")
@click.option("--interval", type=float, default=2.0, hidden=True)
@click.option("--all", "every", is_flag=True, help="Every job's output and errors, in time order.")
@click.option("--grep", metavar="REGEX", help="With --all: only lines matching REGEX.")
@click.option("--since", metavar="T", help="With --all: lines since T (10m, 2h, 2026-01-02 03:04).")
def logs(
    run_id: str,
    task: int,
    tail: int,
    follow: bool,
    err: bool,
    interval: float,
    every: bool,
    grep: str | None,
    since: str | None,
) -> None:
    """Print a job's output (or --err) from the run directory."""
    run = registry.load(run_id)
    if every:
        return print_all(run, grep=grep, since=since)  # jobstrap.cli.logmerge
    job_id = _job_of(run, task)
    out_path, err_path = run.log_paths(job_id)
    path = Path(err_path if err else out_path)
    offset = 0
    if path.exists():
        offset = path.stat().st_size
        # --tail -1 is the whole file; limit=offset reads from the start, so that the
        # last K lines come out whole however long they are.
        text = read_tail(path, None if tail < 0 else tail, limit=offset)
        if text is None:
            raise UserError(f"cannot read {path}")
        click.echo(text, nl=False)
    elif not follow:
        raise UserError(f"no log yet at {path} (is job {job_id} still pending?)")
    while follow:
        if path.exists() and os.path.getsize(path) > offset:
            with open(path, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            offset += len(chunk)
            click.echo(chunk.decode(errors="replace"), nl=False)
            continue
        if _job_over(run, job_id, interval):
            # One last look: the job may have written its final lines just before ending.
            if path.exists() and os.path.getsize(path) > offset:
                continue
            break
        time.sleep(interval)


def register(group: click.Group) -> None:
    group.add_command(status)
    group.add_command(cancel)
    group.add_command(logs)
