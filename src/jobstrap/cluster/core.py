# distributed's deploy classes are unannotated; calling their methods from typed code is
# the point of subclassing them, so that one strict check is off in this module only.
# mypy: disable-error-code="no-untyped-call"
"""Notebook clusters: ``SLURMCluster``, ``PBSCluster`` and ``LocalBatchCluster``.

::

    cluster = SLURMCluster(profile="mysite", cores=8, memory="32GiB")
    client = Client(cluster)
    cluster.adapt(minimum_jobs=1, maximum_jobs=50)

One implementation (:class:`BatchCluster`) parameterised by the batch system, built
on ``distributed.SpecCluster``: every entry of the worker spec is one batch job, a
:class:`BatchJob` holding ``nodes x processes`` workers named ``<job name>-<i>``.
What it does beyond a plain ``SpecCluster``:

* **Jobs are the unit.** ``scale`` and ``adapt`` count jobs (workers, cores and
  memory are rounded to whole jobs once, in :mod:`jobstrap.cluster.scaling`), so
  a job of several workers never makes the adaptive loop oscillate or stall.
* **One submission per scale-up.** Every job a correction of the spec adds goes to
  batch control in one ``submit(count=N)``: a job array (or a few, at the site's
  array limit), one ``sbatch`` for N jobs. Workers learn their names from the array
  task id (``<job name>`` is ``<prefix>-<k>.<task>``).
* **State-aware.** The batchctl's watcher reports PENDING/RUNNING/ended per job;
  pending jobs are part of the plan (adapt never over-submits), ``cluster.jobs``
  and the notebook view show them, and failed jobs are explained from their stderr
  ("python not found on node1") and, after ``max_failures`` in a row (or at once
  when retrying cannot help), stop the cluster from submitting with a clear error.
* **Errors are raised.** ``scale()`` waits for the submission, so the batch
  system's refusal (memory larger than any node, unknown partition, walltime over
  the limit) is raised at the call site with its own words.
* **No orphans.** ``close()``, context exit, interpreter exit and garbage
  collection cancel every job through batch control; the run is in the registry
  (kind ``cluster``) so ``jobstrap cancel`` can clean up by hand.
* **Scheduler placement.** In-process by default (TLS with per-cluster
  certificates, bound to the address the profile's ``scheduler_interface``
  chooses), or ``scheduler="job"``: a scheduler in its own batch job.

The walltime-aware lifetime logic builds on :attr:`BatchCluster.jobs` (start time,
walltime, time left per job), :meth:`BatchCluster.add_job_callback` and
:meth:`BatchCluster.retire_job`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import functools
import html
import itertools
import logging
import math
import os
import socket
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from dask.utils import format_bytes
from distributed.core import Status
from distributed.deploy.adaptive import Adaptive
from distributed.deploy.adaptive import Adaptive as _Adaptive
from distributed.deploy.spec import ProcessInterface, SpecCluster
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.protocol import pickle
from distributed.scheduler import Scheduler
from tornado.ioloop import PeriodicCallback

from jobstrap.batchctl.control import BatchControl
from jobstrap.batchctl.submit import tagged
from jobstrap.cluster.jobs import (
    FAILED_STATES,
    JobInfo,
    JobStatus,
    diagnose,
    explain_failure,
    killed_for_memory,
    name_jobs,
    stderr_tail,
    worker_job_spec,
)
from jobstrap.cluster.options import ClusterOptions, split_options
from jobstrap.cluster.rotation import JobLifetime, LifetimeManager
from jobstrap.cluster.scaling import (
    JobShape,
    adapt_bounds,
    job_of_worker,
    jobs_for,
    worker_suffixes,
)
from jobstrap.config.profile import Profile, load_profile
from jobstrap.config.units import format_walltime_slurm
from jobstrap.engines.dask.quiet import quiet_closed_comm_tracebacks
from jobstrap.engines.dask.watchdog import HEARTBEAT_KEY, ManagerWatchdog
from jobstrap.errors import BatchCommandError, ConfigError, JobFailedError, SubmitError
from jobstrap.jobs.render import render_script
from jobstrap.jobs.spec import JobSpec, new_tag, scheduler_job
from jobstrap.net import network
from jobstrap.states import JobState
from jobstrap.store.rundir import RunDir, SchedulerInfo, default_run_root, new_run_id
from jobstrap.systems import JobRecord, get_system

__all__ = [
    "BatchCluster",
    "BatchJob",
    "ClusterFailedError",
    "JobAdaptive",
    "JobFailedWarning",
    "JobStatus",
    "LocalBatchCluster",
    "PBSCluster",
    "SLURMCluster",
]

logger = logging.getLogger(__name__)

#: Seconds a running scheduler job may take to publish its address.
SCHEDULER_START_TIMEOUT = 120.0


class JobFailedWarning(UserWarning):
    """A worker job failed; the message says why and shows its stderr tail."""


class ClusterFailedError(JobFailedError):
    """Worker jobs keep failing: the cluster stopped submitting.

    Raised by ``scale()``, ``adapt()`` and ``wait_for_workers()`` once the
    cluster has given up; the message names the last failed job, why it failed
    and the tail of its stderr. :meth:`BatchCluster.reset_failures` lifts it.
    """

    def __init__(self, failure: JobFailedError, failures: int) -> None:
        self.failures = failures
        self.last_failure = failure
        super().__init__(failure.job_id, failure.state, failure.stderr_tail, _detail(failure))
        self.args = (
            f"stopped submitting worker jobs after {failures} failed job(s); "
            + str(failure.args[0] if failure.args else failure),
        )


def _warn(message: str, category: type[Warning] = JobFailedWarning) -> None:
    """Warn from the event loop's thread, where no frame of the user's code is on the stack.

    ``warn_explicit`` without a registry shows every occurrence (each is a different
    job) and no misleading source line of this module.
    """
    warnings.warn_explicit(message, category, filename="jobstrap.cluster.core", lineno=0)


def _detail(failure: JobFailedError) -> str:
    text = str(failure.args[0] if failure.args else failure)
    head = text.split("\n", 1)[0]
    return head.split(": ", 1)[1] if ": " in head else ""


# --- the process interfaces -----------------------------------------------------------------


class BatchJob(ProcessInterface):
    """One batch job of Dask workers: the unit a :class:`BatchCluster` scales by.

    The cluster submits jobs in batches (one batchctl call for every job a scale-up
    adds) and hands each its id; :meth:`close` cancels the job through batch control.

    Parameters
    ----------
    name
        The job's name in the cluster; its workers are ``<name>-0``, ``<name>-1``...
    job_id
        The batch system's id, once submitted.
    cluster
        The cluster the job belongs to.
    """

    def __init__(
        self,
        scheduler: str | None = None,
        name: str | None = None,
        *,
        job_id: str | None = None,
        cluster: BatchCluster | None = None,
    ) -> None:
        super().__init__(scheduler=scheduler, name=name)
        self.name = name
        self.job_id = job_id
        self._cluster = weakref.ref(cluster) if cluster is not None else None

    async def start(self) -> None:
        """Submit this job alone (the cluster normally submits jobs in batches)."""
        cluster = self._cluster() if self._cluster else None
        if cluster is None:
            raise RuntimeError("a BatchJob is started by its cluster")
        if self.job_id is None:
            self.job_id = await cluster._submit_single(self)
        await super().start()

    async def close(self) -> None:
        """Cancel the job (no-op when it has ended)."""
        cluster = self._cluster() if self._cluster else None
        if cluster is not None and self.job_id is not None:
            await cluster._cancel_ids([self.job_id])
        await super().close()

    def __repr__(self) -> str:
        return f"<BatchJob {self.name} job_id={self.job_id} status={self.status.name}>"


class SchedulerJob(ProcessInterface):
    """The scheduler of a ``scheduler="job"`` cluster: a batch job of its own."""

    def __init__(self, address: str, job_id: str, batchctl: BatchControl) -> None:
        super().__init__()
        self.address = address
        self.job_id = job_id
        self._batchctl = batchctl
        self.status = Status.running

    async def close(self) -> None:
        """Cancel the scheduler's job."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(BatchCommandError):
            await loop.run_in_executor(None, self._batchctl.cancel, [self.job_id])
        await super().close()

    def __repr__(self) -> str:
        return f"<SchedulerJob {self.address} job_id={self.job_id}>"


