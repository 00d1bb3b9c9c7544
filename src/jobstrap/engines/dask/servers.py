"""Starting and stopping the Dask scheduler and workers inside a job.

The engine is ``distributed`` itself; this module only decides *where* they
listen, *when* they stop and *how quietly*:

* :class:`SchedulerRunner` runs a scheduler on its own thread and event loop, so
  the rank's main thread stays free for MPI calls, signal handlers and (with
  ``--client-on-scheduler-rank``) the app. It adds the handlers that the client
  rank calls (``jobstrap_heartbeat``, ``jobstrap_done``, ``jobstrap_wait_workers``)
  and stops the run when the client is done or has vanished: workers first,
  scheduler last, with the noisy loggers silenced.
* :func:`serve_workers` runs one or more nannies on a rank until the scheduler
  closes them, the scheduler disappears (``death_timeout``) or the batch system
  asks the rank to drain (SIGTERM/SIGUSR1: retire gracefully, data moves away).
* ``--no-dashboard`` means no HTTP server at all: :class:`HeadlessScheduler` and
  :class:`HeadlessWorker` skip it (stock ``distributed`` binds :8787 even with
  the dashboard off).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import os
import signal
import socket
import stat
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
from distributed import Nanny, Scheduler, Security, Worker
from distributed.core import rpc
from distributed.spill import SpillBuffer

from jobstrap.bootstrap.drain import early_signals
from jobstrap.engines.dask import samehost
from jobstrap.engines.dask.quiet import (
    logger,
    quiet_closed_comm_tracebacks,
    say,
    silence_for_shutdown,
)

__all__ = [
    "BatchNanny",
    "BatchWorker",
    "HeadlessScheduler",
    "HeadlessWorker",
    "SchedulerPinger",
    "SchedulerRunner",
    "WorkerOptions",
    "serve_workers",
]


def _no_http_server(node: Any, routes: Any) -> None:
    from distributed.http.routing import RoutingApplication

    # _stop_services walks http_application.applications; keep that attribute and
    # never create or bind a server.
    application: Any = RoutingApplication
    node.http_application = application(routes)


def _quiet() -> str:
    silence_for_shutdown()
    return "ok"


class HeadlessScheduler(Scheduler):
    """A scheduler that binds no HTTP port (no dashboard, health or metrics)."""

    def start_http_server(
        self, routes: Any, dashboard_address: Any, default_port: int = 0, ssl_options: Any = None
    ) -> None:
        _no_http_server(self, routes)


def _leave_signals_to_the_nanny() -> None:
    """In a nanny's worker process, ignore the batch system's signals.

    Slurm signals every process of a step and Ctrl-C under mpiexec reaches the
    whole process group, so worker processes get SIGTERM/SIGINT/SIGUSR1 along
    with their rank. Their nanny (the rank) drains or closes them in order; dying
    on their own would print tracebacks and make the nanny restart them. The
    nanny never relies on these signals itself: it stops a worker through its
    control queue and, if need be, SIGKILL.
    """
    import multiprocessing

    if multiprocessing.parent_process() is None:
        return  # not a nanny's child: the rank's own handlers apply
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)
    _release_inherited_sockets()


def _release_inherited_sockets() -> None:
    """In a forked worker process, let go of the network sockets it inherited.

    A worker forked by its nanny starts with a copy of every descriptor of the
    process it was forked from: its nanny's listener and connections, those of
    the sibling nannies of the same rank, and what the MPI library left open
    (MPICH keeps a listener on 0.0.0.0 after ``MPI_Finalize``). Kept, they hold
    ports open after their owners close them (a peer connecting to a nanny that
    has gone would wait instead of being refused) and a closed connection
    half-alive. Each network socket is replaced by ``/dev/null`` under the same
    number, so the inherited Python objects that still name it close
    ``/dev/null``, never a socket of the worker's own. Called before the worker
    opens any socket; a spawned worker has none to release.
    """
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for name in names:
            fd = int(name)
            if fd == devnull or not _is_network_socket(fd):
                continue
            with contextlib.suppress(OSError):
                os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _is_network_socket(fd: int) -> bool:
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return False
        probe = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    try:
        return probe.family in (socket.AF_INET, socket.AF_INET6)
    finally:
        probe.close()  # the duplicate only


class LocalDirectoryFullError(RuntimeError):
    """A task's result could not be spilled: the worker's local directory is full."""


class _SpillBuffer(SpillBuffer):
    """distributed's SpillBuffer, except that a full disk fails the task it hits.

    distributed keeps data in memory when spilling fails ("Spill to disk failed;
    keeping data in memory"); the worker then pauses above its memory limit and,
    with nothing left to spill to, never resumes: the computation hangs. Here the
    task whose result could not be stored fails with :class:`LocalDirectoryFullError`
    naming the directory, so the user gets an error instead of a hang.
    """

    directory = ""

    @contextlib.contextmanager
    def _handle_errors(self, key: Any) -> Iterator[None]:
        with super()._handle_errors(key):
            try:
                yield
            except OSError as error:
                if error.errno != errno.ENOSPC or key is None or key not in self.fast:
                    raise  # distributed's handling: logged, the data stays in memory
                del self[key]
                raise LocalDirectoryFullError(
                    f"the worker's local directory {self.directory} is full ({error.strerror}):"
                    f" the result of {key!r} cannot be spilled to disk; free space there,"
                    " give the workers more memory, or choose another local_directory"
                ) from None


class BatchWorker(Worker):
    """A worker the scheduler rank can silence before it closes it (``jobstrap_quiet``).

    A full local directory fails the task that needs it (see :class:`_SpillBuffer`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _leave_signals_to_the_nanny()
        quiet_closed_comm_tracebacks()  # also in a nanny's worker process
        samehost.install()  # likewise: a spawned worker starts without it
        super().__init__(*args, **kwargs)
        self.handlers["jobstrap_quiet"] = _quiet
        data = self.memory_manager.data
        if type(data) is SpillBuffer:  # not a user's own mapping
            buffer: Any = data
            buffer.__class__ = _SpillBuffer
            buffer.directory = str(self.local_directory)

    async def close(self, *args: Any, **kwargs: Any) -> Any:
        """Close, saying why in one line, then without the echo of closing connections.

        However it ends (told by the scheduler, lifetime, drain, lost scheduler),
        a batch worker closes for good: a nanny restarts a *new* process. The
        closing itself only produces noise, including a race in distributed's
        worker process where a stop-queue thread logs a traceback at exit.
        """
        if self.status.name not in {"closing", "closed", "failed"}:
            import logging

            reason = kwargs.get("reason", "worker-close")
            logging.getLogger("distributed.worker").info(
                "Stopping worker at %s. Reason: %s", self.address_safe, reason
            )
            silence_for_shutdown()
        return await super().close(*args, **kwargs)


class BatchNanny(Nanny):
    """A nanny the scheduler rank can silence before it closes it (``jobstrap_quiet``).

    With :attr:`max_memory_kills` set (notebook clusters' worker jobs), it stops
    restarting a worker that the job's memory limit keeps killing: once the kernel's
    OOM killer (counted in the job's memory cgroup) has ended it that many times,
    the job is too small for its work. The nanny then closes and the job ends, so
    that the cluster sees the failure and replaces the job or gives up after
    ``max_failures``, instead of the worker being restarted into the same wall until
    the walltime. Unset (one allocation, where no job replaces it), the worker is
    restarted as distributed does and the task fails with ``KilledWorker``.
    """

    #: Worker deaths by the job's memory limit that end the job; None: restart always.
    max_memory_kills: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handlers["jobstrap_quiet"] = _quiet
        self.memory_kills = 0
        self._oom_kills_seen = oom_kills()

    async def _on_worker_exit(self, exitcode: int) -> None:
        limit = self.max_memory_kills
        if limit and exitcode == -signal.SIGKILL and self.status.name not in ("closing", "closed"):
            seen = oom_kills()
            if (
                seen is not None
                and self._oom_kills_seen is not None
                and seen > self._oom_kills_seen
            ):
                self._oom_kills_seen = seen
                self.memory_kills += 1
                if self.memory_kills >= limit:
                    say(
                        f"the job's memory limit killed the worker {self.memory_kills} times "
                        "(the kernel's OOM killer); ending this job: its memory is too small "
                        "for its work (raise memory= or lower processes=)"
                    )
                    await self.close(reason="jobstrap: out of memory")
                    return
                logger.warning("the job's memory limit killed the worker; restarting it")
        await super()._on_worker_exit(exitcode)


def oom_kills() -> int | None:
    """Processes the kernel's OOM killer ended in this process's memory cgroup (or above).

    Read from ``memory.oom_control`` (cgroup v1) or ``memory.events`` (v2) of the
    cgroup and each parent up to the mount; the largest count wins. ``None`` when
    there is no memory cgroup to read (then no death is blamed on memory).
    """
    from pathlib import Path

    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            root, name = Path("/sys/fs/cgroup/memory"), "memory.oom_control"
        elif controllers == "":
            root, name = Path("/sys/fs/cgroup"), "memory.events"
        else:
            continue
        counts = []
        directory = root / path.lstrip("/")
        while True:
            with contextlib.suppress(OSError, ValueError):
                for entry in (directory / name).read_text().splitlines():
                    key, _, value = entry.partition(" ")
                    if key == "oom_kill":
                        counts.append(int(value))
            if directory == root or root not in directory.parents:
                break
            directory = directory.parent
        if counts:
            return max(counts)
    return None


class HeadlessWorker(BatchWorker):
    """A worker that binds no HTTP port."""

    def start_http_server(
        self, routes: Any, dashboard_address: Any, default_port: int = 0, ssl_options: Any = None
    ) -> None:
        _no_http_server(self, routes)


# ---------------------------------------------------------------------------- scheduler


@dataclass
class _Outcome:
    code: int
    reason: str | None
    #: The workers are unreachable: do not wait for them to say goodbye.
    workers_lost: bool = False


class SchedulerRunner:
    """A scheduler on its own thread, and the rules for ending the run.

    Parameters
    ----------
    host
        Address to listen on (from :mod:`jobstrap.net.network`).
    protocol
        ``"tls"`` or ``"tcp"``.
    security
        The run's ``distributed.Security``.
    dashboard
        Serve the dashboard on ``host:dashboard_port``; if false bind no HTTP port.
    dashboard_port
        Preferred dashboard port (a free one if busy or 0).
    idle_timeout
        Close when no client has been active for this long (scheduler mode).
    """

    def __init__(
        self,
        *,
        host: str,
        protocol: str,
        security: Security,
        dashboard: bool = True,
        dashboard_port: int = 8787,
        idle_timeout: float | None = None,
    ) -> None:
        self.host = host
        self.protocol = protocol
        self.security = security
        self.dashboard = dashboard
        self.dashboard_port = dashboard_port
        self.idle_timeout = idle_timeout
        self.scheduler: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started: concurrent.futures.Future[str] = concurrent.futures.Future()
        self._done: concurrent.futures.Future[_Outcome] = concurrent.futures.Future()
        self._finish: asyncio.Future[_Outcome] | None = None
        self.last_heartbeat: float | None = None
        self.client_checked_in = threading.Event()
        self._last_worker_contact: float | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 60.0) -> str:
        """Start the scheduler thread; return the scheduler's address once listening.

        Raises whatever starting the scheduler raised (e.g. ``OSError`` on bind).
        """
        self._thread = threading.Thread(target=self._main, name="jobstrap-scheduler", daemon=True)
        self._thread.start()
        return self._started.result(timeout)

    @property
    def address(self) -> str:
        """``tls://host:port`` of the running scheduler."""
        return str(self.scheduler.address)

    @property
    def dashboard_address(self) -> str | None:
        """``http://host:port/status``, or ``None`` without a dashboard."""
        if not self.dashboard or self.scheduler is None:
            return None
        server = self.scheduler.services.get("dashboard")
        if server is None:
            return None
        return f"http://{self.host}:{server.port}/status"

    def identity(self, timeout: float = 30.0) -> dict[str, Any]:
        """The scheduler's ``identity()`` (the content of ``scheduler.json``)."""
        assert self.loop is not None

        async def get() -> dict[str, Any]:
            return dict(self.scheduler.identity())

        return asyncio.run_coroutine_threadsafe(get(), self.loop).result(timeout)

    def finish(self, code: int, reason: str | None = None) -> None:
        """End the run with ``code`` (thread-safe; the first call wins)."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # loop already stopped
            loop.call_soon_threadsafe(self._set_finish, code, reason)

    def wait(self, timeout: float | None = None) -> int:
        """Block until the run has ended and the scheduler is closed; return the code.

        Waits in short slices so the main thread keeps handling signals.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            slice_ = 0.5 if deadline is None else min(0.5, max(0.0, deadline - time.monotonic()))
            try:
                outcome = self._done.result(slice_)
            except concurrent.futures.TimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                continue
            if outcome.reason:
                say(outcome.reason)
            return outcome.code

    def watch_client(self, *, death_timeout: float, first_contact_timeout: float) -> None:
        """Stop the run if the client rank never checks in or stops heart-beating.

        Also stop it when every worker has been silent for ``death_timeout`` after
        some had joined: in one allocation no worker comes back (each gives up on
        its own after the same time), and a client with no workers would wait for
        its results until the walltime (the scheduler's node cut off the network,
        every worker rank killed).
        """
        assert self.loop is not None
        asyncio.run_coroutine_threadsafe(
            self._watch_client(death_timeout, first_contact_timeout), self.loop
        )

    # ------------------------------------------------------------------- internals
    def _set_finish(self, code: int, reason: str | None, *, workers_lost: bool = False) -> None:
        if self._finish is not None and not self._finish.done():
            self._finish.set_result(_Outcome(code, reason, workers_lost))

    def _main(self) -> None:
        try:
            outcome = asyncio.run(self._serve())
        except BaseException as error:  # reported to whoever waits
            if not self._started.done():
                self._started.set_exception(error)
            if not self._done.done():
                self._done.set_exception(error)
            return
        if not self._done.done():
            self._done.set_result(outcome)

    async def _serve(self) -> _Outcome:
        self.loop = asyncio.get_running_loop()
        self._finish = self.loop.create_future()
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": 0,
            "protocol": self.protocol,
            "security": self.security,
            "dashboard": self.dashboard,
            "idle_timeout": self.idle_timeout,
        }
        cls: Any = Scheduler
        if self.dashboard:
            kwargs["dashboard_address"] = f"{self.host}:{self.dashboard_port}"
        else:
            cls = HeadlessScheduler
        with warnings.catch_warnings():
            # A busy preferred port falls back to a free one; the real port is in
            # info.json, so distributed's multi-line warning is only noise.
            warnings.filterwarnings("ignore", message=r"(?s)Port \d+ is already in use")
            scheduler: Any = cls(**kwargs)
            await scheduler
        self.scheduler = scheduler
        scheduler.handlers["jobstrap_heartbeat"] = self._heartbeat
        scheduler.handlers["jobstrap_done"] = self._client_done
        scheduler.handlers["jobstrap_wait_workers"] = self._wait_workers
        self._started.set_result(scheduler.address)

        finished = asyncio.ensure_future(scheduler.finished())
        await asyncio.wait([self._finish, finished], return_when=asyncio.FIRST_COMPLETED)
        # Not finished by us: closed from elsewhere (idle timeout, a client's shutdown()).
        outcome = self._finish.result() if self._finish.done() else _Outcome(0, None)
        await shutdown_scheduler(scheduler, timeout=0 if outcome.workers_lost else 30.0)
        return outcome

    def _heartbeat(self) -> str:
        self.last_heartbeat = time.monotonic()
        self.client_checked_in.set()
        return "ok"

    def _client_done(self, code: int = 0) -> str:
        self._set_finish(int(code), None)
        return "ok"

    async def _wait_workers(self, n: int = 1, wait: float = 0.0) -> int:
        """Answer once ``n`` workers are connected or ``wait`` seconds passed: the count.

        The client rank starts the app the moment its workers are there; asking
        here, next to the worker list, costs one call instead of a new connection
        every fraction of a second, and is late by at most one short tick.
        """
        deadline = time.monotonic() + float(wait)
        while len(self.scheduler.workers) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return len(self.scheduler.workers)

    def _workers_silent_for(self) -> float | None:
        """Seconds since any worker was last heard from; None before the first joined.

        A worker that left counts as silent since it left (``last_seen`` goes with
        it), one that is still listed but unreachable since its last heartbeat.
        """
        from distributed.metrics import time as dask_time  # the clock last_seen is on

        workers = list(self.scheduler.workers.values())
        now = dask_time()
        if workers:
            self._last_worker_contact = max(ws.last_seen for ws in workers)
        if self._last_worker_contact is None:
            return None
        return max(0.0, now - self._last_worker_contact)

    async def _watch_client(self, death_timeout: float, first_contact_timeout: float) -> None:
        started = time.monotonic()
        interval = max(0.2, min(2.0, death_timeout / 5))
        checked = time.monotonic()
        while self._finish is not None and not self._finish.done():
            await asyncio.sleep(interval)
            # After a stall of this event loop (a huge graph arriving), heartbeats wait
            # unread in the sockets: judge the workers only once the loop is fluent.
            fluent = time.monotonic() - checked < 2 * interval + 1
            checked = time.monotonic()
            silent = self._workers_silent_for()
            if fluent and silent is not None and silent > death_timeout:
                self._set_finish(
                    1,
                    f"no worker has been reachable for {silent:.0f} s (their ranks died or "
                    "their nodes lost the network); stopping the run",
                    workers_lost=True,
                )
                return
            now = time.monotonic()
            if self.last_heartbeat is None:
                if now - started > first_contact_timeout:
                    self._set_finish(
                        1,
                        f"the client rank never checked in within {first_contact_timeout:.0f} s "
                        "(did all ranks start? is rank 1 alive?); stopping the run",
                    )
            elif now - self.last_heartbeat > death_timeout:
                self._set_finish(
                    1,
                    f"the client rank stopped responding {death_timeout:.0f} s ago "
                    "(crashed or killed; see its output above); stopping the run",
                )


