"""Dask's server classes as a batch job runs them: quiet, headless, signal-proof.

* :class:`BatchWorker` and :class:`BatchNanny` can be silenced by the scheduler
  rank before it closes them (``jobstrap_quiet``); a nanny's worker process leaves
  the batch system's signals to its nanny and lets go of inherited sockets; a full
  local directory fails the task that needs it; a nanny can end a job whose memory
  limit keeps killing its worker.
* ``--no-dashboard`` means no HTTP server at all: :class:`HeadlessScheduler` and
  :class:`HeadlessWorker` skip it (stock ``distributed`` binds :8787 even with
  the dashboard off).

This is the module the fork server preloads (:mod:`jobstrap.engines.dask.forkserver`):
forked workers find ``distributed`` and these classes already imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import signal
import socket
import stat
import threading
from collections.abc import Iterator
from typing import Any

from distributed import Nanny, Scheduler, Worker
from distributed.spill import SpillBuffer

from jobstrap.bootstrap import signals
from jobstrap.engines.dask import samehost
from jobstrap.engines.dask.metrics import worker_service_kwargs
from jobstrap.engines.dask.quiet import (
    logger,
    quiet_shutdown_tracebacks,
    say,
    silence_for_shutdown,
)

__all__ = [
    "BatchNanny",
    "BatchWorker",
    "HeadlessScheduler",
    "HeadlessWorker",
    "LocalDirectoryFullError",
    "oom_kills",
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
    signals.ignore(signals.BATCH_SIGNALS)
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

    #: Open the HTTPS metrics listener (``jobstrap.engines.dask.metrics``).
    serves_metrics = True

    def __init__(self, *args: Any, join_jitter: float = 0.0, **kwargs: Any) -> None:
        #: Seconds (at most) to wait before first connecting to the scheduler: see
        #: :func:`jobstrap.engines.dask.scale.join_jitter`.
        self.join_jitter = float(join_jitter)
        self._joined_once = False
        _leave_signals_to_the_nanny()
        quiet_shutdown_tracebacks()  # also in a nanny's worker process
        samehost.install()  # likewise: a spawned worker starts without it
        if self.serves_metrics:
            worker_service_kwargs(kwargs)  # the HTTPS metrics endpoint and its labels
        super().__init__(*args, **kwargs)
        self.handlers["jobstrap_quiet"] = _quiet
        data = self.memory_manager.data
        if type(data) is SpillBuffer:  # not a user's own mapping
            buffer: Any = data
            buffer.__class__ = _SpillBuffer
            buffer.directory = str(self.local_directory)

    async def join_pause(self) -> None:
        """Wait a random part of :attr:`join_jitter` (the first registration only)."""
        if self.join_jitter > 0:
            await asyncio.sleep(random.uniform(0, self.join_jitter))

    async def _register_with_scheduler(self) -> None:
        # The listener is open and the worker built: only the connect is spread out.
        if not self._joined_once:
            self._joined_once = True
            await self.join_pause()
        await super()._register_with_scheduler()

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
    """A worker that binds no HTTP port (metrics included)."""

    serves_metrics = False

    def start_http_server(
        self, routes: Any, dashboard_address: Any, default_port: int = 0, ssl_options: Any = None
    ) -> None:
        _no_http_server(self, routes)
