"""The workers of one rank (or of a node's worker ranks), from start to drain.

:func:`serve_workers` runs one or more nannies (or workers) until the scheduler
closes them, the scheduler disappears (``death_timeout``) or the batch system asks
the rank to drain (SIGTERM/SIGUSR1/SIGINT: retire gracefully, data moves away; a
second signal closes them at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
from distributed import Security

from jobstrap.bootstrap.signals import BATCH_SIGNALS, SignalPolicy
from jobstrap.bootstrap.silence import LoopStalls, Silence
from jobstrap.engines.dask.forkserver import start_resource_tracker_ignoring_sigusr1
from jobstrap.engines.dask.quiet import logger, say, silence_for_shutdown
from jobstrap.engines.dask.scheduler import SchedulerPinger, scheduler_rpc
from jobstrap.engines.dask.servers import BatchNanny, BatchWorker, HeadlessWorker

__all__ = ["WorkerOptions", "reap_worker_processes", "serve_workers"]


@dataclass
class WorkerOptions:
    """How the workers of one rank are started.

    Attributes
    ----------
    host
        Address to listen on.
    security
        The run's ``distributed.Security``.
    processes
        Worker processes (nannies) on this rank.
    nthreads
        Threads per worker process (``None``: the rank's cores divided by ``processes``).
    memory_limit
        Per worker process: bytes, a string like ``"4GiB"``, or ``"auto"``.
    local_directory
        Scratch directory for spilling.
    death_timeout
        Seconds a worker keeps trying to reach a lost scheduler before it exits.
    lifetime
        Seconds after which each worker retires gracefully (walltime-aware pilots).
    dashboard
        Whether workers serve their HTTP endpoints.
    names
        One name per worker process.
    nanny
        Run each worker in its own process under a nanny (restarts, memory
        limits); if false, workers run in this process.
    worker_class
        The worker class (default: jobstrap's, silenceable at shutdown and
        headless without a dashboard).
    extra
        More keyword arguments for the worker (``worker_options``).
    max_memory_kills
        End the rank once the job's memory limit has killed a worker this many times
        (see :class:`BatchNanny`); None restarts it every time.
    environments
        Per worker process (by index): variables set in it, e.g. a GPU worker's
        ``CUDA_VISIBLE_DEVICES``. Needs nannies (one process per worker).
    resources
        What every worker offers the scheduler (``{"GPU": 1}``).
    join_jitter
        Each worker first connects to the scheduler after a uniform random part of
        this many seconds, so that the thousands of workers of one launch reach it
        spread out (:func:`jobstrap.engines.dask.scale.join_jitter`; jobstrap's worker
        classes only); 0 connects at once.
    """

    host: str
    security: Security
    processes: int = 1
    nthreads: int | None = None
    memory_limit: str | int | float = "auto"
    local_directory: str | None = None
    death_timeout: float = 60.0
    lifetime: float | None = None
    dashboard: bool = True
    names: Sequence[str] = ()
    nanny: bool = True
    worker_class: Any = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    max_memory_kills: int | None = None
    environments: Sequence[Mapping[str, str]] = ()
    resources: Mapping[str, float] | None = None
    join_jitter: float = 0.0


def worker_class(name: str | None) -> Any:
    """The worker class named ``module.Class`` (None: jobstrap's default).

    ``dask_cuda.CUDAWorker`` is accepted when dask-cuda is installed: it is not a
    worker class but runs its own nanny per visible GPU, so it replaces this rank's
    nannies (see :func:`serve_workers`).

    Raises
    ------
    UserError
        One line naming the class when it cannot be imported or is not a worker.
    """
    if not name:
        return None
    import importlib

    from distributed import Worker

    from jobstrap.errors import UserError

    module, _, attribute = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attribute) if module else None
    except (ImportError, AttributeError) as error:
        raise UserError(f"worker_class: cannot import {name!r} ({error})") from None
    if cls is None or not isinstance(cls, type):
        raise UserError(f"worker_class: {name!r} is not a class (expected module.Class)")
    if not issubclass(cls, Worker) and not _is_cuda_worker(cls):
        raise UserError(
            f"worker_class: {name!r} is neither a distributed.Worker subclass "
            "nor dask_cuda.CUDAWorker"
        )
    return cls


#: Seconds a rank whose workers failed to start waits for the scheduler's answer,
#: to tell a worker process's own failure from an unreachable scheduler.
START_FAILURE_PING_S = 5.0


async def _start_failure(
    error: BaseException, options: WorkerOptions, scheduler_address: str, elapsed: float
) -> str:
    """The one line that says why this rank's workers did not start.

    A worker process that fails on its own (a preload or a worker class that
    raises, a bad option) makes the nanny fail too; blaming the network then sends
    the user to the wrong place. Whether the scheduler answers this rank tells
    the two apart.
    """
    what = f"{type(error).__name__}: {error}"
    pinger = SchedulerPinger(scheduler_address, options.security, START_FAILURE_PING_S)
    try:
        reachable = await pinger.ping(START_FAILURE_PING_S)
    finally:
        await pinger.close()
    if reachable:
        return (
            f"workers on {options.host} failed to start after {elapsed:.0f} s ({what}); "
            f"the scheduler at {scheduler_address} answers from this node, so the worker "
            "process itself failed: see its error above (preload, worker class, options)"
        )
    return (
        f"workers on {options.host} could not join the scheduler at {scheduler_address} "
        f"after {elapsed:.0f} s ({what}), and it does not answer from this node; "
        "check that this node can reach the scheduler's network (--interface)"
    )


def _is_cuda_worker(cls: type) -> bool:
    return cls.__module__.split(".")[0] == "dask_cuda" and cls.__name__ == "CUDAWorker"


def _nthreads(options: WorkerOptions) -> int:
    if options.nthreads:
        return options.nthreads
    from dask.system import CPU_COUNT

    return max(1, int(CPU_COUNT) // options.processes)


async def serve_workers(
    scheduler_address: str,
    options: WorkerOptions,
    *,
    on_started: Callable[[list[str]], None] | None = None,
) -> int:
    """Run this rank's workers until they are closed; return the rank's exit code.

    Returns
    -------
    int
        0 when the scheduler closed the workers (normal end) or they retired on a
        drain request; 1 when the scheduler vanished or the workers could not start.
    """
    if options.nanny and dask.config.get("distributed.worker.multiprocessing-method") != "fork":
        # Forked workers share unnamed semaphores, which need no tracker (nor its
        # process); spawned and fork-server workers use named ones, tracked.
        start_resource_tracker_ignoring_sigusr1()
    nannies: list[Any] = []  # nannies, or the workers themselves without nannies
    # Handlers first: the batch system may signal while the workers still start.
    loop = asyncio.get_running_loop()
    state = {"lost": False, "drains": 0}
    started = asyncio.Event()
    tasks: set[asyncio.Future[Any]] = set()  # keep references until done

    def spawn(coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def retire_once_started() -> None:
        await started.wait()
        await _retire(nannies, scheduler_address, options.security)

    def retire(sig: signal.Signals) -> None:
        state["drains"] += 1
        logger.info("%s: retiring this rank's workers gracefully", sig.name)
        spawn(retire_once_started())

    def close_now(sig: signal.Signals) -> None:
        state["drains"] += 1
        logger.info("%s again: closing this rank's workers now", sig.name)
        silence_for_shutdown()
        for nanny in nannies:
            spawn(nanny.close(reason="jobstrap: signal"))

    # SIGINT too: Ctrl-C under mpiexec reaches every rank, and a worker rank should
    # leave in order rather than die with a KeyboardInterrupt traceback. Signals that
    # arrived while this rank was still importing are handled now.
    SignalPolicy(retire, close_now, signals=BATCH_SIGNALS).install_on(loop)

    worker_kwargs: dict[str, Any] = dict(options.extra)
    if options.lifetime:
        worker_kwargs["lifetime"] = f"{options.lifetime}s"
    worker_class = options.worker_class or (BatchWorker if options.dashboard else HeadlessWorker)
    common: dict[str, Any] = {
        "host": options.host,
        "nthreads": _nthreads(options),
        "memory_limit": options.memory_limit,
        "local_directory": options.local_directory,
        "death_timeout": options.death_timeout,
        "security": options.security,
    }
    if options.resources:
        worker_kwargs["resources"] = dict(options.resources)
    # A user's own worker class has no such keyword.
    ours = isinstance(worker_class, type) and issubclass(worker_class, BatchWorker)
    if ours and options.join_jitter > 0:
        worker_kwargs["join_jitter"] = options.join_jitter
    if _is_cuda_worker(worker_class):
        # dask-cuda runs a nanny per visible GPU itself (its own rotation, device
        # memory spilling); it is given the allocation this rank found.
        nannies.append(_cuda_worker(worker_class, scheduler_address, options, common))
    for i in range(0 if nannies else options.processes):
        name = options.names[i] if i < len(options.names) else None
        if options.nanny:
            nanny_class: Any = BatchNanny
            env = options.environments[i] if i < len(options.environments) else None
            nanny = nanny_class(
                scheduler_address,
                name=name,
                worker_class=worker_class,
                env=dict(env) if env else None,
                **common,
                **worker_kwargs,
            )
            nanny.max_memory_kills = options.max_memory_kills
            nannies.append(nanny)
        else:
            nannies.append(worker_class(scheduler_address, name=name, **common, **worker_kwargs))

    starting = time.monotonic()
    try:
        await asyncio.gather(*(nanny.start() for nanny in nannies))
    except Exception as error:
        silence_for_shutdown()
        await asyncio.gather(
            *(n.close(reason="jobstrap: start failed") for n in nannies), return_exceptions=True
        )
        reap_worker_processes()
        if state["drains"]:
            # Asked to go away while starting: a worker process signalled before it
            # could ignore the signal may have died; either way this rank is done.
            logger.info("drain requested while the workers started; leaving")
            return 0
        say(await _start_failure(error, options, scheduler_address, time.monotonic() - starting))
        return 1
    addresses = [a for n in nannies for a in _worker_addresses(n)]
    started.set()
    logger.info("workers %s joined %s", ", ".join(addresses), scheduler_address)
    if on_started is not None:
        on_started(addresses)

    async def watchdog() -> None:
        interval = max(0.5, min(5.0, options.death_timeout / 4))
        pinger = SchedulerPinger(scheduler_address, options.security, interval * 2)
        try:
            with LoopStalls() as stalls:
                await _watch(pinger, interval, Silence(options.death_timeout, stalls))
        finally:
            await pinger.close()

    async def _watch(pinger: SchedulerPinger, interval: float, silence: Silence) -> None:
        # Silence, not wall time: a stall of this rank's own loop (its nannies busy,
        # the node's CPUs overcommitted) is not the scheduler being gone.
        while True:
            await asyncio.sleep(interval)
            if await pinger.answered(interval * 2, options.death_timeout):
                silence.heard()
            elif silence.lost():
                state["lost"] = True
                silence_for_shutdown()
                say(
                    f"scheduler at {scheduler_address} unreachable {silence.account()}; "
                    "stopping this rank's workers"
                )
                await asyncio.gather(
                    *(n.close(reason="jobstrap: scheduler lost") for n in nannies),
                    return_exceptions=True,
                )
                return

    watcher = asyncio.ensure_future(watchdog())
    try:
        await asyncio.gather(*(nanny.finished() for nanny in nannies))
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        reap_worker_processes()
    out_of_memory = any(
        options.max_memory_kills and getattr(n, "memory_kills", 0) >= options.max_memory_kills
        for n in nannies
    )
    return 1 if state["lost"] or out_of_memory else 0


def reap_worker_processes(timeout: float = 5.0) -> list[int]:
    """Kill the worker processes still alive once this rank's nannies are done; return their pids.

    A nanny whose close fails (e.g. its worker was still starting when a 256-rank
    launch on two cores gave up on the nannies) leaves its worker running. That
    worker ignores SIGTERM (as a batch job's workers must, to drain) and keeps no
    connection to a scheduler that is gone, and multiprocessing joins every child
    when the interpreter exits: the rank would wait for it until the allocation's
    walltime. Normally nothing is left and this does nothing.
    """
    import multiprocessing

    killed = []
    for child in multiprocessing.active_children():  # also joins the finished ones
        if child.pid is None:
            continue
        say(f"worker process {child.pid} outlived its nanny; killing it")
        child.kill()
        child.join(timeout)
        killed.append(child.pid)
    return killed


def _cuda_worker(
    cls: Any, scheduler_address: str, options: WorkerOptions, common: dict[str, Any]
) -> Any:
    """A ``dask_cuda.CUDAWorker`` over the devices this rank was given."""
    import os

    devices = [e["CUDA_VISIBLE_DEVICES"] for e in options.environments if e]
    if devices:
        # Each entry is one worker's rotation; its first device is that worker's own.
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(d.split(",")[0] for d in devices)
    prefix = options.names[0].rsplit("-", 1)[0] if options.names else None
    return _CudaWorkers(
        cls(
            scheduler_address,
            nthreads=common["nthreads"],
            memory_limit=common["memory_limit"],
            local_directory=common["local_directory"],
            death_timeout=common["death_timeout"],
            security=common["security"],
            host=common["host"],
            name=prefix,
        )
    )


class _CudaWorkers:
    """dask-cuda's ``CUDAWorker`` (a group of nannies) seen as one nanny here."""

    def __init__(self, group: Any) -> None:
        self.group = group

    async def start(self) -> None:
        await self.group  # starts its nannies

    async def finished(self) -> None:
        await self.group.finished()

    async def close(self, reason: str = "") -> None:
        await self.group.close()


def _worker_addresses(server: Any) -> list[str]:
    """The worker addresses of a nanny, a worker, or dask-cuda's group of nannies."""
    group = getattr(server, "group", None)
    if group is not None:
        return [_worker_address(n) for n in group.nannies]
    return [_worker_address(server)]


def _worker_address(server: Any) -> str:
    """The worker address of a nanny, or of a worker itself."""
    return str(getattr(server, "worker_address", None) or server.address)


async def _retire(nannies: Sequence[Any], scheduler_address: str, security: Security) -> None:
    addresses = [a for n in nannies for a in _worker_addresses(n)]
    try:
        async with scheduler_rpc(scheduler_address, security) as scheduler:
            await scheduler.retire_workers(
                workers=addresses,
                close_workers=True,
                remove=True,
                stimulus_id=f"jobstrap-drain-{time.time()}",
            )
    except Exception as error:
        logger.info("graceful retirement failed (%s); closing workers", error)
    # Whatever the scheduler did, this rank is going away.
    silence_for_shutdown()
    await asyncio.gather(
        *(n.close(reason="jobstrap: drained") for n in nannies), return_exceptions=True
    )
