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
What it does beyond a plain ``SpecCluster``, one part (module) each:

* **Jobs are the unit** (:mod:`~jobstrap.cluster.scaling`, :mod:`~jobstrap.cluster.pool`,
  :mod:`~jobstrap.cluster.adaptive`): ``scale`` and ``adapt`` count whole jobs, so a
  job of several workers never makes the adaptive loop oscillate or stall.
* **One submission per scale-up** (:mod:`~jobstrap.cluster.submit`,
  :mod:`~jobstrap.cluster.runner`): a job array for every job a correction adds.
* **State-aware** (:mod:`~jobstrap.cluster.book`): pending jobs are part of the plan,
  failed jobs are explained from their stderr and, after ``max_failures`` in a row,
  stop the cluster from submitting with a clear error.
* **Errors are raised.** ``scale()`` waits for the submission, so the batch
  system's refusal is raised at the call site with its own words.
* **No orphans** (:mod:`~jobstrap.cluster.orphans`): close, exit and garbage
  collection cancel every job; the run is in the registry for ``jobstrap cancel``.
* **Scheduler placement** (:mod:`~jobstrap.cluster.scheduler`): in-process (TLS,
  ``scheduler_interface``) or ``scheduler="job"``, a batch job of its own.
* **Walltime-aware rotation** (:mod:`~jobstrap.cluster.rotation`) and the notebook
  view (:mod:`~jobstrap.cluster.display`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from distributed.core import Status
from distributed.deploy.adaptive import Adaptive as _Adaptive
from distributed.deploy.spec import SpecCluster
from distributed.scheduler import Scheduler
from tornado.ioloop import PeriodicCallback

from jobstrap.batchctl.control import BatchControl
from jobstrap.cluster.adaptive import AdaptOnNewWork, JobAdaptive, PoolAdaptive
from jobstrap.cluster.book import ClusterFailedError, JobBook, JobFailedWarning
from jobstrap.cluster.display import job_counts, jobs_html, repr_with_jobs
from jobstrap.cluster.jobs import JobStatus
from jobstrap.cluster.metrics import install_cluster_metrics
from jobstrap.cluster.options import ClusterOptions, resolve_profile, split_options
from jobstrap.cluster.orphans import OrphanGuard, RegistryEntry, weak_callback
from jobstrap.cluster.pool import JobPool
from jobstrap.cluster.pools import build_pools, pick_pool, pop_resources
from jobstrap.cluster.rotation import JobLifetime, LifetimeManager
from jobstrap.cluster.runner import BatchJob, JobRunner, job_templates
from jobstrap.cluster.scaling import adapt_bounds, jobs_for
from jobstrap.cluster.scheduler import SchedulerJob, SchedulerPlacement
from jobstrap.cluster.submit import WorkerSubmitter
from jobstrap.config.profile import Profile
from jobstrap.engines.dask.drain import install_drain
from jobstrap.engines.dask.quiet import quiet_shutdown_tracebacks
from jobstrap.engines.dask.watchdog import HEARTBEAT_KEY
from jobstrap.errors import JobFailedError
from jobstrap.states import JobState
from jobstrap.store.rundir import RunDir, default_run_root, new_run_id
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
    "SchedulerJob",
]


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
        ``job_cpu``, ``job_mem`` (see ``docs/migration.md``); ``pools={name:
        settings}`` (job shapes of their own) and ``worker_resources`` (``docs/pools.md``).

    Attributes
    ----------
    profile : Profile
        The resolved settings every job is built from (each pool's: ``pools``).
    pools : dict
        The worker pools by name (:class:`~jobstrap.cluster.pools.Pool`), the default first.
    run_dir : RunDir
        The cluster's private run directory (TLS material, scripts, logs).
    run_id : str
        The cluster's id in the registry (``jobstrap status/cancel``).
    job_pool : JobPool
        The jobs of the worker spec by name; scaling, ``adapt`` and the rotation
        change the cluster through it.
    job_runner : JobRunner
        Carries the spec out (one submission per scale-up) and takes the news
        about the jobs (watcher, scheduler).

    Raises
    ------
    ConfigError
        An invalid or unknown setting (one line, with a "did you mean").
    SubmitError
        ``n_workers``/``jobs`` was given and the batch system refused the jobs.

    Notes
    -----
    Why each ``SpecCluster`` method is overridden (everything else is inherited):

    * ``_start``: a ``scheduler="job"`` scheduler is submitted and waited for first;
      the rotation's periodic callback, the adapt-on-new-work plugin (or the
      scheduler job's watchdog) are installed; ``info.json`` and the registry
      record are written; initial jobs of an asynchronous cluster are submitted.
    * ``_close``: cancels every job still active, stops watching them and marks
      the run finished (no orphans).
    * ``_correct_state_internal``: every new spec entry goes out in ONE submission
      (a job array) instead of one ``ProcessInterface.start`` each; removed ones
      retire their workers before their job is cancelled.
    * ``_update_worker_status``: a worker's arrival or departure is news for the
      job book (the watcher may lag behind).
    * ``scale``, ``scale_down``, ``adapt``: counted in whole jobs; ``scale`` waits
      for the submission so a refusal is raised at the call site.
    * ``wait_for_workers``/``_wait_for_workers``: raise the cluster's failure at
      once, and name the jobs' states on timeout.
    * ``__repr__``, ``_repr_html_``: the jobs, their states and time left.
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
        pools = settings.pop("pools", None)
        resources = pop_resources(settings)
        overrides, options = split_options(settings)
        self.profile = resolve_profile(
            profile, overrides, self.system, type(self).__name__, _CLASS_OF_SYSTEM
        )
        profile_name = (
            profile if isinstance(profile, str) else os.environ.get("JOBSTRAP_PROFILE", "default")
        )
        self._options: ClusterOptions = options
        prefix = options.name or self.profile.job_name
        #: The worker pools by name, the default one first (one, ``default``, without pools).
        self.pools = build_pools(self.profile, options, prefix, pools, resources)
        self._shape = next(iter(self.pools.values())).shape
        #: Workers per job (the adaptive loop rounds the scheduler's target with it).
        self.workers_per_job = self._shape.workers
        self._system = get_system(self.profile.system)
        self._batchctl = BatchControl.for_system(self.profile.system)

        self.run_id = new_run_id("cluster")
        self.run_dir = RunDir.create(default_run_root(self.profile.run_root), self.run_id)
        self._placement = SchedulerPlacement(
            self.profile, options, self._system, self.run_dir, self._batchctl
        )
        security = self._placement.security()

        # The parts the cluster is made of; each module says what its part is for.
        self._book = JobBook(max_failures=self.profile.max_failures, python=self.profile.python)
        templates = job_templates(self.pools)
        self.job_pool = JobPool(self, self._book, prefix, self._log_directory(), templates)
        self._lifetime = LifetimeManager(self.job_pool, self.profile)
        self.job_pool.lifetime = self._lifetime
        self._book.add_callback(self._lifetime.on_job)
        self._registry = RegistryEntry(self.run_id, self.run_dir, self.profile, profile_name)
        self._orphans = OrphanGuard(self, self.profile.system)
        self._submitters = WorkerSubmitter.for_pools(
            self.pools,
            system=self._system,
            batchctl=self._batchctl,
            run_dir=self.run_dir,
            book=self._book,
            guard=self._orphans,
            signal_seconds=self._lifetime.backstop(self._system.signal_early_by),
            watch=weak_callback(self._on_change),
            submitted=self._register,
            scheduler_address=lambda: getattr(self.scheduler, "address", None),
        )
        self._submitter = next(iter(self._submitters.values()))
        self.job_runner = JobRunner(
            self,
            pool=self.job_pool,
            book=self._book,
            submitter=self._submitter,
            guard=self._orphans,
            watcher=self._batchctl.watcher,
            submitters=self._submitters,
        )

        scheduler_spec = self._placement.spec(security)
        # Rotations and scale-downs retire workers on purpose; the scheduler in this
        # process would log each one's closed stream with a traceback.
        quiet_shutdown_tracebacks()
        template = next(iter(templates.values()))
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
            self._orphans.cancel_now()
            if not asynchronous:
                with contextlib.suppress(Exception):
                    self._loop_runner.stop()
            raise
        self._orphans.protect(self)

        initial = jobs_for(self._shape, jobs=options.jobs, workers=options.n_workers)
        if initial and not self.asynchronous:
            try:
                self.scale(jobs=initial)
            except BaseException:
                self.close()
                raise
        elif initial:
            self._initial_jobs = initial

    def _log_directory(self) -> str:
        return self.profile.log_directory or str(self.run_dir.logs_dir)

    # -- starting and stopping -------------------------------------------------------------

    async def _start(self) -> None:
        if self.status in (Status.running, Status.closed):
            await super()._start()
            return
        if self._placement.in_job and self.scheduler is None:
            self.scheduler = await self._placement.start_job(
                self._scheduler_submitted, self._submitter.cancel
            )
            self.periodic_callbacks["jobstrap-heartbeat"] = PeriodicCallback(self._beat, 1000)
        # Walltime-aware rotation: retire and replace jobs before their walltime.
        self.periodic_callbacks["jobstrap-lifetime"] = PeriodicCallback(self._lifetime.tick, 1000)
        await super()._start()
        if isinstance(self.scheduler, Scheduler):
            self.scheduler.add_plugin(AdaptOnNewWork(self))
            install_drain(self.scheduler)  # the rotation drains jobs through it
        elif self._placement.in_job:
            self._beat()
            await self._placement.install_watchdog(self.scheduler_comm)
            await self._placement.install_drain(self.scheduler_comm)
        await install_cluster_metrics(self, self.scheduler)  # in a job: the job series pushed
        self._placement.publish(self.scheduler, self.dashboard_link)
        self._register()
        initial = getattr(self, "_initial_jobs", 0)
        if initial:
            self._initial_jobs = 0
            await self.job_pool.scale_to(initial)

    def _scheduler_submitted(self, job_id: str) -> None:
        self._orphans.add([job_id])
        self._register()

    def _beat(self) -> None:
        """Move the heartbeat the scheduler job's watchdog looks for (synced every second)."""
        self._cluster_info[HEARTBEAT_KEY[1]] = time.time()

    def _register(self) -> None:
        """Record the cluster (kind ``cluster``) so ``jobstrap status/cancel`` find its jobs."""
        ids = set(self._book.ids())
        if self._placement.job_id:
            ids.add(self._placement.job_id)
        address = getattr(self.scheduler, "address", None)
        tags = [t for sub in self._submitters.values() for t in sub.tags]
        tags += filter(None, [self._placement.tag])
        self._registry.save(
            ids, {"scheduler_address": address, "scheduler_job": self._placement.job_id}, tags
        )

    async def _close(self) -> None:
        if self.status == Status.closed:
            return
        try:
            await super()._close()
        finally:
            leftovers = self._orphans.leftovers()
            if leftovers:
                await self._submitter.cancel(leftovers)
            self._batchctl.watcher.untrack(self._book.ids())
            self._orphans.release(self)
            self._registry.finish()

    # -- scaling ---------------------------------------------------------------------------

    def scale(  # type: ignore[override]
        self,
        n: int | None = None,
        jobs: int | None = None,
        memory: str | int | None = None,
        cores: int | None = None,
        pool: str | None = None,
    ) -> Any:
        """Scale a pool to a number of jobs given in jobs, workers, cores or memory.

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
        pool
            The worker pool to scale (default: the first; other pools keep their jobs).

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
        chosen = pick_pool(self.pools, pool)
        target = jobs_for(chosen.shape, jobs=jobs, workers=n, cores=cores, memory=memory)
        if self.asynchronous:
            return asyncio.ensure_future(self.job_pool.scale_to(target, chosen.name))
        return self.sync(self.job_pool.scale_to, target, chosen.name)

    async def scale_down(self, workers: Iterable[Any]) -> None:
        """Close the jobs of these workers (worker or job names; whole jobs go)."""
        await self.job_pool.scale_down(workers)

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
        pools: dict[str, Any] | None = None,
        idle_hold: float | str | None = "auto",
        Adaptive: type[_Adaptive] = JobAdaptive,  # noqa: N803 - distributed's keyword
        **kwargs: Any,
    ) -> _Adaptive:
        """Scale automatically with the load, between bounds counted in whole jobs.

        Bounds may be given in jobs, workers (``minimum``/``maximum``), cores or
        memory; minimums round up to jobs, maximums round down (but allow at least
        one job). ``pools={"cpu": (0, 20), "gpu": (0, 4)}`` adapts each pool in
        jobs from the work that needs it; ``idle_hold`` keeps idle jobs for the pool's
        observed queue wait (``"auto"``, default) or seconds; ``0``: no hold (docs/pools.md).
        ``interval``, ``wait_count``, ``target_duration`` go to ``distributed.Adaptive``.

        Raises
        ------
        ClusterFailedError
            Earlier jobs kept failing and the cluster stopped submitting.
        """
        if self._book.error is not None:
            raise self._book.error
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
        if high != float("inf"):
            high = int(high)
        if self._adaptive is not None:
            self._adaptive.stop()
        pooled = PoolAdaptive.for_cluster(self, pools, idle_hold, (low, high), kwargs, Adaptive)
        if pooled is not None:
            self._adaptive = pooled
            return pooled
        adaptive: _Adaptive = super(SpecCluster, self).adapt(
            Adaptive=Adaptive, minimum=low, maximum=high, **kwargs
        )
        return adaptive

    # -- submitting and cancelling -------------------------------------------------------

    def job_script(self, pool: str | None = None) -> str:
        """The script of one worker job of ``pool`` (default: the first), as submitted now."""
        return self._submitters[pick_pool(self.pools, pool).name].script()

    @property
    def dashboard_link(self) -> str:
        """The dashboard's URL where it listens (by default this node's loopback).

        ``distributed`` builds the link from the scheduler's address, which is not
        where a loopback-bound dashboard answers.
        """
        try:
            port = int(self.scheduler_info["services"]["dashboard"])
        except (KeyError, TypeError, ValueError):
            port = None
        placement = getattr(self, "_placement", None)  # None while __init__ fails
        return (placement.dashboard_link(port) if placement else None) or ""

    @property
    def job_header(self) -> str:
        """The directive lines of the worker jobs' scripts."""
        return self._submitter.header()

    @property
    def job_name(self) -> str:
        """The batch job name of the worker jobs (a submission's tag is appended)."""
        return self.profile.job_name

    async def _correct_state_internal(self) -> None:
        async with self._lock:
            self._correct_state_waiting = None
            await self.job_runner.correct()

    # -- job states --------------------------------------------------------------------------

    def _on_change(self, job_id: str, old: JobState, record: JobRecord) -> None:
        self.job_runner.on_change(job_id, old, record)  # the watcher holds this weakly

    def _update_worker_status(self, op: str, msg: Any) -> None:
        self.job_runner.worker_status(op, msg)  # before distributed forgets the worker
        super()._update_worker_status(op, msg)

    def reset_failures(self) -> None:
        """Forget earlier failures so the cluster submits again (after fixing the cause)."""
        self._book.reset()

    def add_job_callback(self, callback: Callable[[JobStatus], None]) -> None:
        """Call ``callback(JobStatus)`` (in the event loop) after every job state change."""
        self._book.add_callback(callback)

    # -- what users see ------------------------------------------------------------------------

    @property
    def jobs(self) -> dict[str, JobStatus]:
        """The cluster's jobs by job id: state, node, start, time left, workers.

        Pending and running jobs only; jobs being cancelled are no longer listed
        (see :attr:`job_history` for every job ever submitted).
        """
        return self._book.live()

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
        return self._book.history()

    @property
    def failures(self) -> list[JobFailedError]:
        """Every worker-job failure so far (newest last), with its stderr tail."""
        return self._book.failures

    @property
    def error(self) -> ClusterFailedError | None:
        """Why the cluster stopped submitting, or ``None`` while it is healthy."""
        return self._book.error

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
        await self.job_pool.wait_for_workers(n_workers, timeout)

    def __repr__(self) -> str:
        rotation = self._lifetime.summary() if self._lifetime.outgoing else None
        return repr_with_jobs(super().__repr__(), job_counts(self.jobs.values()), rotation)

    def _repr_html_(self, cluster_status: str | None = None) -> str:
        extra = jobs_html(
            self.jobs.values(),
            self._lifetime.describe(),
            system=self.profile.system,
            run_id=self.run_id,
            error=self._book.error,
            pools=len(self.pools) > 1,
        )
        rendered: str = super()._repr_html_(cluster_status=extra + (cluster_status or ""))
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
            return asyncio.ensure_future(self.job_pool.retire_gracefully(job, replace))
        return self.sync(self.job_pool.retire_gracefully, job, replace)


class SLURMCluster(BatchCluster):
    """A Dask cluster of Slurm jobs (see :class:`BatchCluster`)."""

    system: ClassVar[str | None] = "slurm"


class PBSCluster(BatchCluster):
    """A Dask cluster of PBS Pro / OpenPBS jobs (see :class:`BatchCluster`)."""

    system: ClassVar[str | None] = "pbs"


class LocalBatchCluster(BatchCluster):
    """A Dask cluster of local process-group "jobs" (no batch system needed).

    Runs exactly the scripts a cluster would, through ``jobstrap.localq``; for
    laptops, CI and trying a profile out before the queue wait.
    """

    system: ClassVar[str | None] = "local"


#: Which class to use for a profile of another system (named in the error message).
_CLASS_OF_SYSTEM = {c.system: c.__name__ for c in (SLURMCluster, PBSCluster, LocalBatchCluster)}
