"""Submitting and cancelling a notebook cluster's worker jobs.

Every job a scale-up adds goes to batch control in one ``submit(count=N)``: a job
array (or a few, at the site's array limit), one ``sbatch`` for N jobs. Workers
learn their names from the array task id (``<job name>`` is ``<prefix>-<k>.<task>``).
Submitted jobs are booked, protected against orphaning and watched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
from collections.abc import Callable, Mapping
from typing import Any

from dask.utils import format_bytes

from jobstrap.batchctl.control import BatchControl
from jobstrap.batchctl.submit import tagged
from jobstrap.cluster.book import JobBook, warn
from jobstrap.cluster.jobs import name_jobs, worker_job_spec
from jobstrap.cluster.options import ClusterOptions
from jobstrap.cluster.orphans import OrphanGuard, WatchCallback
from jobstrap.cluster.pools import Pool
from jobstrap.config.profile import Profile
from jobstrap.config.units import format_walltime_slurm
from jobstrap.errors import BatchCommandError, SubmitError
from jobstrap.jobs.render import render_script
from jobstrap.jobs.spec import JobSpec, new_tag
from jobstrap.store.rundir import RunDir
from jobstrap.systems.base import BatchSystem

__all__ = ["WorkerSubmitter"]


class WorkerSubmitter:
    """Builds, submits and cancels the worker jobs of one cluster.

    Parameters
    ----------
    profile, options, system, batchctl, run_dir
        What the jobs are built from and where they go.
    book
        Where submitted jobs are booked (and cancelled ones marked).
    guard
        Cancels the submitted jobs should the cluster go away.
    prefix
        The jobs' name prefix (``<prefix>-<serial>.<task>``).
    signal_seconds
        When before the walltime the rotation's USR1 backstop is asked for (None: no signal).
    watch
        The watcher callback for the jobs' state changes.
    submitted
        Called after each submission (the registry records the new ids).
    scheduler_address
        The scheduler's address once known (the jobs' workers connect to it).
    pool
        The worker pool whose jobs these are (``profile`` is the pool's own).
    """

    def __init__(
        self,
        *,
        profile: Profile,
        options: ClusterOptions,
        system: BatchSystem,
        batchctl: BatchControl,
        run_dir: RunDir,
        book: JobBook,
        guard: OrphanGuard,
        prefix: str,
        signal_seconds: int | None,
        watch: WatchCallback,
        submitted: Callable[[], None],
        scheduler_address: Callable[[], str | None],
        pool: str = "default",
    ) -> None:
        self._profile = profile
        self._options = options
        self._system = system
        self._batchctl = batchctl
        self._run_dir = run_dir
        self._book = book
        self._guard = guard
        self._prefix = prefix
        self._signal_seconds = signal_seconds
        self._watch = watch
        self._submitted = submitted
        self._scheduler_address = scheduler_address
        self.pool = pool
        self._serials = itertools.count()
        #: The tag of every submission (job names end with them): the registry keeps
        #: them so that `jobstrap status/cancel` can tell our jobs from reused ids.
        self.tags: list[str] = []

    @classmethod
    def for_pools(cls, pools: Mapping[str, Pool], **common: Any) -> dict[str, WorkerSubmitter]:
        """One submitter per worker pool (its profile, options and name prefix)."""
        return {
            name: cls(
                profile=pool.profile,
                options=pool.options,
                prefix=pool.prefix,
                pool=name,
                **common,
            )
            for name, pool in pools.items()
        }

    def spec(self, tag: str) -> JobSpec:
        """The worker job every scale-up submits (names are added per array)."""
        spec = worker_job_spec(
            self._profile,
            str(self._run_dir),
            tag,
            scheduler_address=self._scheduler_address(),
            job_cpu=self._options.job_cpu,
            job_mem=self._options.job_mem,
        )
        if self._system.warns_before_walltime and self._signal_seconds is not None:
            # Backstop for the planned rotation: USR1 makes the job retire its workers.
            spec = dataclasses.replace(spec, signal=("USR1", self._signal_seconds))
        return spec

    def _with_names(self, spec: JobSpec, serial: int) -> tuple[JobSpec, list[str]]:
        return name_jobs(spec, self._prefix, serial)

    def script(self) -> str:
        """The script of one worker job, as it would be submitted now."""
        spec, _ = self._with_names(tagged(self.spec(new_tag())), next(self._serials))
        return render_script(spec, self._system, template=self._profile.template)

    def header(self) -> str:
        """The directive lines of the worker jobs' scripts."""
        return "\n".join(self._system.directives(tagged(self.spec(new_tag()))))

    async def submit(self, count: int) -> tuple[list[str], list[str]]:
        """Submit ``count`` worker jobs in one batchctl call; return (names, job ids)."""
        names: list[str] = []

        def render(part: JobSpec) -> str:
            named, part_names = self._with_names(part, next(self._serials))
            names.extend(part_names)
            return render_script(named, self._system, template=self._profile.template)

        spec = self.spec(new_tag())
        submit = functools.partial(
            self._batchctl.submit,
            spec,
            render,
            count=count,
            max_array_size=self._profile.max_array_size,
        )
        loop = asyncio.get_running_loop()
        submission = await loop.run_in_executor(None, submit)
        if len(names) != len(submission.job_ids):  # pragma: no cover - batchctl contract
            raise RuntimeError(f"{len(names)} names for {len(submission.job_ids)} jobs")
        self._book.record(names, submission.job_ids, self._profile.walltime, self.pool)
        self.tags.append(spec.tag)
        self._guard.add(submission.job_ids)
        watcher = self._batchctl.watcher
        watcher.configure(poll_interval=self._profile.poll_interval)
        watcher.track(submission.job_ids, on_change=self._watch, name=submission.name)
        self._submitted()
        return names, submission.job_ids

    async def cancel(self, job_ids: list[str]) -> None:
        """Cancel jobs (their end is no failure); a refusal is a warning, not an error."""
        if not job_ids:
            return
        self._book.mark_cancelled(job_ids)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self._batchctl.cancel, job_ids)
        except BatchCommandError as error:
            warn(f"could not cancel jobs {' '.join(job_ids)}: {error}", RuntimeWarning)
            return
        self._guard.discard(job_ids)

    def explain_refusal(self, error: SubmitError) -> None:
        """Add what was asked for: the batch system's words rarely say which part it was."""
        spec = self.spec("js0")
        asked = [f"{spec.nodes} node(s)", f"{spec.cpus_per_task} CPUs"]
        if spec.memory is not None:
            asked.append(f"memory {format_bytes(spec.memory)} per node")
        asked.append(f"walltime {format_walltime_slurm(spec.walltime)}")
        named = (("queue", spec.queue), ("account", spec.account))
        asked += [f"{key} {value}" for key, value in named if value]
        add_note = getattr(error, "add_note", None)  # Python 3.11+
        if add_note is not None:
            add_note(f"each worker job asked for: {', '.join(asked)}")
