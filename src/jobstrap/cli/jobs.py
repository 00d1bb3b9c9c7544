"""``jobstrap status``, ``cancel`` and ``logs``: saved runs, found through the registry.

What a run is (live, cancelling, how it ended) is decided in :mod:`jobstrap.cli.runs`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import click

from jobstrap.batchctl.control import BatchControl
from jobstrap.cli.logmerge import print_all
from jobstrap.cli.runs import RunView, View, ask, describe, elsewhere, ended_at, is_ours, recover
from jobstrap.errors import UserError
from jobstrap.states import JobState
from jobstrap.store import registry
from jobstrap.store.files import read_tail
from jobstrap.store.registry import RunRecord

_COLUMNS = ("RUN", "KIND", "JOB", "STATE", "NODES", "REASON", "ELAPSED", "LEFT")
#: How long an ended run stays in the default listing (seconds).
RECENT = 24 * 3600.0


def _kind(run: RunRecord) -> str:
    """The run's kind, with its engine when that is not Dask (``app/ray``)."""
    resolved = run.profile.get("resolved") if isinstance(run.profile, dict) else None
    engine = resolved.get("engine") if isinstance(resolved, dict) else None
    return f"{run.kind}/{engine}" if isinstance(engine, str) and engine != "dask" else run.kind


def _row(run: RunRecord, job: str, view: View) -> tuple[str, ...]:
    return (
        run.run_id,
        _kind(run),
        job,
        view.state,
        view.nodes,
        view.reason,
        view.elapsed,
        view.left,
    )


def _jobs_cell(job_ids: Sequence[str]) -> str:
    if not job_ids:
        return "-"
    return job_ids[0] if len(job_ids) == 1 else f"{job_ids[0]} (+{len(job_ids) - 1})"


