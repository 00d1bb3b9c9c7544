"""Prometheus metrics of a Dask run: HTTPS endpoints and their discovery.

* :class:`MetricsService` serves ``/metrics`` for one Dask server (the scheduler or
  one worker) over HTTPS that requires a client certificate chaining to the run's
  CA or to the user's scraper CA (:mod:`jobstrap.metrics.pki`). It is a
  ``distributed`` *service* (built with the server, then ``listen``), so a worker
  reports its port when it registers (``services["jobstrap-metrics"]``) and the
  server stops it when it closes. Each service has its own registry with
  ``distributed``'s collectors bound to *its* server: several workers in one
  process each report their own numbers (``distributed``'s handler shares one
  process-wide collector, distributed#8544). Collection runs on the server's
  event loop, as ``distributed``'s own handler does.
* :class:`TargetsPlugin` (a scheduler plugin) keeps the run's ``file_sd`` targets
  file current as workers come and go (:mod:`jobstrap.metrics.targets`).

Without TLS material (``protocol: tcp``), without ``prometheus_client`` or with
``JOBSTRAP_METRICS=off`` no endpoint is opened: metrics are never served in plain
HTTP on the interface.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import getpass
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin
from tornado.web import RequestHandler

from jobstrap.metrics.pki import ensure_client_pki, trusted_client_ca
from jobstrap.metrics.targets import REFRESH_EVERY, Target, write_run_targets

__all__ = [
    "BOOK_HANDLER",
    "SERVICE",
    "MetricsService",
    "TargetsPlugin",
    "enabled",
    "install_scheduler_metrics",
    "serve_run_metrics",
    "worker_labels",
    "worker_service_kwargs",
]

#: The service name under which servers report their metrics port.
SERVICE = "jobstrap-metrics"

logger = logging.getLogger("jobstrap.metrics")


def enabled() -> bool:
    """Whether metrics endpoints are wanted and ``prometheus_client`` is installed."""
    if os.environ.get("JOBSTRAP_METRICS", "").lower() in ("0", "off", "false", "no"):
        return False
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def worker_labels(server: Any = None) -> dict[str, str]:
    """What a worker process knows of itself: job id, array task, node, rank.

    Read from the job's environment (every job script exports ``JOBSTRAP_JOB_ID``,
    ``JOBSTRAP_ARRAY_TASK_ID`` and ``JOBSTRAP_RUN_DIR``) and the launcher's rank.
    The worker sends these with its registration (``startup_information``).
    """
    from jobstrap.bootstrap.ranks import env_rank

    found = env_rank(os.environ)
    return {
        "job_id": os.environ.get("JOBSTRAP_JOB_ID", ""),
        "array_task": os.environ.get("JOBSTRAP_ARRAY_TASK_ID", ""),
        "node": socket.gethostname().split(".")[0],
        "rank": os.environ.get("JOBSTRAP_RANK", "") if found is None else str(found[0]),
        "run_dir": os.environ.get("JOBSTRAP_RUN_DIR", ""),
    }


def worker_service_kwargs(kwargs: dict[str, Any]) -> None:
    """Add the metrics service and the labels to a worker's keyword arguments."""
    if not enabled():
        return
    services = dict(kwargs.get("services") or {})
    services.setdefault(SERVICE, (MetricsService, {"role": "worker"}))
    kwargs["services"] = services
    info = dict(kwargs.get("startup_information") or {})
    info.setdefault("jobstrap", worker_labels)
    kwargs["startup_information"] = info


def _ssl_context(server: Any, role: str, run_dir: str) -> ssl.SSLContext | None:
    """A server context: the run's certificate; client certificates required.

    A fresh context from the run's ``Security`` (never the one of the Dask
    listeners, which must not start trusting the scraper's CA).
    """
    security = getattr(server, "security", None)
    if security is None:
        return None
    tls = security.get_tls_config_for_role(role)
    if not (tls.get("ca_file") and tls.get("cert")):
        return None  # protocol tcp: no metrics rather than plain HTTP
    context: ssl.SSLContext = security.get_listen_args(role)["ssl_context"]
    context.verify_mode = ssl.CERT_REQUIRED
    scraper_ca = trusted_client_ca(run_dir) if run_dir else None
    if scraper_ca is not None:
        context.load_verify_locations(cafile=str(scraper_ca))
    return context