async def shutdown_scheduler(scheduler: Any, timeout: float = 30.0) -> None:
    """Close every worker through the scheduler, wait for them to go, then close it.

    Workers that are told to close say goodbye and disconnect in order; closing
    the scheduler first instead makes every worker and client log a broken
    connection. The noisy loggers are silenced first. ``timeout=0`` skips the
    goodbyes (the workers are unreachable: each attempt would only time out).
    """
    silence_for_shutdown()
    if scheduler.status.name not in {"closing", "closed"} and timeout > 0:
        # Workers and nannies run in other processes: ask them to be quiet too.
        quiet = {"op": "jobstrap_quiet"}
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                asyncio.gather(
                    scheduler.broadcast(msg=quiet, on_error="ignore"),
                    scheduler.broadcast(msg=quiet, nanny=True, on_error="ignore"),
                ),
                timeout=5,
            )
        for address in list(scheduler.workers):
            scheduler.close_worker(address)
        deadline = time.monotonic() + timeout
        while scheduler.workers and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    with contextlib.suppress(Exception):
        await scheduler.close(reason="jobstrap: run finished")


def scheduler_rpc(address: str, security: Any, timeout: float | None = None) -> Any:
    """An ``rpc`` to the scheduler with the client role's TLS settings."""
    make: Any = rpc
    return make(address, connection_args=security.get_connection_args("client"), timeout=timeout)