def _table(rows: Iterable[tuple[str, ...]]) -> str:
    rows = [_COLUMNS, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _unsettled(run: RunRecord) -> bool:
    """True when the registry cannot say the run is over: it must be asked about."""
    return run.status in ("submitting", "submitted")


@click.command()
@click.argument("runs", nargs=-1)
@click.option(
    "--all", "everything", is_flag=True, help="Every saved run, however long ago it ended."
)
def status(runs: tuple[str, ...], everything: bool) -> None:
    """One line per run: live runs and those that ended in the last 24 hours (--all:
    every saved run). Named RUNS show each of their jobs: state, nodes, reason, times."""
    records = [registry.load(r) for r in runs] if runs else registry.list()
    if not records:
        click.echo(f"no runs saved in {registry.registry_dir()}")
        return
    records = recover(records)
    since = time.time() - RECENT
    windowed = not runs and not everything
    if windowed:
        # A run the registry knows is over and that ended before the window needs no
        # question to the batch system: a day of history costs nothing.
        records = [r for r in records if _unsettled(r) or ended_at(r) >= since]
    away = elsewhere(records)
    found, errors = ask([run for run in records if run.run_id not in away])
    for message in errors:
        click.echo(f"warning: {message}", err=True)
    views = [describe(run, found, away.get(run.run_id)) for run in records]
    _settle(views, errors, away)
    if windowed:
        views = [v for v in views if v.live or ended_at(v.run) >= since]
        if not views:
            click.echo("no live runs, none ended in the last 24 hours (jobstrap status --all)")
            return
    if runs:
        rows = [_row(v.run, job_id, view) for v in views for job_id, view in v.jobs]
    else:
        rows = [_row(v.run, _jobs_cell(v.run.job_ids), v.summary) for v in views]
    click.echo(_table(rows))


def _settle(views: Sequence[RunView], errors: Sequence[str], away: Mapping[str, str]) -> None:
    """Mark runs whose jobs have all ended ``finished``, so the next status skips them."""
    for view in views:
        run = view.run
        asked = run.job_ids and not errors and run.run_id not in away
        if run.status == "submitted" and asked and not view.live:
            registry.update(run.run_id, status="finished")


def _wait_released(run: RunRecord, job_ids: Sequence[str], deadline: float | None) -> bool:
    """Wait until the batch system has let go of every one of ``job_ids``; say so.

    A cancelled job may linger (Slurm's COMPLETING while its nodes clean up, a local
    job's processes between SIGTERM and exit); its terminal state is the first one
    after it. Returns False, having said which jobs remain, if ``deadline`` came first.
    """
    watcher = BatchControl.for_system(run.system).watcher
    # Released is what is waited for, not the exit code: no holding an ended job back
    # until the accounting has it (this process's watcher serves only this command).
    watcher.configure(poll_interval=2.0, max_interval=10.0, exit_code_grace=0)
    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        records = watcher.wait(job_ids, timeout=remaining)
    except TimeoutError:
        left = [j for j in job_ids if not watcher.state(j).is_terminal]
        click.echo(
            f"error: {run.run_id}: still in the batch system after --timeout: "
            + ", ".join(f"{j} {JobState.CANCELLING}" for j in left),
            err=True,
        )
        return False
    final = ", ".join(f"{j} {records[j].state}" for j in job_ids)
    click.echo(f"{run.run_id}: released by the batch system ({final})")
    return True


@click.command()
@click.argument("runs", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Cancel every saved run that is not over.")
@click.option(
    "--wait", "wait", is_flag=True, help="Return only once the batch system released every job."
)
@click.option(
    "--timeout", type=click.FloatRange(min=0), default=None, metavar="S",
    help="With --wait: give up after S seconds (exit 1).",
)  # fmt: skip
def cancel(runs: tuple[str, ...], everything: bool, wait: bool, timeout: float | None) -> None:
    """Cancel every job of RUNS (or of all runs with --all), from any process.

    With --wait, return only once the batch system has released every job (a
    cancelled Slurm job stays COMPLETING for a while; status shows it CANCELLING).
    """
    if everything == bool(runs):
        raise click.UsageError("name the runs to cancel, or pass --all (not both)")
    if timeout is not None and not wait:
        raise click.UsageError("--timeout needs --wait")
    deadline = None if timeout is None else time.monotonic() + timeout
    if everything:
        records = [r for r in registry.list() if r.status in ("submitted", "submitting")]
    else:
        records = [registry.load(r) for r in runs]
    records = recover(records)
    if not records:
        click.echo("nothing to cancel")
        return
    away = elsewhere(records)
    for run_id, why in away.items():
        click.echo(f"{run_id}: not cancelled: {why}", err=True)
    records = [run for run in records if run.run_id not in away]
    found, errors = ask(records)
    if errors:
        raise UserError("; ".join(errors))
    cancelled: list[tuple[RunRecord, list[str]]] = []
    for run in records:
        # Only ids that still carry the run's tag: after a controller restart an old id
        # may belong to somebody else's job, which must never be cancelled.
        live = [
            key.job_id
            for key in run.job_keys()
            if (rec := found.get(key)) is not None
            and is_ours(run, rec)
            and not rec.state.is_terminal
        ]
        if live:
            BatchControl.for_system(run.system).cancel(live)
        # The one record that a cancel was asked for (RunRecord.cancel_requested):
        # status shows the run's lingering jobs CANCELLING from now on.
        registry.update(
            run.run_id, status="cancelled", extra={**run.extra, "cancelled": time.time()}
        )
        click.echo(f"{run.run_id}: cancelled {len(live)} job(s)")
        cancelled.append((run, live))
    if not wait:
        return
    try:
        released = [_wait_released(run, live, deadline) for run, live in cancelled if live]
    except KeyboardInterrupt:
        # The cancel was sent; only the waiting for it stops.
        click.echo("interrupted: stopped waiting; the cancel stands (jobstrap status)", err=True)
        sys.exit(130)
    if not all(released):
        sys.exit(1)


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