class MetricsService:
    """HTTPS ``/metrics`` of one Dask server (a ``distributed`` service).

    Parameters
    ----------
    server
        The scheduler or worker whose metrics are served.
    io_loop
        Given by ``distributed``; the current loop serves.
    role
        ``"scheduler"`` or ``"worker"``: which collectors and TLS role.
    run_dir
        The run directory (its parent holds the scraper CA); default
        ``$JOBSTRAP_RUN_DIR``.
    """

    def __init__(
        self, server: Any, io_loop: Any = None, *, role: str, run_dir: str | None = None
    ) -> None:
        from prometheus_client import CollectorRegistry

        self.server = server
        self.role = role
        self.run_dir = run_dir if run_dir is not None else os.environ.get("JOBSTRAP_RUN_DIR", "")
        self.registry = CollectorRegistry(auto_describe=False)
        for collector in _dask_collectors(server, role):
            self.registry.register(collector)
        self.port = 0
        self._http: Any = None

    def listen(self, address: tuple[str, int]) -> None:
        """Listen on ``address`` (the server's own interface) if the run has TLS."""
        from tornado.httpserver import HTTPServer
        from tornado.netutil import bind_sockets
        from tornado.web import Application

        context = _ssl_context(self.server, self.role, self.run_dir)
        if context is None:
            logger.info("no TLS material: metrics are not served (never in plain HTTP)")
            return
        host, port = address
        app = Application([(r"/metrics", _MetricsHandler, {"registry": self.registry})])
        self._http = HTTPServer(app, ssl_options=context)
        sockets = bind_sockets(port, address=host or None)
        self._http.add_sockets(sockets)
        self.port = int(sockets[0].getsockname()[1])

    def stop(self) -> None:
        """Stop listening (``distributed`` calls this when the server closes)."""
        if self._http is not None:
            self._http.stop()
            self._http = None


def _dask_collectors(server: Any, role: str) -> list[Any]:
    if role == "worker":
        from distributed.http.worker.prometheus.core import WorkerMetricCollector

        worker_collector: Any = WorkerMetricCollector
        return [worker_collector(server), _WorkerMemory(server)]
    from distributed.http.scheduler.prometheus.core import COLLECTORS

    collectors: Any = COLLECTORS
    return [collector(server) for collector in collectors]


class _WorkerMemory:
    """The worker's memory limit and the share of it in use (the memory alert's input).

    ``distributed`` reports the memory, not the limit it is held to.
    """

    def __init__(self, worker: Any) -> None:
        self.worker = worker

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        limit = getattr(self.worker.memory_manager, "memory_limit", None)
        if not limit:
            return
        yield GaugeMetricFamily(
            "jobstrap_worker_memory_limit_bytes", "The worker's memory limit", value=limit
        )
        used = self.worker.monitor.get_process_memory()
        yield GaugeMetricFamily(
            "jobstrap_worker_memory_used_ratio",
            "The worker process's memory as a share of its limit",
            value=used / limit,
        )


class _MetricsHandler(RequestHandler):
    def initialize(self, registry: Any) -> None:
        self.registry = registry

    def get(self) -> None:
        from prometheus_client import generate_latest

        # The text format every Prometheus 2 parses (newer ones negotiate, older don't).
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.write(generate_latest(self.registry))


