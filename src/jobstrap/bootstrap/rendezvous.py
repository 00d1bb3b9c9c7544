"""How the ranks of a run find its head through the run directory.

Rank 0 publishes the head's address (``info.json``, ``scheduler.json``) or the
reason it could not start; ranks without MPI, and notebook clusters' worker jobs,
wait for that file. Engine-agnostic: a head is anything with an address and an
identity.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING

from jobstrap.bootstrap.options import Options
from jobstrap.bootstrap.ranks import World
from jobstrap.errors import UserError
from jobstrap.store.rundir import RunDir, SchedulerInfo, atomic_write_json

if TYPE_CHECKING:
    from jobstrap.bootstrap.engine import Head

__all__ = [
    "job_id",
    "open_run",
    "process_start",
    "publish_error",
    "wait_for_info",
    "write_head_files",
]


def open_run(options: Options) -> RunDir:
    """The run directory of ``--run-dir``; :class:`UserError` if it does not exist."""
    try:
        return RunDir.open(options.run_dir)
    except FileNotFoundError as error:
        raise UserError(
            f"bootstrap: {error} (pass the run directory the submitter created)"
        ) from None


def job_id() -> str | None:
    """The batch system's id of this job, from its environment."""
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID") or None


def process_start() -> float:
    """When this process started (now, if that cannot be told)."""
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:
        return time.time()


def write_head_files(run: RunDir, head: Head, world: World) -> None:
    """Publish the running head: ``scheduler.json`` and ``info.json``."""
    identity = head.identity()
    atomic_write_json(run.scheduler_file, identity)
    run.write_info(
        SchedulerInfo(
            scheduler_address=head.address,
            dashboard_address=head.dashboard_address,
            host=world.hostname,
            job_id=job_id(),
            started=time.time(),
            pid=os.getpid(),
            launch=world.launch,
        )
    )


def wait_for_info(
    run: RunDir, *, timeout: float, launch: str | None, not_before: float | None
) -> SchedulerInfo | None:
    """Poll ``info.json`` until this launch's scheduler (or an error) is published."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            info = run.read_info()
        except (FileNotFoundError, ValueError):
            info = None
        if info is not None:
            fresh = (
                info.launch == launch
                if launch is not None
                else not_before is None or info.started >= not_before
            )
            if fresh:
                return info
        time.sleep(0.2)
    return None


def publish_error(run: RunDir, world: World, message: str) -> None:
    """Tell file-coordinated ranks that rank 0 failed, so they do not wait for it."""
    with contextlib.suppress(OSError):
        run.write_info(
            SchedulerInfo(
                scheduler_address="",
                dashboard_address=None,
                host=world.hostname,
                job_id=job_id(),
                started=time.time(),
                pid=os.getpid(),
                launch=world.launch,
                extra={"error": message},
            )
        )
