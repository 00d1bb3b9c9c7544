"""Dask as the bootstrap's engine (:class:`jobstrap.bootstrap.engine.Engine`).

The head is a ``distributed`` scheduler on its own thread
(:class:`~jobstrap.engines.dask.scheduler.SchedulerRunner`), the workers are
nannies (:func:`~jobstrap.engines.dask.workers.serve_workers`), the app finds the
scheduler through ``DASK_SCHEDULER_ADDRESS`` and Dask's TLS variables, and the
app's rank keeps a :class:`~jobstrap.engines.dask.link.SchedulerLink`.

Nothing heavy at module level: the bootstrap gets this engine before MPI is
initialised, and ``distributed`` is imported in :meth:`DaskEngine.load`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from jobstrap.bootstrap import logtags
from jobstrap.bootstrap.engine import frozen_imports

if TYPE_CHECKING:
    from jobstrap.bootstrap.options import Options
    from jobstrap.engines.dask.link import SchedulerLink
    from jobstrap.engines.dask.scheduler import SchedulerRunner
    from jobstrap.store.rundir import RunDir

__all__ = ["DaskEngine", "load_dask"]

#: The engine's modules a rank needs once Dask is loaded (server classes first: the
#: fork server preloads them).
_MODULES = (
    "jobstrap.engines.dask.servers",
    "jobstrap.engines.dask.scheduler",
    "jobstrap.engines.dask.workers",
)


def load_dask(*, forks_workers: bool = False) -> None:
    """Import Dask (with this package's server code) with the cyclic GC paused.

    See :func:`jobstrap.bootstrap.engine.frozen_imports` for why.

    ``forks_workers``: this rank's nannies fork its workers, so distributed's
    pre-spawn environment is applied first
    (:func:`~jobstrap.engines.dask.forkserver.apply_pre_spawn_environ`).
    """
    if _MODULES[0] in sys.modules:
        return
    import importlib

    with frozen_imports():
        if forks_workers:
            from jobstrap.engines.dask.forkserver import apply_pre_spawn_environ

            apply_pre_spawn_environ()
        for module in _MODULES:
            importlib.import_module(module)  # imports dask and distributed
        from jobstrap.engines.dask import samehost
        from jobstrap.engines.dask.quiet import quiet_shutdown_tracebacks
        from jobstrap.engines.dask.scale import apply_scale_defaults

        apply_scale_defaults()  # one scheduler for thousands of workers (docs/scale.md)

        quiet_shutdown_tracebacks()
        logtags.install()  # every line says which run, job, node, rank and role wrote it
        # Before any listener or connection: same-host peers (a node's workers,
        # the scheduler and the app's client) talk over Unix sockets, not TLS.
        samehost.install()


class DaskEngine:
    """The bootstrap's Dask engine."""

    name = "dask"

    def load(self, *, forks_workers: bool = False) -> None:
        """Import Dask, GC paused and frozen after (see :func:`load_dask`)."""
        load_dask(forks_workers=forks_workers)

    def security(self, options: Options, run: RunDir) -> Any:
        """The run's ``distributed.Security`` (TLS material required with ``tls``)."""
        from jobstrap.net.security import load_security

        self.load()
        return load_security(run, require=options.protocol != "tcp")

    def start_head(
        self, options: Options, host: str, security: Any, *, idle_timeout: float | None
    ) -> SchedulerRunner:
        """Start the scheduler on ``host``; return it once it listens."""
        self.load()
        logtags.set_role("scheduler")
        from jobstrap.engines.dask.scale import raise_open_files_limit
        from jobstrap.engines.dask.scheduler import SchedulerRunner

        # One descriptor per worker and then some: a site's soft limit of 1,024 ends a
        # scheduler of ~1,000 workers (EMFILE on accept).
        raise_open_files_limit()
        if options.dashboard and options.dashboard_bind == "interface":
            from jobstrap.net.security import warn_insecure

            warn_insecure("dashboard", "--dashboard-bind interface")

        runner = SchedulerRunner(
            host=host,
            protocol=options.protocol,
            security=security,
            dashboard=options.dashboard,
            dashboard_port=options.dashboard_port,
            dashboard_bind=options.dashboard_bind,
            idle_timeout=idle_timeout,
        )
        runner.start()
        if options.dashboard:  # --no-dashboard: no HTTP listener at all, metrics included
            from jobstrap.engines.dask.metrics import serve_run_metrics

            # HTTPS /metrics, targets file, jobstrap's job series: started, not
            # awaited, so the caller publishes the address meanwhile
            serve_run_metrics(runner, options.run_dir, mode=options.mode)
        return runner

    def serve_workers(
        self,
        options: Options,
        address: str,
        host: str,
        security: Any,
        names: Sequence[str],
        *,
        max_memory_kills: int | None = None,
        environments: Sequence[Mapping[str, str]] = (),
        resources: Mapping[str, float] | None = None,
    ) -> int:
        """Run nannies (or workers) named ``names`` until closed, lost or drained."""
        logtags.set_role("worker")
        from jobstrap.engines.dask.scale import join_jitter, world_workers
        from jobstrap.engines.dask.workers import WorkerOptions, serve_workers, worker_class

        cls = worker_class(options.worker_class)  # a bad name: UserError, exit 2

        if options.nanny:
            from jobstrap.engines.dask.forkserver import choose_start_method

            choose_start_method(len(names))
        worker_options = WorkerOptions(
            host=host,
            security=security,
            processes=len(names),
            nthreads=options.nthreads,
            memory_limit=options.memory_limit,
            local_directory=options.local_directory,
            death_timeout=options.death_timeout,
            lifetime=options.lifetime,
            dashboard=options.dashboard,
            nanny=options.nanny,
            names=list(names),
            max_memory_kills=max_memory_kills,
            worker_class=cls,
            environments=list(environments),
            resources=dict(resources) if resources else None,
            join_jitter=join_jitter(world_workers()),
        )
        import asyncio  # here: a rank standing by for its node never needs it

        return asyncio.run(serve_workers(address, worker_options))

    def tell_app(self, options: Options, run: RunDir, address: str) -> None:
        """``DASK_SCHEDULER_ADDRESS`` and the TLS settings, so a plain ``Client()`` works."""
        import dask

        env = {"DASK_SCHEDULER_ADDRESS": address}
        if options.protocol == "tls":
            from jobstrap.net.security import tls_env

            env.update(tls_env(run))
        os.environ.update(env)
        dask.config.refresh()  # so a plain Client() in the app sees the address and TLS

    def connect(self, address: str, security: Any, *, death_timeout: float) -> SchedulerLink:
        """A :class:`SchedulerLink` to the scheduler at ``address`` (not started)."""
        logtags.set_role("client")
        from jobstrap.engines.dask.link import SchedulerLink

        return SchedulerLink(address, security, death_timeout=death_timeout)

    def close_app_clients(self) -> None:
        """Close Clients the app left open, before the scheduler goes away under them."""
        from distributed import Client

        from jobstrap.engines.dask.quiet import silence_for_shutdown

        instances: Any = Client._instances
        clients: list[Any] = [c for c in list(instances) if c.status not in ("closed", "closing")]
        if not clients:
            return
        silence_for_shutdown()
        for client in clients:
            with contextlib.suppress(Exception):
                client.close(timeout=10)