class TargetsPlugin(SchedulerPlugin):
    """Keeps a run's targets file current from the scheduler (a scheduler plugin).

    Parameters
    ----------
    run_dir
        The run directory (``<run_dir>/metrics/targets.json``).
    run
        The run id (label ``run``).
    engine
        The engine's name (label ``engine``).
    pool_of
        The pool of a job id (label ``pool``); default ``"default"``.
    job_of
        The job id of a worker name as its cluster knows it (``123_4``), when the
        worker's own ``JOBSTRAP_JOB_ID`` (the array's id) is not what the cluster's
        job series use; None or a None answer keeps the worker's.
    """

    name = "jobstrap-targets"

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        run: str | None = None,
        engine: str = "dask",
        pool_of: Callable[[str], str] | None = None,
        job_of: Callable[[str], str | None] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.job_of = job_of
        self.common = {
            "run": run or self.run_dir.name,
            "engine": engine,
            "user": getpass.getuser(),
        }
        self.pool_of = pool_of or (lambda job_id: "default")
        self.scheduler: Any = None
        self.targets: dict[str, Target] = {}
        self.joined = 0
        self.left = 0
        self._pending: asyncio.TimerHandle | None = None
        self._refresh: asyncio.Task[None] | None = None

    # -- scheduler plugin protocol ------------------------------------------------------
    async def start(self, scheduler: Any) -> None:
        """Add the scheduler's own endpoint and the workers already there."""
        self.scheduler = scheduler
        service = scheduler.services.get(SERVICE)
        if service is not None and service.port:
            labels = dict(
                self.common,
                role="scheduler",
                job_id=os.environ.get("JOBSTRAP_JOB_ID", ""),
                array_task=os.environ.get("JOBSTRAP_ARRAY_TASK_ID", ""),
                node=socket.gethostname().split(".")[0],
                pool="",
            )
            self.targets[scheduler.address] = Target(f"{_host(scheduler)}:{service.port}", labels)
        # The plugin may be installed after the scheduler's address went out: the
        # workers already there joined the run as much as the ones to come.
        self.joined += self._add_present()
        # The first write is awaited: the file exists once the plugin is installed.
        targets = list(self.targets.values())
        await asyncio.get_running_loop().run_in_executor(None, self._write_now, targets)
        # Those that joined during the write: nothing awaits between this and the
        # scheduler's add_plugin, so from here on add_worker sees every one.
        if added := self._add_present():
            self.joined += added
            self._soon()
        self._refresh = asyncio.ensure_future(self._heartbeat())

    def add_worker(self, scheduler: Any, worker: str) -> None:
        """A worker joined: add its endpoint."""
        if self._add(worker):
            self.joined += 1
            self._soon()

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        """A worker left: drop its endpoint."""
        if self.targets.pop(worker, None) is not None:
            self.left += 1
            self._soon()

    async def close(self) -> None:
        """The run ends: an empty targets file (the aggregate drops the run)."""
        if self._refresh is not None:
            self._refresh.cancel()
        if self._pending is not None:
            self._pending.cancel()
        self.targets.clear()
        with contextlib.suppress(OSError):
            await asyncio.get_running_loop().run_in_executor(None, self._write_now, [])

    # -- internals ---------------------------------------------------------------------
    def _add_present(self) -> int:
        """Add the scheduler's workers not yet in the targets; return how many."""
        return sum(self._add(a) for a in list(self.scheduler.workers) if a not in self.targets)

    def _add(self, address: str) -> bool:
        ws = self.scheduler.workers.get(address)
        if ws is None:
            return False
        port = (ws.services or {}).get(SERVICE)
        if not port:
            return False  # a worker without metrics (no TLS, old jobstrap, turned off)
        extra: Mapping[str, Any] = (ws.extra or {}).get("jobstrap") or {}
        job_id = str(extra.get("job_id", ""))
        known = self.job_of(str(ws.name)) if self.job_of is not None else None
        job_id = known or job_id
        labels = dict(
            self.common,
            role="worker",
            job_id=job_id,
            array_task=str(extra.get("array_task", "")),
            node=str(extra.get("node", "")),
            rank=str(extra.get("rank", "")),
            pool=self.pool_of(job_id),
            worker=str(ws.name),
        )
        self.targets[address] = Target(f"{ws.host}:{port}", labels)
        return True

    def _soon(self) -> None:
        # Many workers join within moments of each other: one write for all of them.
        if self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(0.2, self._write)

    def _write(self) -> None:
        self._pending = None
        targets = list(self.targets.values())
        loop = asyncio.get_running_loop()
        # File system work (a shared one, maybe slow) off the scheduler's event loop.
        future = loop.run_in_executor(None, self._write_now, targets)
        future.add_done_callback(_log_failure)

    def _write_now(self, targets: Iterable[Target]) -> None:
        write_run_targets(self.run_dir, list(targets))

    async def _heartbeat(self) -> None:
        # Rewriting the file now and then tells the aggregate the run is alive.
        while True:
            await asyncio.sleep(REFRESH_EVERY)
            self._write()


def serve_run_metrics(
    runner: Any, run_dir: str | os.PathLike[str], *, engine: str = "dask", mode: str = "mpi"
) -> None:
    """Start :func:`install_scheduler_metrics` on a :class:`SchedulerRunner`'s loop.

    With jobstrap's job series: a batch run's (``mode`` ``mpi``) scheduler serves
    its own job (:class:`~jobstrap.metrics.jobs.RunJobs`); a cluster's scheduler
    job (``scheduler``) serves the job book its notebook pushes
    (:data:`BOOK_HANDLER`).

    Not awaited: the endpoint, its TLS context and the targets file are not on the
    path of the workers' joining, so the caller publishes the scheduler's address
    meanwhile; workers that join first are picked up when the plugin starts. The
    scraper's CA is the exception: on a user's first run it is made here, before
    any endpoint of the run reads it.
    Metrics never stop a run: whatever goes wrong is said in one line.
    """
    if not enabled() or not run_dir:
        return
    from jobstrap.metrics.jobs import ClusterCollector, PushedCollector, RunJobs
    from jobstrap.metrics.pki import client_files

    collector: Any
    if mode == "scheduler":
        collector = PushedCollector()
        runner.scheduler.handlers[BOOK_HANDLER] = _book_handler(collector)
    else:
        job = RunJobs(os.environ.get("JOBSTRAP_JOB_ID", ""), _process_start(), _run_record(run_dir))
        collector = ClusterCollector(job)
    scheduler = runner.scheduler
    try:
        root = Path(run_dir).parent
        if not client_files(root).exist():
            ensure_client_pki(root)
        installed = asyncio.run_coroutine_threadsafe(
            install_scheduler_metrics(scheduler, run_dir, engine=engine, collectors=[collector]),
            runner.loop,
        )
    except Exception as error:
        logger.warning("metrics are not served: %s: %s", type(error).__name__, error)
        return

    def said(future: concurrent.futures.Future[Any]) -> None:
        error = None if future.cancelled() else future.exception()
        status = getattr(getattr(scheduler, "status", None), "name", "")
        if error is not None and status not in ("closing", "closed", "failed"):
            logger.warning("metrics are not served: %s: %s", type(error).__name__, error)

    installed.add_done_callback(said)


