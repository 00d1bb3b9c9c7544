"""The one submission pipeline for batch-mode jobs (graphs, apps, ``jobstrap submit``).

:func:`submit_run` does every step in order: the run directory and its TLS material,
the inputs, the job script, the run record (saved before submitting, so a run whose
submitter died is still found), the submission through
:class:`~jobstrap.batchctl.control.BatchControl`, and the undo (the record marked
``failed``) when the batch system refuses the job. Callers say only what the client
rank runs and what to keep in the record.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobstrap.errors import UserError
from jobstrap.store.rundir import RunDir, default_run_root, new_run_id

if TYPE_CHECKING:
    from jobstrap.batchctl.control import BatchControl
    from jobstrap.batchctl.submit import Submission
    from jobstrap.config.profile import Profile
    from jobstrap.jobs.spec import JobSpec
    from jobstrap.store.registry import RunRecord
    from jobstrap.systems import BatchSystem

__all__ = [
    "SubmittedRun",
    "app_argv",
    "app_words",
    "batch_profile",
    "graph_argv",
    "job_logs",
    "local_launch",
    "ray_cluster_argv",
    "ray_function_argv",
    "submit_run",
]


def batch_profile(profile: Profile) -> Profile:
    """``profile`` with enough ranks for batch mode (scheduler, client, workers).

    Unless the user chose ``tasks_per_node``, a one-node job gets ``processes + 2``
    ranks (the scheduler and the client are light; ``processes`` is the worker count
    a node should have) and a multi-node job at least 3 ranks in all. With the Ray
    engine every rank is a Ray node: one per node (two on a one-node job).
    """
    if profile.sources.get("tasks_per_node", "default") != "default":
        return profile
    ranks = profile.ranks_per_node
    if profile.engine == "ray":
        # One Ray node per rank: one rank per node, the head's rank running the app;
        # a one-node job needs a second rank (the bootstrap's minimum) and splits the node.
        ranks = 1 if profile.nodes > 1 else 2
    elif profile.nodes == 1:
        ranks = profile.processes + 2
    elif profile.nodes * ranks < 3:
        ranks = -(-3 // profile.nodes)
    if ranks == profile.ranks_per_node:
        return profile
    changed = profile.with_overrides({"tasks_per_node": ranks}, source="batch mode")
    return changed


def _mpiexec_available(profile: Profile) -> bool:
    if importlib.util.find_spec("mpi4py") is None:
        return False
    search = os.pathsep.join(
        filter(None, [os.path.dirname(profile.python), os.environ.get("PATH", "")])
    )
    return shutil.which("mpiexec", path=search) is not None


def local_launch(spec: JobSpec, profile: Profile) -> JobSpec:
    """Ranks as plain processes started by the batch system's own launcher, without MPI.

    On a laptop without mpich (or mpi4py), ``launcher: auto`` (mpiexec) would fail; a
    batch system with a launcher of its own (the local queue's ``localq launch``)
    starts the ranks instead and gives each its rank in the environment
    (``PMI_RANK``/``PMI_SIZE``, which the bootstrap reads when MPI is absent).
    ``launcher: none`` asks for the same on purpose (no MPI even where it is installed).
    """
    from jobstrap.systems import get_system

    command = get_system(profile.system).plain_launch_argv(
        profile.python, spec.ntasks, spec.command
    )
    if command is None or spec.ntasks < 2:
        return spec
    if spec.launcher == "mpiexec" and _mpiexec_available(profile):
        return spec
    if spec.launcher not in ("mpiexec", "none"):
        return spec  # an explicit mpirun/srun is the user's choice
    return replace(spec, launcher="none", command=tuple(command))


def job_logs(
    spec: JobSpec, job_ids: Sequence[str], system: BatchSystem
) -> dict[str, dict[str, str]]:
    """The ``{"out": ..., "err": ...}`` log files of each job, as the run record keeps them."""
    # The templates name logs by the system's first stem: 123.out, PBS's 7.srv -> 7.out.
    logs = {}
    for j in job_ids:
        stem = os.path.join(spec.log_directory, system.log_stems(j)[0])
        logs[j] = {"out": f"{stem}.out", "err": f"{stem}.err"}
    return logs


def graph_argv(threads: int | None = None) -> Callable[[RunDir], list[str]]:
    """What a graph job's app runs: the graph runner on the run directory.

    ``threads``: compute in the app's own process with that many of Dask's threads
    (the in-process path) instead of on the allocation's scheduler.
    """
    # What follows the bootstrap's "--": the app's rank runs it in its process as __main__.
    extra = [] if threads is None else ["--threads", str(threads)]

    def argv(run: RunDir) -> list[str]:
        return ["-m", "jobstrap.engines.dask.graph_runner", *extra, str(run.path)]

    return argv


def ray_function_argv(run: RunDir) -> list[str]:
    """What the head rank of a Ray function job runs: the function, as Ray's driver."""
    return ["-m", "jobstrap.engines.ray.runner", str(run.path)]


def ray_cluster_argv(run: RunDir) -> list[str]:
    """What the head rank of a Ray cluster job runs: a wait until the job is told to end."""
    return ["-m", "jobstrap.engines.ray.runner", "--serve", str(run.path)]


def app_words(app: Sequence[str]) -> list[str]:
    """``app`` (``["app.py", args...]`` or ``["-m", "module", args...]``), checked.

    The app's file is named by absolute path: the file system is shared and the
    nodes read it in place.
    """
    words = list(app)
    if not words:
        raise UserError("no app given: jobstrap run app.py [args] | -m module [args]")
    if words[0] != "-m":
        path = Path(words[0])
        if not path.is_file():
            raise UserError(f"app {words[0]!r}: no such file")
        # The file system is shared: the nodes read the app in place, by absolute path.
        words[0] = str(path.resolve())
    return words


def app_argv(words: Sequence[str]) -> Callable[[RunDir], list[str]]:
    """What the client rank of an app job runs: the app, wrapped to report progress."""

    def argv(run: RunDir) -> list[str]:
        return [
            "-m",
            "jobstrap.engines.dask.graph_runner",
            "--app",
            str(run.path),
            "--",
            *words,
        ]

    return argv


@dataclass(frozen=True)
class SubmittedRun:
    """What :func:`submit_run` made and submitted.

    Attributes
    ----------
    run
        The run directory.
    record
        The run's record as saved in the registry (``status="submitted"``).
    spec
        The job as submitted.
    submission
        What the batch system accepted (job ids, job name).
    batchctl
        The batch control that submitted it (its watcher follows the job).
    profile
        The batch-mode profile the job was built from.
    """

    run: RunDir
    record: RunRecord
    spec: JobSpec
    submission: Submission
    batchctl: BatchControl
    profile: Profile

    @property
    def job_id(self) -> str:
        """The first (usually only) job id."""
        return self.submission.job_ids[0]


def submit_run(
    profile: Profile,
    profile_name: str | None,
    kind: str,
    client_argv: Callable[[RunDir], list[str]],
    *,
    prepare: Callable[[RunDir], None] | None = None,
    extra: Mapping[str, Any] | None = None,
    start_after_workers: int | None = None,
    run_id_prefix: str | None = None,
    in_process: bool = False,
) -> SubmittedRun:
    """Create the run directory, TLS and inputs; render; save; submit.

    Parameters
    ----------
    profile
        The job's settings (batch mode's ranks are added by :func:`batch_profile`).
    profile_name
        The name recorded for the profile (default: ``$JOBSTRAP_PROFILE`` or
        ``default``).
    kind
        The run's kind in the registry (``graph``, ``app``).
    client_argv
        What the client rank runs (what follows the bootstrap's ``--``), given the
        run directory.
    prepare
        Writes the inputs into the run directory before the job is submitted.
    extra
        Kept in the run record's ``extra``.
    start_after_workers
        Start the client once that many workers joined (default: all).
    run_id_prefix
        The run id's prefix (default: ``kind``).
    in_process
        Run the app alone in the job's one process (``--mode in-process``): no
        scheduler, no workers, no MPI, and no TLS material, since nothing listens.

    Returns
    -------
    SubmittedRun

    Raises
    ------
    Exception
        Whatever the submission raised, after marking the run ``failed``.
    """
    from jobstrap.batchctl.control import BatchControl
    from jobstrap.batchctl.submit import tagged
    from jobstrap.jobs.render import render_script
    from jobstrap.jobs.spec import app_job, in_process_job, new_tag
    from jobstrap.store import registry
    from jobstrap.store.registry import RunRecord
    from jobstrap.systems import get_system

    if not in_process:
        profile = batch_profile(profile)
    run = RunDir.create(default_run_root(profile.run_root), new_run_id(run_id_prefix or kind))
    if profile.protocol == "tls" and not in_process:
        from jobstrap.net.security import (
            create_tls,  # cryptography is slow to import; only when needed
        )

        create_tls(run.path)
    if prepare is not None:
        prepare(run)
    tag = new_tag()
    if in_process:
        spec = in_process_job(profile, str(run.path), tag, client_argv(run))
    else:
        spec = app_job(
            profile, str(run.path), tag, client_argv(run), start_after_workers=start_after_workers
        )
    spec = tagged(local_launch(spec, profile))
    script = render_script(spec, get_system(profile.system), template=profile.template)
    batchctl = BatchControl.for_system(profile.system)
    record = RunRecord(
        run_id=run.run_id,
        kind=kind,
        system=profile.system,
        # Job ids mean something only to the controller that gave them.
        controller=batchctl.controller(),
        run_dir=str(run.path),
        tags=[tag],
        profile={
            "name": profile_name or os.environ.get("JOBSTRAP_PROFILE") or "default",
            # The run root in effect ($JOBSTRAP_RUN_ROOT wins over the profile's), so
            # that `jobstrap prune` later recognises the run's directory as its own.
            "resolved": {**profile.to_dict(), "run_root": str(run.path.parent)},
        },
        status="submitting",
        extra=dict(extra or {}),
    )
    # Saved before submitting: if this process dies mid-submit, the run is still
    # findable and its tag tells which queued job is ours.
    registry.save(record)
    try:
        submission = batchctl.submit(spec, script, script_name="job.sh")
    except Exception:
        registry.update(record.run_id, status="failed")
        raise
    record = registry.update(
        record.run_id,
        job_ids=submission.job_ids,
        logs=job_logs(spec, submission.job_ids, batchctl.system),
        status="submitted",
    )
    run.write_json("run.json", record.to_json())
    return SubmittedRun(run, record, spec, submission, batchctl, profile)