# --- adaptivity in jobs -----------------------------------------------------------------------


def _worker_job_key(worker_state: Any) -> str:
    """Group key for ``Scheduler.workers_to_close``: the worker's job (pickled by name)."""
    return job_of_worker(worker_state.name)


class JobAdaptive(Adaptive):
    """``distributed.Adaptive`` counting whole jobs instead of workers.

    The plan, the requests and the observations are sets of *job* names; the
    scheduler's target (in workers) is rounded up to jobs; and scaling down picks
    whole jobs (the scheduler groups workers by job), so a job of several workers
    is never half-closed and the next round never undoes this one.
    """

    cluster: BatchCluster

    @property
    def plan(self) -> set[str]:  # type: ignore[override]
        return self.cluster._plan_jobs()

    @property
    def requested(self) -> set[str]:  # type: ignore[override]
        return self.cluster._requested_jobs()

    @property
    def observed(self) -> set[str]:  # type: ignore[override]
        return self.cluster._observed_jobs()

    async def target(self) -> int:
        workers = await self.scheduler.adaptive_target(target_duration=self.target_duration)
        return math.ceil(int(workers) / self.cluster._shape.workers)

    async def workers_to_close(self, target: int) -> list[str]:
        observed = self.cluster._observed_jobs()
        surplus = len(self.plan) - target
        if surplus <= 0 or not observed:
            return []
        names = await self.scheduler.workers_to_close(
            n=surplus * self.cluster._shape.workers,
            key=pickle.dumps(_worker_job_key),
            attribute="name",
            **self._workers_to_close_kwargs,
        )
        jobs = list(dict.fromkeys(job_of_worker(n) for n in names))
        return [j for j in jobs if j in observed][:surplus]

    async def scale_down(self, workers: Iterable[str]) -> None:  # type: ignore[override]
        jobs = list(workers)
        if not jobs:
            return
        logger.info("retiring jobs %s", jobs)
        names = self.cluster._worker_names_of(jobs)
        if names:
            await self.scheduler.retire_workers(names=names, remove=True, close_workers=True)
        self.cluster._retired.update(jobs)  # retired already: cancel without asking again
        await self.cluster._scale_down_jobs(jobs)

    async def scale_up(self, n: Any) -> None:
        # AdaptiveCore calls scale_up(n=<target>); the target is in jobs here.
        await self.cluster._scale_to(int(n))


class _AdaptOnNewWork(SchedulerPlugin):
    """Runs the adaptive loop as soon as work arrives instead of at its next tick.

    Lives in the in-process scheduler; holds the cluster weakly. The first worker of
    a burst is a whole adaptive interval sooner, and nothing else changes: the
    loop's own decision (and its ``maximum``) still rules.
    """

    name = "jobstrap-adapt-on-new-work"

    def __init__(self, cluster: BatchCluster) -> None:
        self._cluster = weakref.ref(cluster)

    def update_graph(self, scheduler: Any, **kwargs: Any) -> None:
        cluster = self._cluster()
        if cluster is not None:
            cluster._adapt_soon()


# --- orphan protection ------------------------------------------------------------------------


def _cancel_orphans(system: str, active: set[str], lock: threading.Lock) -> None:
    """Cancel whatever is left of a cluster (finalizer; must not reference the cluster)."""
    with lock:
        ids = sorted(active)
        active.clear()
    if not ids:
        return
    try:
        BatchControl.for_system(system).cancel(ids)
    except Exception as error:  # at exit there is nobody left to raise to
        logger.error("could not cancel jobs %s: %s", " ".join(ids), error)


def _weak_callback(cluster: BatchCluster) -> Callable[[str, JobState, JobRecord], None]:
    """A watcher callback that does not keep the cluster alive (the watcher is global)."""
    ref = weakref.ref(cluster)

    def on_change(job_id: str, old: JobState, record: JobRecord) -> None:
        target = ref()
        if target is not None:
            target._on_change(job_id, old, record)

    return on_change


_LIVE: weakref.WeakSet[BatchCluster] = weakref.WeakSet()
_ATEXIT_REGISTERED = False


def _close_live_clusters() -> None:
    """At interpreter exit: close clusters gracefully while the loop still runs."""
    for cluster in list(_LIVE):
        with contextlib.suppress(Exception):
            if cluster.status not in (Status.closed, Status.closing):
                cluster.close(timeout=10)
        with contextlib.suppress(Exception):
            cluster._finalizer()


def _register_atexit() -> None:
    global _ATEXIT_REGISTERED
    if not _ATEXIT_REGISTERED:
        # Registered after the first weakref.finalize, so it runs before the
        # finalizers' own exit hook (atexit is last-in, first-out).
        atexit.register(_close_live_clusters)
        _ATEXIT_REGISTERED = True


# --- the cluster ------------------------------------------------------------------------------


