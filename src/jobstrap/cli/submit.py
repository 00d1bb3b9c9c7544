"""``jobstrap submit app.py``: run an application in one batch job (batch mode)."""

from __future__ import annotations

import os
import sys

import click

from jobstrap.batch.submit import batch_profile, local_launch
from jobstrap.batchctl.core import BatchControl, Submission, tagged
from jobstrap.cli.options import profile_options, resolve
from jobstrap.config.profile import Profile
from jobstrap.jobs.render import render_script
from jobstrap.jobs.spec import app_job, new_tag
from jobstrap.states import JobState
from jobstrap.store import registry
from jobstrap.store.registry import RunRecord
from jobstrap.store.rundir import RunDir, default_run_root, new_run_id
from jobstrap.systems import JobRecord, get_system


def _prepare(profile: Profile) -> RunDir:
    """The run directory and its TLS material, before anything is submitted."""
    run = RunDir.create(default_run_root(profile.run_root), new_run_id())
    if profile.protocol == "tls":
        from jobstrap.net.security import (
            create_tls,  # cryptography is slow to import; only when needed
        )

        create_tls(run.path)
    return run


def _record(profile_name: str | None, profile: Profile, run: RunDir, app: str) -> RunRecord:
    return RunRecord(
        run_id=run.run_id,
        kind="app",
        system=profile.system,
        run_dir=str(run.path),
        profile={
            "name": profile_name or os.environ.get("JOBSTRAP_PROFILE") or "default",
            "resolved": profile.to_dict(),
        },
        status="submitting",
        extra={"app": app},
    )


def _print_transition(job_id: str, old: JobState, new: JobRecord) -> None:
    detail = " ".join(x for x in (new.nodes, new.reason) if x)
    click.echo(f"{job_id}: {old} -> {new.state}" + (f" ({detail})" if detail else ""))


def _wait(batchctl: BatchControl, submission: Submission, run: RunDir, profile: Profile) -> int:
    """Follow the job to its end, printing transitions; return the app's exit code."""
    job_id = submission.job_ids[0]
    watcher = batchctl.watcher
    watcher.configure(poll_interval=profile.poll_interval)
    watcher.track(submission.job_ids, on_change=_print_transition, name=submission.name)
    record = watcher.wait(submission.job_ids)[job_id]
    code = run.read_exit_code()  # the app's own word, written by the client rank
    if record.state is not JobState.COMPLETED:
        click.echo(f"job {job_id} ended {record.state}; logs: {run.logs_dir}", err=True)
        # Killed before the app could say (walltime, cancel, node failure): never 0.
        return code if code is not None else (record.exit_code or 1)
    return code if code is not None else (record.exit_code or 0)


@click.command(context_settings={"ignore_unknown_options": True})
@profile_options
@click.option("--wait", "wait", is_flag=True, help="Follow the job and exit with the app's code.")
@click.argument("app", type=click.Path(exists=True, dir_okay=False))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def submit(app: str, args: tuple[str, ...], wait: bool, **options: object) -> None:
    """Run APP (a Python file, with ARGS) in one batch job: scheduler, client and workers.

    The run directory and its TLS files are created first, then the job is submitted
    and saved, so ``jobstrap status``, ``logs`` and ``cancel`` find it from anywhere.
    """
    profile_name = options.get("profile_name")
    # Batch mode needs at least scheduler, client and one worker rank.
    profile = batch_profile(resolve(**options))  # type: ignore[arg-type]
    app_path = os.path.abspath(app)  # the file system is shared: the nodes read it in place
    run = _prepare(profile)
    tag = new_tag()
    # The bootstrap runs what follows its "--" with the job's Python: app.py [args].
    spec = app_job(profile, str(run.path), tag, [app_path, *args])
    spec = tagged(local_launch(spec, profile))
    system = get_system(profile.system)
    script = render_script(spec, system, template=profile.template)
    record = _record(
        profile_name if isinstance(profile_name, str) else None, profile, run, app_path
    )
    record.tags = [tag]
    # Saved before submitting: if this process dies mid-submit, the run is still findable
    # and its tag tells which queued job is ours.
    registry.save(record)
    batchctl = BatchControl.for_system(profile.system)
    try:
        submission = batchctl.submit(spec, script, script_name="job.sh")
    except Exception:
        registry.update(record.run_id, status="failed")
        raise
    # The script names its logs <job id>.out/.err (arrays: <id>_<task>) in the log directory.
    logs = {
        j: {"out": os.path.join(spec.log_directory, f"{j}.out"),
            "err": os.path.join(spec.log_directory, f"{j}.err")}
        for j in submission.job_ids
    }  # fmt: skip
    record = registry.update(
        record.run_id, job_ids=submission.job_ids, logs=logs, status="submitted"
    )
    run.write_json("run.json", record.to_json())
    job_id = submission.job_ids[0]
    click.echo(f"run      {run.run_id}")
    click.echo(f"job      {job_id}")
    click.echo(f"run dir  {run.path}")
    click.echo(f"stdout   {logs[job_id]['out']}")
    click.echo(f"stderr   {logs[job_id]['err']}")
    if not wait:
        return
    # Ctrl-C detaches: the job is the user's; `jobstrap cancel` stops it on purpose.
    try:
        code = _wait(batchctl, submission, run, profile)
    except KeyboardInterrupt:
        click.echo(f"\ndetached; the job keeps running (jobstrap cancel {run.run_id})", err=True)
        sys.exit(130)
    sys.exit(code)


def register(group: click.Group) -> None:
    group.add_command(submit)