#: The scheduler handler a notebook cluster pushes its job book to (``families``:
#: :func:`jobstrap.metrics.jobs.to_wire`) when its scheduler runs in a job.
BOOK_HANDLER = "jobstrap_job_book"


def _book_handler(collector: Any) -> Callable[..., None]:
    def receive(families: list[dict[str, Any]] | None = None, **_: Any) -> None:
        collector.receive(families or [])

    return receive


def _process_start() -> float:
    """When this process started (epoch seconds): the job's start, give or take its imports."""
    import psutil

    return float(psutil.Process().create_time())


def _run_record(run_dir: str | os.PathLike[str]) -> Callable[[], tuple[float, float] | None]:
    """Reads when the run was submitted and its walltime from ``run.json``, if written yet."""

    def read() -> tuple[float, float] | None:
        from jobstrap.config.units import parse_walltime
        from jobstrap.store.rundir import read_json

        try:
            record = read_json(Path(run_dir) / "run.json")
            walltime = record["profile"]["resolved"]["walltime"]
            return float(record["created"]), float(parse_walltime(walltime))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # not written yet (or not a run's record): asked again later

    return read


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.warning("could not write the metrics targets: %s", future.exception())


def _host(server: Any) -> str:
    from distributed.comm.addressing import get_address_host

    return str(get_address_host(server.address))


async def install_scheduler_metrics(
    scheduler: Any,
    run_dir: str | os.PathLike[str],
    *,
    engine: str = "dask",
    pool_of: Callable[[str], str] | None = None,
    job_of: Callable[[str], str | None] | None = None,
    collectors: Iterable[Any] = (),
) -> TargetsPlugin | None:
    """Serve the scheduler's metrics and keep the run's targets file (on its loop).

    Creates the user's scraper certificate first (:func:`ensure_client_pki`), so
    that every endpoint of the run, started after this, accepts it.

    Parameters
    ----------
    scheduler
        A running ``distributed.Scheduler``.
    run_dir
        The run directory.
    engine, pool_of, job_of
        Labels (see :class:`TargetsPlugin`).
    collectors
        More ``prometheus_client`` collectors to serve beside Dask's (jobstrap's own).
    """
    if not enabled():
        return None
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, ensure_client_pki, Path(run_dir).parent)
    service = scheduler.services.get(SERVICE)
    if service is None:
        service = MetricsService(scheduler, role="scheduler", run_dir=str(run_dir))
        service.listen((_host(scheduler), 0))
        if service.port:
            scheduler.services[SERVICE] = service  # stopped with the scheduler
        else:
            service = None
    plugin = TargetsPlugin(run_dir, engine=engine, pool_of=pool_of, job_of=job_of)
    if service is not None:
        for collector in (*collectors, _PluginCollector(plugin)):
            service.registry.register(collector)
    await plugin.start(scheduler)  # what register_scheduler_plugin does before adding
    scheduler.add_plugin(plugin, name=TargetsPlugin.name)
    return plugin


class _PluginCollector:
    """Worker churn as the targets plugin counts it (``jobstrap_workers_*_total``)."""

    def __init__(self, plugin: TargetsPlugin) -> None:
        self.plugin = plugin
        self.started = time.time()

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield CounterMetricFamily(
            "jobstrap_workers_joined", "Workers that joined the run", value=self.plugin.joined
        )
        yield CounterMetricFamily(
            "jobstrap_workers_left", "Workers that left the run", value=self.plugin.left
        )
        targets = [t for t in self.plugin.targets.values() if t.labels.get("role") == "worker"]
        yield GaugeMetricFamily(
            "jobstrap_worker_targets", "Worker metrics endpoints listed", value=len(targets)
        )
        yield GaugeMetricFamily(
            "jobstrap_run_start_time_seconds",
            "When the run's scheduler started (epoch seconds)",
            value=self.started,
        )
