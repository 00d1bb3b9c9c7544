"""Where a notebook cluster's scheduler runs, and on which address.

In-process by default (TLS with per-cluster certificates, bound to the address the
profile's ``scheduler_interface`` chooses), or ``scheduler="job"``: a scheduler in
its own batch job, which publishes its address in the run directory's ``info.json``
and ends itself (a watchdog) when the notebook's process dies without closing it.
"""

# distributed's deploy classes are unannotated; calling their methods from typed code is
# the point of subclassing them, so that one strict check is off in this module only.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from distributed.core import Status
from distributed.deploy.spec import ProcessInterface
from distributed.protocol import pickle
from distributed.scheduler import Scheduler

from jobstrap.batchctl.control import BatchControl
from jobstrap.cluster.jobs import explain_failure, stderr_tail
from jobstrap.cluster.options import ClusterOptions
from jobstrap.config.profile import Profile
from jobstrap.engines.dask.drain import WorkerDrain
from jobstrap.engines.dask.watchdog import ManagerWatchdog
from jobstrap.errors import BatchCommandError, JobFailedError
from jobstrap.jobs.spec import new_tag, scheduler_job
from jobstrap.net import network
from jobstrap.states import JobState
from jobstrap.store.rundir import RunDir, SchedulerInfo
from jobstrap.systems.base import BatchSystem

__all__ = ["SCHEDULER_START_TIMEOUT", "SchedulerJob", "SchedulerPlacement"]

#: Seconds a running scheduler job may take to publish its address.
SCHEDULER_START_TIMEOUT = 120.0


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


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


