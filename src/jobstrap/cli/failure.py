"""The last words of ``run`` and ``submit --wait`` when the app or its job failed.

A failing app's reason sits in the job's stderr, between every rank's log lines.
:func:`explain_failure` prints, on stderr, the app's traceback (the jobstrap and
runpy frames that ran it left out), the one-line explanation and fix from
:func:`jobstrap.jobs.diagnose.diagnose` (the one failure explainer) and the log's
path, reading the log through :func:`jobstrap.store.files.read_tail`.
"""

from __future__ import annotations

from pathlib import Path

import click

from jobstrap.jobs.diagnose import FailureKind, diagnose, last_traceback
from jobstrap.states import JobState
from jobstrap.store.files import read_tail

__all__ = ["explain_failure"]

#: Lines of stderr searched for the traceback (rank logs interleave with it).
_TAIL_LINES = 400
#: Frame lines of the traceback shown (its header and exception line come on top).
_FRAME_LINES = 16
#: Files whose frames only carried the app: jobstrap's own and the runpy machinery.
_CARRIERS = (str(Path(__file__).resolve().parents[1]), "<frozen runpy>", "runpy.py")


def _app_frames(block: list[str]) -> list[str]:
    """``block`` without the frames of the code that ran the app (runpy, jobstrap)."""
    header, *frames, exception = block
    kept: list[str] = []
    skipping = False
    for line in frames:
        if line.startswith("  File "):
            skipping = any(carrier in line for carrier in _CARRIERS)
        if not skipping:
            kept.append(line)
    return [header, *kept[-_FRAME_LINES:], exception]


def explain_failure(
    run_id: str,
    job_id: str,
    err_path: str,
    state: JobState,
    exit_code: int | None,
    python: str,
    nodes: str = "",
) -> None:
    """Print why run ``run_id`` failed: traceback, explanation, fix and log path.

    Parameters
    ----------
    run_id, job_id
        Named in the ``error:`` line.
    err_path
        The job's stderr file.
    state, exit_code, nodes
        How the job ended, as the batch system (or the app's exit code file) says.
    python
        The profile's python (a missing interpreter is explained as such).
    """
    tail = read_tail(err_path, _TAIL_LINES, skip_blank=True) or ""
    block = last_traceback(tail)
    if len(block) >= 2:
        click.echo("\n".join(_app_frames(block)), err=True)
    why = diagnose(state, exit_code, nodes, tail, python)
    # TIMEOUT, CANCELLED, NODE_FAIL, ...: the batch system's word comes first.
    ended = "" if state in (JobState.COMPLETED, JobState.FAILED) else f"ended {state}: "
    click.echo(f"error: run {run_id} (job {job_id}) {ended}{why.message}", err=True)
    if why.kind is not FailureKind.FAILED:  # FAILED's fix only says "read the log"
        click.echo(f"fix: {why.fix}", err=True)
    click.echo(f"logs: {err_path}", err=True)