class SchedulerPinger:
    """Asks the scheduler whether it is alive, over one connection kept open.

    A rank's watchdog pings every few seconds. A new TLS connection per ping made a
    large launch attack its own scheduler: with 64 ranks on a loaded node the
    scheduler's event loop spent its time in handshakes, pings timed out, and ranks
    gave up on a scheduler that was only busy. One kept connection makes a ping a
    single small message (``identity`` without the worker list); a frozen scheduler
    still fails it, since nobody answers.
    """

    def __init__(self, address: str, security: Security, timeout: float) -> None:
        self._rpc = scheduler_rpc(address, security, timeout)
        self._small = True  # identity(n_workers=0) until the scheduler refuses it

    async def ping(self, timeout: float) -> bool:
        """Whether the scheduler answered within ``timeout`` seconds."""
        try:
            if self._small:
                try:
                    await asyncio.wait_for(self._rpc.identity(n_workers=0), timeout)
                    return True
                except TypeError:
                    self._small = False  # an older scheduler: the whole identity
            await asyncio.wait_for(self._rpc.identity(), timeout)
            return True
        except Exception:
            return False

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._rpc.close_rpc()


# ------------------------------------------------------------------------------ workers


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
        _start_resource_tracker_ignoring_sigusr1()
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

    def drain(signame: str) -> None:
        state["drains"] += 1
        if state["drains"] == 1:
            logger.info("%s: retiring this rank's workers gracefully", signame)
            spawn(retire_once_started())
        else:
            logger.info("%s again: closing this rank's workers now", signame)
            silence_for_shutdown()
            for nanny in nannies:
                spawn(nanny.close(reason="jobstrap: signal"))

    # SIGINT too: Ctrl-C under mpiexec reaches every rank, and a worker rank should
    # leave in order rather than die with a KeyboardInterrupt traceback.
    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(signum, drain, signal.Signals(signum).name)
    for signame in early_signals():  # arrived while this rank was still importing
        drain(signame)

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
    for i in range(options.processes):
        name = options.names[i] if i < len(options.names) else None
        if options.nanny:
            nanny_class: Any = BatchNanny
            nanny = nanny_class(
                scheduler_address,
                name=name,
                worker_class=worker_class,
                **common,
                **worker_kwargs,
            )
            nanny.max_memory_kills = options.max_memory_kills
            nannies.append(nanny)
        else:
            nannies.append(worker_class(scheduler_address, name=name, **common, **worker_kwargs))
    try:
        await asyncio.gather(*(nanny.start() for nanny in nannies))
    except Exception as error:
        silence_for_shutdown()
        await asyncio.gather(
            *(n.close(reason="jobstrap: start failed") for n in nannies), return_exceptions=True
        )
        if state["drains"]:
            # Asked to go away while starting: a worker process signalled before it
            # could ignore the signal may have died; either way this rank is done.
            logger.info("drain requested while the workers started; leaving")
            return 0
        say(
            f"workers on {options.host} could not join the scheduler at {scheduler_address} "
            f"within {options.death_timeout:.0f} s ({type(error).__name__}: {error}); "
            "check that this node can reach the scheduler's network (--interface)"
        )
        return 1
    addresses = [_worker_address(n) for n in nannies]
    started.set()
    logger.info("workers %s joined %s", ", ".join(addresses), scheduler_address)
    if on_started is not None:
        on_started(addresses)

    async def watchdog() -> None:
        interval = max(0.5, min(5.0, options.death_timeout / 4))
        pinger = SchedulerPinger(scheduler_address, options.security, interval * 2)
        try:
            await _watch(pinger, interval)
        finally:
            await pinger.close()

    async def _watch(pinger: SchedulerPinger, interval: float) -> None:
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            if await pinger.ping(interval * 2):
                last_ok = time.monotonic()
            elif time.monotonic() - last_ok > options.death_timeout:
                state["lost"] = True
                silence_for_shutdown()
                say(
                    f"scheduler at {scheduler_address} unreachable for "
                    f"{options.death_timeout:.0f} s; stopping this rank's workers"
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
    out_of_memory = any(
        options.max_memory_kills and getattr(n, "memory_kills", 0) >= options.max_memory_kills
        for n in nannies
    )
    return 1 if state["lost"] or out_of_memory else 0


def start_fork_server() -> None:
    """Start multiprocessing's fork server with Dask imported and signals left to the nanny.

    Its preload is this module (``distributed`` and the worker classes), not the
    list distributed would choose (every optional package it finds, pandas
    included), which would cost each node seconds of CPU for nothing the workers
    need at start. Like the resource tracker, the server is one of the rank's
    helper processes: the batch system's SIGTERM/SIGUSR1/SIGINT reach it too, and
    it must outlive them (its nannies drain their workers, and a nanny restarting a
    worker needs it); it ends by itself when this process ends. Ignored
    dispositions survive exec, so it starts with them ignored.
    """
    import multiprocessing
    from multiprocessing import forkserver

    import distributed.utils

    multiprocessing.get_context("forkserver").set_forkserver_preload([__name__])
    if hasattr(distributed.utils, "_forkserver_preload_set"):
        distributed.utils._forkserver_preload_set = True
    if threading.current_thread() is not threading.main_thread():
        return
    signals = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in signals}
    try:
        forkserver.ensure_running()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _start_resource_tracker_ignoring_sigusr1() -> None:
    """Start multiprocessing's resource tracker with SIGUSR1 ignored.

    The first nanny starts the tracker, a helper process that ignores SIGINT and
    SIGTERM but dies of SIGUSR1, which Slurm sends to every process of a step
    (``--signal=USR1@...``, ``scancel --signal=USR1``). Relaunched, it prints a
    KeyError traceback for every resource it never saw. An ignored disposition
    survives exec, so starting it now, with SIGUSR1 ignored, keeps it alive.
    """
    from multiprocessing import resource_tracker

    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        resource_tracker.ensure_running()
    finally:
        signal.signal(signal.SIGUSR1, previous)


def _worker_address(server: Any) -> str:
    """The worker address of a nanny, or of a worker itself."""
    return str(getattr(server, "worker_address", None) or server.address)


async def _retire(nannies: Sequence[Any], scheduler_address: str, security: Security) -> None:
    addresses = [_worker_address(n) for n in nannies]
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