class SchedulerPlacement:
    """The scheduler's placement, address, security and start for one cluster.

    Parameters
    ----------
    profile
        The cluster's resolved settings.
    options
        The cluster-level keywords (``scheduler_options``, ``host``...).
    system
        The batch system the workers run on.
    run_dir
        The cluster's private run directory.
    batchctl
        Batch control (submits a ``scheduler="job"`` scheduler).
    """

    def __init__(
        self,
        profile: Profile,
        options: ClusterOptions,
        system: BatchSystem,
        run_dir: RunDir,
        batchctl: BatchControl,
    ) -> None:
        self._profile = profile
        self._options = options
        self._system = system
        self._run_dir = run_dir
        self._batchctl = batchctl
        #: ``"job"`` (a batch job of its own) or in this process.
        self.in_job = profile.scheduler == "job"
        #: The scheduler job's id, once submitted.
        self.job_id: str | None = None
        self.tag: str | None = None  # of the scheduler job, once submitted
        #: Where the dashboard listens (in-process), or its URL from ``info.json`` (job).
        self._dashboard_host: str | None = None
        self._dashboard_url: str | None = None

    def security(self) -> Any:
        """The cluster's ``Security``: fresh TLS material in the run directory for ``tls``."""
        from jobstrap.net.security import create_tls, load_security

        if self._profile.protocol == "tls":
            create_tls(self._run_dir)
            return load_security(self._run_dir)
        return load_security(self._run_dir, require=False)

    def host(self) -> str:
        """The address an in-process scheduler binds to."""
        if self._options.scheduler_host:
            return self._options.scheduler_host
        preference = self._profile.scheduler_interface
        if self._system.jobs_run_here and preference == ("auto",):
            # Every worker runs on this machine: loopback is the one address that
            # is always there and never leaves it.
            return "127.0.0.1"
        return network.choose_address(preference, allow_loopback=self._system.jobs_run_here)

    def spec(self, security: Any) -> dict[str, Any] | None:
        """``SpecCluster``'s scheduler spec, or None when the scheduler is a job."""
        if self.in_job:
            return None
        host = self.host()
        dashboard = self._dashboard_address(host)
        options: dict[str, Any] = {
            "host": host,
            "port": 0,
            "protocol": f"{self._profile.protocol}://",
            "security": security,
            "dashboard": self._profile.dashboard,
            "dashboard_address": dashboard,
        }
        options.update(self._options.scheduler_options)
        return {"cls": self._options.scheduler_cls or Scheduler, "options": options}

    def _dashboard_address(self, host: str) -> str:
        """``host:port`` for the in-process dashboard: the profile's ``dashboard_bind``
        (loopback unless asked) unless ``dashboard_address`` names a host itself."""
        from jobstrap.engines.dask.scheduler import dashboard_host

        given = self._options.dashboard_address
        chosen = dashboard_host(host, self._profile.dashboard_bind)
        if given is None:
            address = f"{chosen}:{self._profile.dashboard_port}"
        elif given.startswith(":") or given.isdigit():
            # ":8787" would be every interface to distributed: the bind decides instead.
            address = f"{chosen}:{given.lstrip(':')}"
        else:
            address = given  # an explicit host:port is the user's own choice
            if not _loopback(address.rsplit(":", 1)[0].strip("[]")):
                from jobstrap.net.security import warn_insecure

                warn_insecure("dashboard", f"dashboard_address={given!r}")
        self._dashboard_host = address.rsplit(":", 1)[0]
        return address

    def dashboard_link(self, port: int | None) -> str | None:
        """The dashboard's URL: where it really listens, not the scheduler's address."""
        if self.in_job:
            return self._dashboard_url
        if port is None or self._dashboard_host is None:
            return None
        return f"http://{self._dashboard_host}:{port}/status"

    async def start_job(
        self,
        submitted: Callable[[str], None],
        cancel: Callable[[list[str]], Awaitable[None]],
    ) -> SchedulerJob:
        """Submit the scheduler's own job and wait for it to publish its address.

        ``submitted(job_id)`` runs as soon as the job exists (orphan protection,
        registry); ``cancel`` ends it when it fails to start.
        """
        profile = self._profile
        spec = scheduler_job(profile, str(self._run_dir), new_tag())
        self.tag = spec.tag
        loop = asyncio.get_running_loop()
        submit = functools.partial(
            self._batchctl.submit, spec, None, count=1, template=profile.template
        )
        submission = await loop.run_in_executor(None, submit)
        job_id = submission.job_ids[0]
        self.job_id = job_id
        submitted(job_id)
        self._batchctl.watcher.configure(poll_interval=profile.poll_interval)
        self._batchctl.watcher.track([job_id], name=submission.name)
        running_since: float | None = None
        try:
            while True:
                with contextlib.suppress(FileNotFoundError, ValueError):
                    # The run directory is new and private: any info.json is our scheduler's.
                    info = self._run_dir.read_info()
                    self._dashboard_url = info.dashboard_address
                    return SchedulerJob(info.scheduler_address, job_id, self._batchctl)
                record = self._batchctl.watcher.record(job_id)
                if record.state.is_terminal:
                    tail = stderr_tail(spec.log_directory, job_id)
                    why = explain_failure(
                        record.state, record.exit_code, record.nodes, tail, profile.python
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
                        f" writing {self._run_dir.info_file}",
                    )
                await asyncio.sleep(0.2)
        except BaseException:
            await cancel([job_id])
            raise

    async def install_watchdog(self, comm: Any) -> None:
        """Make the scheduler job end itself if this process dies without closing it."""
        watchdog = ManagerWatchdog(timeout=float(self._profile.death_timeout))
        await comm.register_scheduler_plugin(
            plugin=pickle.dumps(watchdog), name=ManagerWatchdog.name, idempotent=True
        )

    async def install_drain(self, comm: Any) -> None:
        """Give the scheduler job the handler the rotation drains worker jobs with."""
        await comm.register_scheduler_plugin(
            plugin=pickle.dumps(WorkerDrain()), name=WorkerDrain.name, idempotent=True
        )

    def publish(self, scheduler: Any, dashboard_link: str | None) -> None:
        """Write ``info.json`` for an in-process scheduler (a scheduler job writes its own)."""
        if self.in_job or scheduler is None:
            return
        self._run_dir.write_info(
            SchedulerInfo(
                scheduler_address=scheduler.address,
                dashboard_address=dashboard_link or None,
                host=socket.gethostname(),
                job_id=None,
                started=time.time(),
                pid=os.getpid(),
            )
        )
