"""``jobstrap submit app.py``: run an application in one batch job (batch mode)."""

from __future__ import annotations

import os
import sys

import click

from jobstrap.batch.future import JobFuture
from jobstrap.batch.submit import submit_run
from jobstrap.batchctl.control import BatchControl
from jobstrap.batchctl.submit import Submission
from jobstrap.cli.failure import explain_failure
from jobstrap.cli.interrupt import Interrupted, handle_interrupt, interrupts
from jobstrap.cli.options import engine_option, profile_options, resolve
from jobstrap.config.profile import Profile
from jobstrap.states import JobState
from jobstrap.store.rundir import RunDir
from jobstrap.systems import JobRecord


def _print_transition(job_id: str, old: JobState, new: JobRecord) -> None:
    # Some batch systems say "None" for "no reason": not worth a word.
    detail = " ".join(x for x in (new.nodes, new.reason) if x and x != "None")
    click.echo(f"{job_id}: {old} -> {new.state}" + (f" ({detail})" if detail else ""))


def _wait(
    batchctl: BatchControl, submission: Submission, run: RunDir, profile: Profile, err: str
) -> int:
    """Follow the job to its end, printing transitions; return the app's exit code.

    A job that failed, or an app that exited non-zero, ends with its reason.
    """
    job_id = submission.job_ids[0]
    watcher = batchctl.watcher
    watcher.configure(poll_interval=profile.poll_interval)
    watcher.track(submission.job_ids, on_change=_print_transition, name=submission.name)
    record = watcher.wait(submission.job_ids)[job_id]
    code = run.read_exit_code()  # the app's own word, written by the client rank
    if record.state is JobState.COMPLETED:
        code = code if code is not None else (record.exit_code or 0)
    else:
        # Killed before the app could say (walltime, cancel, node failure): never 0.
        code = code if code is not None else (record.exit_code or 1)
    if code != 0 or record.state is not JobState.COMPLETED:
        explain_failure(run.run_id, job_id, err, record.state, code, profile.python, record.nodes)
    return code


# Everything after APP is the app's, as in `python app.py -s 5`, srun and mpirun: option
# parsing stops at the first positional, so `-s 5` reaches the app unchanged.
@click.command(context_settings={"allow_interspersed_args": False})
@profile_options
@click.option("--wait", "wait", is_flag=True, help="Follow the job and exit with the app's code.")
@engine_option
@click.argument("app", type=click.Path(exists=True, dir_okay=False))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def submit(app: str, args: tuple[str, ...], wait: bool, **options: object) -> None:
    """Run APP (a Python file, with ARGS) in one batch job: scheduler, client and workers.

    The run directory and its TLS files are created first, then the job is submitted
    and saved, so ``jobstrap status``, ``logs`` and ``cancel`` find it from anywhere.
    With --wait, Ctrl-C asks whether to cancel (in a terminal); SIGTERM, or SIGINT
    without a terminal, detaches and the job keeps running.
    """
    profile_name = options.get("profile_name")
    app_path = os.path.abspath(app)  # the file system is shared: the nodes read it in place
    # Batch mode's ranks (scheduler, client, workers), the run directory and its TLS
    # files, the record saved before submitting: the one pipeline every batch job takes.
    # The bootstrap runs what follows its "--" with the job's Python: app.py [args].
    submitted = submit_run(
        resolve(**options),  # type: ignore[arg-type]
        profile_name if isinstance(profile_name, str) else None,
        "app",
        lambda run: [app_path, *args],
        extra={"app": app_path},
        run_id_prefix="run",  # `jobstrap submit` runs have always been run-<time>-<hex>
    )
    run, submission, logs = submitted.run, submitted.submission, submitted.record.logs
    job_id = submission.job_ids[0]
    click.echo(f"run      {run.run_id}")
    click.echo(f"job      {job_id}")
    click.echo(f"run dir  {run.path}")
    click.echo(f"stdout   {logs[job_id]['out']}")
    click.echo(f"stderr   {logs[job_id]['err']}")
    if not wait:
        return
    # An interrupt detaches: the job is the batch system's, `jobstrap cancel` stops it.
    with interrupts():
        try:
            code = _wait(
                submitted.batchctl, submission, run, submitted.profile, logs[job_id]["err"]
            )
        except (KeyboardInterrupt, Interrupted) as error:
            cancel = JobFuture.attach(run.run_id).cancel
            code = handle_interrupt(error, run.run_id, job_id, cancel, cancel_by_default=False)
    sys.exit(code)


def register(group: click.Group) -> None:
    group.add_command(submit)