class BatchCluster(SpecCluster):
    """A Dask cluster whose workers are batch jobs (Slurm, PBS or local).

    Parameters
    ----------
    profile
        A profile name (``configs/<name>.yaml`` or the user's own), a path to a
        YAML file, or a :class:`~jobstrap.config.profile.Profile`. Default:
        ``$JOBSTRAP_PROFILE``, else ``default``.
    asynchronous
        Use with ``await`` / ``async with`` inside a running event loop.
    loop
        The event loop to run in (normally chosen for you).
    silence_logs
        Log level for the in-process scheduler's logging (``"error"`` by default).
    shutdown_on_close
        Close the cluster when the interpreter exits (jobs are cancelled anyway).
    **settings
        Profile settings (``cores=8``, ``memory="32GiB"``, ``walltime="1h"``,
        ``queue=``, ``processes=``, ``nodes=``, ``scheduler="job"``...), their
        dask-jobqueue spellings, and the cluster-level ``n_workers``, ``jobs``,
        ``name``, ``scheduler_options``, ``dashboard_address``, ``host``,
        ``job_cpu``, ``job_mem`` (see ``docs/migration.md``).

    Attributes
    ----------
    profile : Profile
        The resolved settings every job is built from.
    run_dir : RunDir
        The cluster's private run directory (TLS material, scripts, logs).
    run_id : str
        The cluster's id in the registry (``jobstrap status/cancel``).

    Raises
    ------
    ConfigError
        An invalid or unknown setting (one line, with a "did you mean").
    SubmitError
        ``n_workers``/``jobs`` was given and the batch system refused the jobs.
    """

    #: The batch system this class submits to; ``None`` takes the profile's.
    system: ClassVar[str | None] = None

    def __init__(
        self,
        profile: str | Profile | None = None,
        *,
        asynchronous: bool = False,
        loop: Any = None,
        silence_logs: str | int | bool = "error",
        shutdown_on_close: bool = True,
        **settings: Any,
    ) -> None:
        overrides, options = split_options(settings)
        self.profile = self._resolve_profile(profile, overrides)
        self._profile_name = (
            profile if isinstance(profile, str) else os.environ.get("JOBSTRAP_PROFILE", "default")
        )
        self._options: ClusterOptions = options
        self._shape = JobShape.from_profile(self.profile)
        self._system = get_system(self.profile.system)
        self._batchctl = BatchControl.for_system(self.profile.system)
        self._prefix = options.name or self.profile.job_name
        self._placement = self.profile.scheduler

        self.run_id = new_run_id("cluster")
        self.run_dir = RunDir.create(default_run_root(self.profile.run_root), self.run_id)
        security = self._make_security()

        # Bookkeeping, all touched from the event loop thread only, except what the
        # lock guards (read by ``jobs`` from the user's thread and by the finalizer).
        self._jobs: dict[str, JobInfo] = {}
        self._jobs_lock = threading.Lock()
        self._job_callbacks: list[Callable[[JobStatus], None]] = []
        self._serials = itertools.count()
        self._provisional = itertools.count()
        self._failures: list[JobFailedError] = []
        self._consecutive_failures = 0
        self._error: ClusterFailedError | None = None
        self._scheduler_job_id: str | None = None
        self._registered = False
        self._tasks: set[asyncio.Future[Any]] = set()
        self._retired: set[str] = set()
        self._active_ids: set[str] = set()
        self._active_lock = threading.Lock()
        self._watch_callback = _weak_callback(self)
        self._lifetime = LifetimeManager(self)
        self._job_callbacks.append(self._lifetime.on_job)
        self._finalizer = weakref.finalize(
            self, _cancel_orphans, self.profile.system, self._active_ids, self._active_lock
        )
        _register_atexit()

        scheduler_spec = None if self._placement == "job" else self._scheduler_spec(security)
        # Rotations and scale-downs retire workers on purpose; the scheduler in this
        # process would log each one's closed stream with a traceback.
        quiet_closed_comm_tracebacks()
        template = {"cls": BatchJob, "options": {}, "group": worker_suffixes(self._shape)}
        try:
            super().__init__(
                scheduler=scheduler_spec,
                worker=template,
                asynchronous=asynchronous,
                loop=loop,
                security=security,
                silence_logs=silence_logs,
                name=options.name,
                shutdown_on_close=shutdown_on_close,
            )
        except BaseException:
            self._finalizer()
            if not asynchronous:
                with contextlib.suppress(Exception):
                    self._loop_runner.stop()
            raise
        _LIVE.add(self)

        initial = jobs_for(self._shape, jobs=options.jobs, workers=options.n_workers)
        if initial and not self.asynchronous:
            try:
                self.scale(jobs=initial)
            except BaseException:
                self.close()
                raise
        elif initial:
            self._initial_jobs = initial

    # -- construction helpers ------------------------------------------------------------

    @classmethod
    def _resolve_profile(
        cls, profile: str | Profile | None, overrides: Mapping[str, Any]
    ) -> Profile:
        if isinstance(profile, Profile):
            resolved = profile.with_overrides(overrides) if overrides else profile
        else:
            named = profile or os.environ.get("JOBSTRAP_PROFILE")
            if cls.system is not None and not named:
                # SLURMCluster() with no profile: the defaults, on this class's system.
                overrides = {"system": cls.system, **overrides}
            resolved = load_profile(profile, overrides)
        if cls.system is not None and resolved.system != cls.system:
            if resolved.sources.get("system") in ("default", None):
                return resolved.with_overrides({"system": cls.system})
            other = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "local": "LocalBatchCluster"}
            raise ConfigError(
                "system",
                resolved.system,
                f"{cls.__name__} submits to {cls.system}, but the profile is for"
                f" {resolved.system} (from {resolved.sources.get('system')})",
                f"use {other.get(resolved.system, 'BatchCluster')} for this profile",
            )
        return resolved

    def _make_security(self) -> Any:
        from jobstrap.net.security import create_tls, load_security

        if self.profile.protocol == "tls":
            create_tls(self.run_dir)
            return load_security(self.run_dir)
        return load_security(self.run_dir, require=False)

    def _scheduler_host(self) -> str:
        if self._options.scheduler_host:
            return self._options.scheduler_host
        preference = self.profile.scheduler_interface
        if self.profile.system == "local" and preference == ("auto",):
            # Every worker runs on this machine: loopback is the one address that
            # is always there and never leaves it.
            return "127.0.0.1"
        return network.choose_address(preference, allow_loopback=self.profile.system == "local")

    def _scheduler_spec(self, security: Any) -> dict[str, Any]:
        host = self._scheduler_host()
        dashboard = self._options.dashboard_address or f"{host}:{self.profile.dashboard_port}"
        options: dict[str, Any] = {
            "host": host,
            "port": 0,
            "protocol": f"{self.profile.protocol}://",
            "security": security,
            "dashboard": self.profile.dashboard,
            "dashboard_address": dashboard,
        }
        options.update(self._options.scheduler_options)
        return {"cls": self._options.scheduler_cls or Scheduler, "options": options}

    # -- starting and stopping -------------------------------------------------------------

    async def _start(self) -> None:
        if self.status in (Status.running, Status.closed):
            await super()._start()
            return
        if self._placement == "job" and self.scheduler is None:
            self.scheduler = await self._start_scheduler_job()
            self.periodic_callbacks["jobstrap-heartbeat"] = PeriodicCallback(self._beat, 1000)
        # Walltime-aware rotation: retire and replace jobs before their walltime.
        self.periodic_callbacks["jobstrap-lifetime"] = PeriodicCallback(self._lifetime.tick, 1000)
        await super()._start()
        if isinstance(self.scheduler, Scheduler):
            self.scheduler.add_plugin(_AdaptOnNewWork(self))
        elif self._placement == "job":
            await self._install_watchdog()
        self._publish()
        initial = getattr(self, "_initial_jobs", 0)
        if initial:
            self._initial_jobs = 0
            await self._scale_to(initial)

    def _beat(self) -> None:
        """Move the heartbeat the scheduler job's watchdog looks for (synced every second)."""
        self._cluster_info[HEARTBEAT_KEY[1]] = time.time()

    async def _install_watchdog(self) -> None:
        """Make the scheduler job end itself if this process dies without closing it."""
        self._beat()
        watchdog = ManagerWatchdog(timeout=float(self.profile.death_timeout))
        comm: Any = self.scheduler_comm
        await comm.register_scheduler_plugin(
            plugin=pickle.dumps(watchdog), name=ManagerWatchdog.name, idempotent=True
        )

    async def _start_scheduler_job(self) -> SchedulerJob:
        """Submit the scheduler's own job and wait for it to publish its address."""
        spec = scheduler_job(self.profile, str(self.run_dir), new_tag())
        loop = asyncio.get_running_loop()
        submit = functools.partial(
            self._batchctl.submit, spec, None, count=1, template=self.profile.template
        )
        submission = await loop.run_in_executor(None, submit)
        job_id = submission.job_ids[0]
        self._scheduler_job_id = job_id
        self._add_active([job_id])
        self._batchctl.watcher.configure(poll_interval=self.profile.poll_interval)
        self._batchctl.watcher.track([job_id], name=submission.name)
        self._register()
        running_since: float | None = None
        try:
            while True:
                with contextlib.suppress(FileNotFoundError, ValueError):
                    # The run directory is new and private: any info.json is our scheduler's.
                    info = self.run_dir.read_info()
                    return SchedulerJob(info.scheduler_address, job_id, self._batchctl)
                record = self._batchctl.watcher.record(job_id)
                if record.state.is_terminal:
                    tail = stderr_tail(spec.log_directory, job_id)
                    why = explain_failure(
                        record.state, record.exit_code, record.nodes, tail, self.profile.python
                    )
                    raise JobFailedError(job_id, record.state.value, tail, f"scheduler job {why}")
                if record.state is JobState.RUNNING and running_since is None:
                    running_since = time.monotonic()
                if (
                    running_since is not None
                    and time.monotonic() - running_since > SCHEDULER_START_TIMEOUT
                ):
                    raise JobFailedError(
                        job_id,
                        record.state.value,
                        stderr_tail(spec.log_directory, job_id),
                        f"the scheduler job ran {SCHEDULER_START_TIMEOUT:.0f} s without"
                        f" writing {self.run_dir.info_file}",
                    )
                await asyncio.sleep(0.2)
        except BaseException:
            await self._cancel_ids([job_id])
            raise

    def _publish(self) -> None:
        """Write ``info.json`` (an in-process scheduler) and register the cluster."""
        if self._placement != "job" and self.scheduler is not None:
            dashboard = self.dashboard_link or None
            self.run_dir.write_info(
                SchedulerInfo(
                    scheduler_address=self.scheduler.address,
                    dashboard_address=dashboard,
                    host=socket.gethostname(),
                    job_id=None,
                    started=time.time(),
                    pid=os.getpid(),
                )
            )
        self._register()

    def _register(self) -> None:
        """Record the cluster (kind ``cluster``) so ``jobstrap status/cancel`` find its jobs."""
        from jobstrap.store import registry

        ids = sorted(self._all_job_ids())
        logs = self._log_paths(ids)
        try:
            if not self._registered:
                registry.save(
                    registry.RunRecord(
                        run_id=self.run_id,
                        kind="cluster",
                        system=self.profile.system,
                        run_dir=str(self.run_dir),
                        job_ids=ids,
                        profile={"name": self._profile_name, "resolved": self.profile.to_dict()},
                        logs=logs,
                        extra=self._registry_extra(),
                    )
                )
                self._registered = True
            else:
                registry.update(self.run_id, job_ids=ids, logs=logs)
        except Exception as error:  # bookkeeping must never break the cluster
            logger.warning("could not record cluster %s in the registry: %s", self.run_id, error)

    def _registry_extra(self) -> dict[str, Any]:
        address = getattr(self.scheduler, "address", None)
        return {"scheduler_address": address, "scheduler_job": self._scheduler_job_id}

    def _log_paths(self, job_ids: Iterable[str]) -> dict[str, dict[str, str]]:
        if not self.profile.log_directory:
            return {}  # the registry's default: <run_dir>/logs/<job id>.out/.err
        base = self.profile.log_directory
        return {
            j: {"out": os.path.join(base, f"{j}.out"), "err": os.path.join(base, f"{j}.err")}
            for j in job_ids
        }

    async def _close(self) -> None:
        if self.status == Status.closed:
            return
        try:
            await super()._close()
        finally:
            with self._active_lock:
                leftovers = sorted(self._active_ids)
            if leftovers:
                await self._cancel_ids(leftovers)
            with self._jobs_lock:
                ids = list(self._jobs)
            self._batchctl.watcher.untrack(ids)
            _LIVE.discard(self)
            self._finalizer()
            if self._registered:
                from jobstrap.store import registry

                with contextlib.suppress(Exception):
                    registry.update(self.run_id, status="finished")

    # -- scaling ---------------------------------------------------------------------------

    def scale(  # type: ignore[override]
        self,
        n: int | None = None,
        jobs: int | None = None,
        memory: str | int | None = None,
        cores: int | None = None,
    ) -> Any:
        """Scale to a number of jobs given in jobs, workers, cores or memory.

        Parameters
        ----------
        n
            Workers wanted; rounded up to whole jobs.
        jobs
            Jobs wanted.
        memory
            Total worker memory wanted (``"256GiB"``); rounded up to whole jobs.
        cores
            Total worker threads wanted; rounded up to whole jobs.

        Returns
        -------
        None, or an awaitable when the cluster is asynchronous.

        Raises
        ------
        SubmitError
            The batch system refused the new jobs (its own words in the message).
        ClusterFailedError
            Earlier jobs kept failing and the cluster stopped submitting.
        """
        target = jobs_for(self._shape, jobs=jobs, workers=n, cores=cores, memory=memory)
        if self.asynchronous:
            return asyncio.ensure_future(self._scale_to(target))
        return self.sync(self._scale_to, target)

    async def _scale_to(self, target: int) -> None:
        if self.status in (Status.closing, Status.closed):
            target = 0
        # A job being replaced is not capacity: its successor already counts.
        current = len(self.worker_spec) - len(self._lifetime.outgoing & set(self.worker_spec))
        if target > current and self._error is not None:
            raise self._error
        if target < current:
            for name in self._choose_jobs_to_drop(current - target):
                del self.worker_spec[name]
        while len(self.worker_spec) < target:
            self.worker_spec[f"{self._prefix}-new{next(self._provisional)}"] = dict(self.new_spec)
        await self._correct_state()

    def _choose_jobs_to_drop(self, count: int) -> list[str]:
        """The ``count`` cheapest jobs to give up: unsubmitted, pending, idle, newest."""

        def cost(name: str) -> tuple[int, float]:
            job = self.workers.get(name)
            info = self._info_of(name)
            if job is None or info is None:
                return (0, 0.0)
            if info.state is JobState.PENDING:
                return (1, -info.submitted)
            if not info.workers:
                return (2, -info.submitted)
            return (3, -(info.started or info.submitted))

        candidates = [n for n in self.worker_spec if n not in self._lifetime.outgoing]
        return sorted(candidates, key=cost)[:count]

    async def scale_down(self, workers: Iterable[Any]) -> None:
        """Close the jobs of these workers (worker or job names; whole jobs go)."""
        await self._scale_down_jobs(workers)

    async def _scale_down_jobs(self, names: Iterable[Any]) -> None:
        for name in {n if n in self.worker_spec else job_of_worker(n) for n in names}:
            self.worker_spec.pop(name, None)
        await self._correct_state()

    def adapt(  # type: ignore[override]
        self,
        minimum: int | None = None,
        maximum: int | float | None = None,
        *,
        minimum_jobs: int | None = None,
        maximum_jobs: int | float | None = None,
        minimum_cores: int | None = None,
        maximum_cores: int | None = None,
        minimum_memory: str | int | None = None,
        maximum_memory: str | int | None = None,
        Adaptive: type[_Adaptive] = JobAdaptive,  # noqa: N803 - distributed's keyword
        **kwargs: Any,
    ) -> _Adaptive:
        """Scale automatically with the load, between bounds counted in whole jobs.

        Bounds may be given in jobs, workers (``minimum``/``maximum``), cores or
        memory; minimums round up to jobs, maximums round down (but allow at least
        one job). Other keywords (``interval``, ``wait_count``,
        ``target_duration``) go to ``distributed.Adaptive``.

        Raises
        ------
        ClusterFailedError
            Earlier jobs kept failing and the cluster stopped submitting.
        """
        if self._error is not None:
            raise self._error
        low, high = adapt_bounds(
            self._shape,
            minimum=minimum,
            maximum=maximum,
            minimum_jobs=minimum_jobs,
            maximum_jobs=maximum_jobs,
            minimum_cores=minimum_cores,
            maximum_cores=maximum_cores,
            minimum_memory=minimum_memory,
            maximum_memory=maximum_memory,
        )
        if high != math.inf:
            high = int(high)
        adaptive: _Adaptive = super(SpecCluster, self).adapt(
            Adaptive=Adaptive, minimum=low, maximum=high, **kwargs
        )
        return adaptive

    # -- the jobs as the adaptive loop sees them --------------------------------------------

    def _plan_jobs(self) -> set[str]:
        return set(self.worker_spec) - self._lifetime.outgoing

    def _requested_jobs(self) -> set[str]:
        return {name for name, job in self.workers.items() if name in self.worker_spec}

    def _observed_jobs(self) -> set[str]:
        return {job_of_worker(d["name"]) for d in self.scheduler_info["workers"].values()}

    @property
    def plan(self) -> set[str]:
        """Names of every worker the spec asks for (pending jobs included)."""
        return {name + s for name, spec in self.worker_spec.items() for s in spec["group"]}

    @property
    def requested(self) -> set[str]:
        """Names of the workers of submitted, live jobs."""
        return {n + s for n in self._requested_jobs() for s in self.worker_spec[n]["group"]}

    def _worker_names_of(self, jobs: Iterable[str]) -> list[str]:
        wanted = set(jobs)
        return [
            d["name"]
            for d in self.scheduler_info["workers"].values()
            if job_of_worker(d["name"]) in wanted
        ]

    # -- submitting and cancelling -------------------------------------------------------

    def _worker_spec(self, tag: str) -> JobSpec:
        """The worker job every scale-up submits (names are added per array)."""
        spec = worker_job_spec(
            self.profile,
            str(self.run_dir),
            tag,
            scheduler_address=self.scheduler.address if self.scheduler is not None else None,
            job_cpu=self._options.job_cpu,
            job_mem=self._options.job_mem,
        )
        if self.profile.system == "slurm":
            # Backstop for the planned rotation: USR1 makes the job retire its workers.
            spec = dataclasses.replace(spec, signal=("USR1", self._lifetime.signal_seconds))
        return spec

    def _provisional_name(self) -> str:
        return f"{self._prefix}-new{next(self._provisional)}"

    def _with_names(self, spec: JobSpec, serial: int) -> tuple[JobSpec, list[str]]:
        return name_jobs(spec, self._prefix, serial)

    def job_script(self) -> str:
        """The script of one worker job, as it would be submitted now."""
        spec, _ = self._with_names(tagged(self._worker_spec(new_tag())), next(self._serials))
        return render_script(spec, self._system, template=self.profile.template)

    @property
    def job_header(self) -> str:
        """The directive lines of the worker jobs' scripts."""
        return "\n".join(self._system.directives(tagged(self._worker_spec(new_tag()))))

    @property
    def job_name(self) -> str:
        """The batch job name of the worker jobs (a submission's tag is appended)."""
        return self.profile.job_name

    async def _submit(self, count: int) -> tuple[list[str], list[str]]:
        """Submit ``count`` worker jobs in one batchctl call; return (names, job ids)."""
        names: list[str] = []

        def render(part: JobSpec) -> str:
            named, part_names = self._with_names(part, next(self._serials))
            names.extend(part_names)
            return render_script(named, self._system, template=self.profile.template)

        spec = self._worker_spec(new_tag())
        submit = functools.partial(
            self._batchctl.submit,
            spec,
            render,
            count=count,
            max_array_size=self.profile.max_array_size,
        )
        loop = asyncio.get_running_loop()
        submission = await loop.run_in_executor(None, submit)
        if len(names) != len(submission.job_ids):  # pragma: no cover - batchctl contract
            raise RuntimeError(f"{len(names)} names for {len(submission.job_ids)} jobs")
        now = time.time()
        with self._jobs_lock:
            for name, job_id in zip(names, submission.job_ids, strict=True):
                self._jobs[job_id] = JobInfo(
                    job_id=job_id, name=name, walltime=self.profile.walltime, submitted=now
                )
        self._add_active(submission.job_ids)
        watcher = self._batchctl.watcher
        watcher.configure(poll_interval=self.profile.poll_interval)
        watcher.track(submission.job_ids, on_change=self._watch_callback, name=submission.name)
        self._register()
        return names, submission.job_ids

    async def _start_jobs(self, provisional: list[str]) -> None:
        if self._error is not None:
            for name in provisional:
                self.worker_spec.pop(name, None)
            raise self._error
        try:
            names, job_ids = await self._submit(len(provisional))
        except SubmitError as error:
            for name in provisional:
                self.worker_spec.pop(name, None)
            self._explain_refusal(error)
            self._submission_refused(error)
            raise
        orphans: list[str] = []
        for old, name, job_id in zip(provisional, names, job_ids, strict=True):
            spec = self.worker_spec.pop(old, None)
            if spec is None or self.status in (Status.closing, Status.closed):
                orphans.append(job_id)  # scaled down while the submission was under way
                continue
            self.worker_spec[name] = spec
            job = BatchJob(name=name, job_id=job_id, cluster=self)
            job.status = Status.running
            self.workers[name] = job
        if orphans:
            await self._cancel_ids(orphans)

    async def _submit_single(self, job: BatchJob) -> str:
        names, job_ids = await self._submit(1)
        job.name = names[0]
        return job_ids[0]

    async def _stop_jobs(self, names: list[str]) -> None:
        jobs = [self.workers.pop(name) for name in names if name in self.workers]
        retired, self._retired = self._retired & set(names), self._retired - set(names)
        if self.status == Status.running and self.scheduler_comm is not None:
            connected = self._worker_names_of(n for n in names if n not in retired)
            if connected:
                # Let the workers hand their data over before their jobs are cancelled.
                with contextlib.suppress(Exception):
                    await self.scheduler_comm.retire_workers(
                        names=connected, close_workers=True, remove=True
                    )
        ids = [job.job_id for job in jobs if job.job_id]
        await self._cancel_ids(ids)
        for job in jobs:
            job.status = Status.closed
            job._event_finished.set()

    async def _cancel_ids(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        with self._jobs_lock:
            for job_id in job_ids:
                if job_id in self._jobs:
                    self._jobs[job_id].cancelled_by_us = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self._batchctl.cancel, job_ids)
        except BatchCommandError as error:
            _warn(f"could not cancel jobs {' '.join(job_ids)}: {error}", RuntimeWarning)
            return
        with self._active_lock:
            self._active_ids.difference_update(job_ids)

    def _add_active(self, job_ids: Iterable[str]) -> None:
        with self._active_lock:
            self._active_ids.update(job_ids)

    async def _correct_state_internal(self) -> None:
        async with self._lock:
            self._correct_state_waiting = None
            to_close = [name for name in self.workers if name not in self.worker_spec]
            if to_close:
                await self._stop_jobs(to_close)
            to_open = [name for name in self.worker_spec if name not in self.workers]
            if to_open:
                await self._start_jobs(to_open)

    async def _correct_state_quietly(self) -> None:
        try:
            await self._correct_state()
        except Exception as error:
            _warn(f"could not replace worker jobs: {error}", RuntimeWarning)

    # -- job states --------------------------------------------------------------------------

    def _on_change(self, job_id: str, old: JobState, record: JobRecord) -> None:
        """Watcher callback (its thread): hand the change to the event loop."""
        loop = self.loop
        if loop is None or self.status == Status.closed:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed
            loop.add_callback(self._job_changed, job_id, record)

    def _job_changed(self, job_id: str, record: JobRecord) -> None:
        with self._jobs_lock:
            info = self._jobs.get(job_id)
            if info is None or not info.update(record):
                return
        self._notify(info)
        if not info.state.is_terminal:
            return
        with self._active_lock:
            self._active_ids.discard(job_id)
        self._batchctl.watcher.untrack([job_id])
        job = self.workers.get(info.name)
        if job is None or job.job_id != job_id:
            return  # we stopped it ourselves
        del self.workers[info.name]
        job.status = Status.closed
        job._event_finished.set()
        if self.status != Status.running:
            return
        if info.cancelled_by_us or info.name in self._lifetime.outgoing:
            # Ours to end, or already replaced (e.g. drained early on SIGUSR1).
            self.worker_spec.pop(info.name, None)
            self._lifetime.forget(info.name)
            return
        # A job that ended before its workers arrived failed, unless someone ended it:
        # a cancellation, or the site taking the nodes back (preemption is no fault
        # of the job, and must not count towards giving up).
        if info.state in FAILED_STATES or (
            info.arrived is None and info.state not in (JobState.CANCELLED, JobState.PREEMPTED)
        ):
            self._job_failed(info)
        elif info.state is JobState.CANCELLED:
            self._job_cancelled_elsewhere(info)
        elif info.state is JobState.PREEMPTED:
            logger.info("worker job %s was preempted; submitting a replacement", info.job_id)
        # Whatever is still in the spec (a normal end, a failure below the limit) is
        # replaced by the next correction.
        if self._error is None and info.name in self.worker_spec:
            self._background(self._correct_state_quietly())

    def _job_failed(self, info: JobInfo) -> None:
        tail = stderr_tail(self._log_directory(), info.job_id)
        if info.state is JobState.FAILED and killed_for_memory(tail):
            # Slurm says FAILED for the job when the memory limit killed a step of it.
            with self._jobs_lock:
                info.state = JobState.OUT_OF_MEMORY
        diagnosis = diagnose(info.state, info.exit_code, info.nodes, tail, self.profile.python)
        failure = JobFailedError(info.job_id, info.state.value, tail, diagnosis.message)
        self._failures.append(failure)
        self._consecutive_failures += 1
        if diagnosis.fatal or self._consecutive_failures >= self.profile.max_failures:
            self._give_up(ClusterFailedError(failure, self._consecutive_failures))
        else:
            _warn(
                f"{failure}\n(failure {self._consecutive_failures} of at most"
                f" {self.profile.max_failures} in a row; submitting a replacement)"
            )

    def _job_cancelled_elsewhere(self, info: JobInfo) -> None:
        """A worker job cancelled by someone else (``scancel``, an admin): replace it.

        The cluster keeps the size it was asked for (``scale``/``adapt`` is how to
        change it). The cancellation counts with the failures in a row, so that
        cancelling its jobs again and again (``scancel -u``) stops the cluster after
        ``max_failures`` instead of starting a fight.
        """
        failure = JobFailedError(info.job_id, info.state.value, "", "cancelled outside the cluster")
        self._failures.append(failure)
        self._consecutive_failures += 1
        if self._consecutive_failures >= self.profile.max_failures:
            self._give_up(ClusterFailedError(failure, self._consecutive_failures))
        else:
            _warn(
                f"worker job {info.job_id} was cancelled outside the cluster; submitting a"
                f" replacement ({self._consecutive_failures} of at most"
                f" {self.profile.max_failures} lost jobs in a row)"
            )

    def _explain_refusal(self, error: SubmitError) -> None:
        """Add what was asked for: the batch system's words rarely say which part it was."""
        spec = self._worker_spec("js0")
        asked = [f"{spec.nodes} node(s)", f"{spec.cpus_per_task} CPUs"]
        if spec.memory is not None:
            asked.append(f"memory {format_bytes(spec.memory)} per node")
        asked.append(f"walltime {format_walltime_slurm(spec.walltime)}")
        if spec.queue:
            asked.append(f"queue {spec.queue}")
        if spec.account:
            asked.append(f"account {spec.account}")
        add_note = getattr(error, "add_note", None)  # Python 3.11+
        if add_note is not None:
            add_note(f"each worker job asked for: {', '.join(asked)}")

    def _submission_refused(self, error: SubmitError) -> None:
        """A refused submission under adapt would repeat every interval: stop adapting."""
        adaptive = self._adaptive
        if adaptive is not None and getattr(adaptive, "state", None) == "running":
            adaptive.stop(reason="submission refused")
            _warn(f"adaptive scaling stopped: the batch system refused the jobs: {error}")

    def _give_up(self, error: ClusterFailedError) -> None:
        """Stop submitting: drop every job that is not (yet) doing anything useful."""
        self._error = error
        if self._adaptive is not None:
            self._adaptive.stop(reason="worker jobs keep failing")
        for name in list(self.worker_spec):
            info = self._info_of(name)
            if info is None or (info.state is JobState.PENDING and not info.workers):
                del self.worker_spec[name]
        _warn(str(error))
        self._background(self._correct_state_quietly())

    def _background(self, coroutine: Any) -> None:
        """Run ``coroutine`` as a task the cluster keeps a reference to until it ends."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _adapt_soon(self) -> None:
        """Run one round of the adaptive loop now (from the event loop's thread)."""
        adaptive = self._adaptive
        if adaptive is not None and getattr(adaptive, "state", None) == "running":
            self._background(self._adapt_now(adaptive))

    async def _adapt_now(self, adaptive: _Adaptive) -> None:
        try:
            await adaptive.adapt()
        except Exception:  # the periodic round will try again; say why this one failed
            logger.warning("adaptive scaling failed on new work", exc_info=True)

    def reset_failures(self) -> None:
        """Forget earlier failures so the cluster submits again (after fixing the cause)."""
        self._error = None
        self._consecutive_failures = 0

    def _notify(self, info: JobInfo) -> None:
        status = info.snapshot()
        for callback in list(self._job_callbacks):
            try:
                callback(status)
            except Exception:
                logger.exception("job callback %r failed", callback)

    def add_job_callback(self, callback: Callable[[JobStatus], None]) -> None:
        """Call ``callback(JobStatus)`` (in the event loop) after every job state change."""
        self._job_callbacks.append(callback)

    def _info_of(self, name: str) -> JobInfo | None:
        job = self.workers.get(name)
        if job is None or job.job_id is None:
            return None
        return self._jobs.get(job.job_id)

    def _log_directory(self) -> str:
        return self.profile.log_directory or str(self.run_dir.logs_dir)

    def _all_job_ids(self) -> set[str]:
        with self._jobs_lock:
            ids = set(self._jobs)
        if self._scheduler_job_id:
            ids.add(self._scheduler_job_id)
        return ids

    def _update_worker_status(self, op: str, msg: Any) -> None:
        if op == "add":
            now = time.time()
            for worker in msg.get("workers", {}).values():
                self._worker_arrived(str(worker.get("name", "")), now)
        elif op == "remove":
            worker = self.scheduler_info["workers"].get(msg)
            if worker is not None:
                self._worker_left(str(worker.get("name", "")))
        super()._update_worker_status(op, msg)

    def _worker_arrived(self, worker: str, now: float) -> None:
        info = self._info_of(job_of_worker(worker))
        if info is None:
            return
        with self._jobs_lock:
            info.workers.add(worker)
            first_news = info.state is JobState.PENDING
            if first_news:
                info.state = JobState.RUNNING  # a worker is proof; the watcher may lag
            if info.arrived is None:
                info.arrived = now
            if info.started is None:
                info.started = now
        # A job that got a worker to the scheduler is a success: failures must be
        # consecutive to stop the cluster.
        self._consecutive_failures = 0
        if first_news:
            # The watcher backs off while nothing changes, so it may learn of the start
            # (node, start time) a minute late; the state did change: ask now.
            self._batchctl.watcher.poke()

    def _worker_left(self, worker: str) -> None:
        info = self._info_of(job_of_worker(worker))
        if info is not None:
            with self._jobs_lock:
                info.workers.discard(worker)

    # -- what users see ------------------------------------------------------------------------

    @property
    def jobs(self) -> dict[str, JobStatus]:
        """The cluster's jobs by job id: state, node, start, time left, workers.

        Pending and running jobs only; jobs being cancelled are no longer listed
        (see :attr:`job_history` for every job ever submitted).
        """
        now = time.time()
        with self._jobs_lock:
            return {
                job_id: info.snapshot(now)
                for job_id, info in self._jobs.items()
                if not info.state.is_terminal and not info.cancelled_by_us
            }

    @property
    def lifetimes(self) -> dict[str, JobLifetime]:
        """Each running job's planned retirement, walltime left and phase, by job name.

        The phase is ``"running"``, ``"replacing"`` (its successor was submitted) or
        ``"draining"`` (its workers are handing their data over).
        """
        return self._lifetime.describe()

    @property
    def job_history(self) -> dict[str, JobStatus]:
        """Every job this cluster submitted, ended ones included."""
        now = time.time()
        with self._jobs_lock:
            return {job_id: info.snapshot(now) for job_id, info in self._jobs.items()}

    @property
    def failures(self) -> list[JobFailedError]:
        """Every worker-job failure so far (newest last), with its stderr tail."""
        return list(self._failures)

    @property
    def error(self) -> ClusterFailedError | None:
        """Why the cluster stopped submitting, or ``None`` while it is healthy."""
        return self._error

    @property
    def batchctl(self) -> BatchControl:
        """The batchctl every batch command goes through (``batchctl.calls`` counts them)."""
        return self._batchctl

    def wait_for_workers(self, n_workers: int, timeout: float | None = None) -> Any:
        """Block until ``n_workers`` workers are running.

        Raises
        ------
        ClusterFailedError
            The worker jobs keep failing (at once, not at the timeout).
        TimeoutError
            ``timeout`` seconds passed; the message lists the jobs' states.
        """
        if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
            raise ValueError(f"n_workers must be a positive integer, not {n_workers!r}")
        return self.sync(self._wait_for_workers, n_workers, timeout=timeout)

    async def _wait_for_workers(self, n_workers: int = 0, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        while True:
            if self._error is not None:
                raise self._error
            comm: Any = self.scheduler_comm
            identity = await comm.identity()
            running = sum(
                1 for w in identity["workers"].values() if w.get("status") == Status.running.name
            )
            if running >= n_workers:
                return
            if deadline is not None and time.monotonic() > deadline:
                states = ", ".join(str(s) for s in self.jobs.values()) or "no live jobs"
                raise TimeoutError(
                    f"{running}/{n_workers} workers after {timeout} s; jobs: {states}"
                )
            await asyncio.sleep(0.1)

    def _job_counts(self) -> dict[str, int]:
        counts = {"PENDING": 0, "RUNNING": 0}
        for status in self.jobs.values():
            counts[status.state.value] = counts.get(status.state.value, 0) + 1
        return counts

    def __repr__(self) -> str:
        counts = self._job_counts()
        text: str = super().__repr__()
        jobs = f"jobs={counts['RUNNING']} running, {counts['PENDING']} pending"
        if self._lifetime.outgoing:
            jobs += f" ({self._lifetime.summary()})"
        return text[:-1] + f", {jobs})" if text.endswith(")") else text

    def _repr_html_(self, cluster_status: str | None = None) -> str:
        rows = []
        lifetimes = self._lifetime.describe()
        for status in sorted(self.jobs.values(), key=lambda s: s.submitted):
            left = "" if status.remaining is None else f"{status.remaining / 60:.0f} min"
            life = lifetimes.get(status.name)
            if life is not None and life.phase != "running":
                left += f" ({life.phase})"
            rows.append(
                "<tr>"
                + "".join(
                    f"<td style='text-align: left;'>{html.escape(str(cell))}</td>"
                    for cell in (
                        status.job_id,
                        status.name,
                        status.state.value,
                        status.node or status.reason,
                        left,
                        len(status.workers),
                    )
                )
                + "</tr>"
            )
        counts = self._job_counts()
        summary = (
            f"<p style='text-align: left;'>Jobs: {counts['RUNNING']} running,"
            f" {counts['PENDING']} pending ({html.escape(self.profile.system)},"
            f" run {html.escape(self.run_id)})</p>"
        )
        if self._error is not None:
            summary += (
                "<p style='text-align: left; color: #c00;'>"
                f"{html.escape(str(self._error).splitlines()[0])}</p>"
            )
        header = "".join(
            f"<th style='text-align: left;'>{h}</th>"
            for h in ("Job id", "Name", "State", "Node / reason", "Time left", "Workers")
        )
        table = f"<table><tr>{header}</tr>{''.join(rows)}</table>" if rows else ""
        extra = summary + table + (cluster_status or "")
        rendered: str = super()._repr_html_(cluster_status=extra)
        return rendered

    # -- lifetimes ---------------------------------------------------------------------------

    def retire_job(self, job: str, *, replace: bool = False) -> Any:
        """Retire one job gracefully: its workers hand over their data, then it ends.

        Parameters
        ----------
        job
            A job id (``"123_4"``) or a job name (``"jobstrap-3.4"``).
        replace
            Submit a replacement job first, so the cluster keeps its size.

        Returns
        -------
        None, or an awaitable when the cluster is asynchronous.
        """
        if self.asynchronous:
            return asyncio.ensure_future(self._retire_job(job, replace))
        return self.sync(self._retire_job, job, replace)

    async def _retire_job(self, job: str, replace_it: bool) -> None:
        name = job
        with self._jobs_lock:
            if job in self._jobs:
                name = self._jobs[job].name
        if name not in self.worker_spec:
            raise KeyError(f"no live job {job!r} in this cluster")
        if replace_it:
            self.worker_spec[f"{self._prefix}-new{next(self._provisional)}"] = dict(self.new_spec)
        workers = self._worker_names_of([name])
        if workers and self.scheduler_comm is not None:
            await self.scheduler_comm.retire_workers(names=workers, close_workers=True, remove=True)
        self._retired.add(name)
        del self.worker_spec[name]
        await self._correct_state()


class SLURMCluster(BatchCluster):
    """A Dask cluster of Slurm jobs (see :class:`BatchCluster`)."""

    system: ClassVar[str | None] = "slurm"


class PBSCluster(BatchCluster):
    """A Dask cluster of PBS Pro / OpenPBS / Torque jobs (see :class:`BatchCluster`)."""

    system: ClassVar[str | None] = "pbs"


class LocalBatchCluster(BatchCluster):
    """A Dask cluster of local process-group "jobs" (no batch system needed).

    Runs exactly the scripts a cluster would, through ``jobstrap.localq``; for
    laptops, CI and trying a profile out before the queue wait.
    """

    system: ClassVar[str | None] = "local"
