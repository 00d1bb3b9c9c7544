"""The Dask scheduler of a run, on its own thread, and the rules for ending the run.

:class:`SchedulerRunner` runs a scheduler on its own thread and event loop, so the
rank's main thread stays free for MPI calls, signal handlers and (with
``--client-on-scheduler-rank``) the app. It adds the handlers that the client rank
calls (``jobstrap_heartbeat``, ``jobstrap_done``, ``jobstrap_wait_workers``) and
stops the run when the client is done or has vanished: workers first, scheduler
last, with the noisy loggers silenced (:func:`shutdown_scheduler`).
:class:`SchedulerPinger` is how other ranks see that it is still there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any

from distributed import Scheduler, Security
from distributed.core import rpc

from jobstrap.bootstrap.silence import LoopStalls, Silence
from jobstrap.engines.dask.quiet import say, silence_for_shutdown
from jobstrap.engines.dask.servers import HeadlessScheduler

__all__ = [
    "LOOPBACK",
    "SchedulerPinger",
    "SchedulerRunner",
    "dashboard_host",
    "scheduler_rpc",
    "shutdown_scheduler",
]

#: Where a dashboard listens by default: the node's own loopback.
LOOPBACK = "127.0.0.1"


def dashboard_host(host: str, bind: str) -> str:
    """The address the dashboard listens on: loopback, or ``host`` for ``"interface"``.

    Raises
    ------
    ValueError
        For a ``bind`` that is neither ``"loopback"`` nor ``"interface"``.
    """
    if bind == "loopback":
        return LOOPBACK
    if bind == "interface":
        return host
    raise ValueError(f"dashboard_bind must be loopback or interface, not {bind!r}")


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
        Serve the dashboard; if false bind no HTTP port.
    dashboard_port
        Preferred dashboard port (a free one if busy or 0).
    dashboard_bind
        ``"loopback"`` (default): the dashboard listens on this node's ``127.0.0.1``
        only, since it is plain HTTP without a login and shows tasks, logs and stack
        traces; ``jobstrap tunnel`` reaches it through the node. ``"interface"``: on
        ``host``, where anyone on that network can read it (the caller warns).
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
        dashboard_bind: str = "loopback",
        idle_timeout: float | None = None,
    ) -> None:
        self.host = host
        self.protocol = protocol
        self.security = security
        self.dashboard = dashboard
        self.dashboard_port = dashboard_port
        #: The address the dashboard listens on.
        self.dashboard_host = dashboard_host(host, dashboard_bind)
        self.idle_timeout = idle_timeout
        self.scheduler: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started: concurrent.futures.Future[str] = concurrent.futures.Future()
        self._done: concurrent.futures.Future[_Outcome] = concurrent.futures.Future()
        self._finish: asyncio.Future[_Outcome] | None = None
        self.last_heartbeat: float | None = None
        #: The client rank's silence, once the watch has started.
        self._client_silence: Silence | None = None
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
        return f"http://{self.dashboard_host}:{server.port}/status"

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
            kwargs["dashboard_address"] = f"{self.dashboard_host}:{self.dashboard_port}"
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
        if self._client_silence is not None:
            self._client_silence.heard()
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
        with LoopStalls() as stalls:
            await self._watch_client_until_done(stalls, death_timeout, first_contact_timeout)

    async def _watch_client_until_done(
        self, stalls: LoopStalls, death_timeout: float, first_contact_timeout: float
    ) -> None:
        started = time.monotonic()
        interval = max(0.2, min(2.0, death_timeout / 5))
        stalled = stalls.total()
        # The client's heartbeats, as silence this loop could observe: after a stall
        # (a huge graph arriving) they wait unread in the socket.
        client = self._client_silence = Silence(death_timeout, stalls)
        while self._finish is not None and not self._finish.done():
            await asyncio.sleep(interval)
            # Likewise the workers' heartbeats: judge them only once the loop is
            # fluent again (stalled less than a round since the last check).
            fluent = stalls.total() - stalled < interval + 1
            stalled = stalls.total()
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
            elif client.lost():
                self._set_finish(
                    1,
                    f"the client rank has not responded {client.account()} "
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
        self._pending: asyncio.Task[bool] | None = None

    async def answered(self, wait: float, patience: float) -> bool | None:
        """Whether the ping in flight (sent now if none is) was answered.

        ``True`` answered, ``False`` failed (refused, reset, or no answer within
        ``patience`` seconds), ``None`` not yet after ``wait`` seconds: the ping
        stays in flight for the next call. A late answer still counts, and a ping
        is never cancelled half-way, which would close the connection and make
        the next one a new TLS handshake, on a loop (this rank's or the
        scheduler's) already too busy to answer in time.
        """
        if self._pending is None:
            self._pending = asyncio.ensure_future(self.ping(patience))
        try:
            result = await asyncio.wait_for(asyncio.shield(self._pending), wait)
        except asyncio.TimeoutError:
            return None
        self._pending = None
        return result

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
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        with contextlib.suppress(Exception):
            await self._rpc.close_rpc()
