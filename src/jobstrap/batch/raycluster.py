"""A Ray cluster in one batch job, for drivers on the submitting machine: :class:`RayCluster`.

::

    import jobstrap

    with jobstrap.RayCluster(profile="mysite", nodes=4) as cluster:
        cluster.connect()              # ray.init(cluster.driver_address) with the run's secrets
        ...                            # ray.remote tasks run on the job's nodes

The job is a Ray engine job (head and one Ray node per allocated node, see
``docs/ray.md``) whose head rank runs no app but
:func:`jobstrap.engines.ray.runner.serve_cluster`: it says the cluster is ready
once every node has joined and keeps it up until the job is told to end. Closing
the cluster cancels the job; a cluster still open at interpreter exit, or garbage
collected, has its job cancelled by its :class:`~jobstrap.batchctl.guard.JobGuard`.
It is in the registry (kind ``cluster``) like every run, so ``jobstrap status``,
``logs`` and ``cancel`` find it.

Security: the run's token, CA and a certificate for this machine's addresses are
made before the job is submitted, 0600 in the run's 0700 directory; the head starts
with them, so the address alone lets nobody in.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from jobstrap.batch.future import JobFuture, result_poll_delays
from jobstrap.batch.progress import read_progress
from jobstrap.batch.submit import ray_cluster_argv, submit_run
from jobstrap.batchctl.guard import JobGuard
from jobstrap.config.profile import Profile
from jobstrap.errors import JobFailedError, UserError
from jobstrap.states import JobState
from jobstrap.store.rundir import RunDir

__all__ = ["RayCluster", "local_addresses"]


def local_addresses() -> list[str]:
    """This machine's IPv4 addresses, loopback included: what its driver may bind."""
    import socket

    import psutil

    found = ["127.0.0.1"]
    for entries in psutil.net_if_addrs().values():
        found += [e.address for e in entries if e.family == socket.AF_INET]
    return list(dict.fromkeys(found))


class RayCluster:
    """A Ray cluster as one batch job; a driver here joins it with :meth:`connect`.

    Parameters
    ----------
    profile
        Profile name, YAML file or :class:`~jobstrap.config.profile.Profile`; its
        engine is Ray whatever it says.
    nodes
        Nodes of the allocation: one Ray node each (two on a one-node job).
    timeout
        Seconds to wait for the cluster (queue wait included) before giving up and
        cancelling the job; default: as long as it takes.
    **overrides
        Any other profile setting (``walltime="2h"``, ``queue="short"``).

    Attributes
    ----------
    run_id, run_dir, job_id
        The run, its directory and the job.

    Raises
    ------
    JobFailedError
        The job ended before the cluster was up (the diagnosis says why).
    TimeoutError
        No cluster within ``timeout`` seconds (the job is cancelled).
    """

    def __init__(
        self,
        profile: str | Profile | None = None,
        *,
        nodes: int | None = None,
        timeout: float | None = None,
        **overrides: Any,
    ) -> None:
        from jobstrap.batch.client import _resolve
        from jobstrap.engines.ray.credentials import ClientFiles, create_client_files

        resolved, name = _resolve(
            profile, {**overrides, "nodes": nodes, "engine": "ray"}, any_engine=True
        )
        self._closed = False
        self._connected = False
        self._guard = JobGuard(self, resolved.system)
        made: list[ClientFiles] = []

        def prepare(run: RunDir) -> None:
            # Before the job exists: the head starts with these secrets.
            tls = resolved.protocol == "tls"
            made.append(create_client_files(run.path, local_addresses(), tls=tls))

        submitted = submit_run(
            resolved,
            name,
            "cluster",
            ray_cluster_argv,
            prepare=prepare,
            extra={"engine": "ray"},
            run_id_prefix="raycluster",
        )
        self._guard.add(submitted.submission.job_ids)
        self._files = made[0]
        self.run_id = submitted.run.run_id
        self.run_dir = submitted.run.path
        self.job_id = submitted.job_id
        self._future = JobFuture(
            submitted.record,
            poll_interval=submitted.profile.poll_interval,
            started_by_us=True,
            name=submitted.submission.name,
        )
        self._address = self._driver_address = ""
        self._client_address: str | None = None
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        where = self._driver_address if not self._closed else "closed"
        return f"<RayCluster {self.run_id} job {self.job_id} {where}>"

    def _wait_ready(self, timeout: float | None) -> None:
        """Wait until every node joined; then learn the addresses."""
        from jobstrap.engines.ray.runner import PHASE_READY

        deadline = None if timeout is None else time.monotonic() + timeout
        for delay in result_poll_delays(slow=1.0):
            progress = read_progress(self.run_dir)
            if progress is not None and progress.phase == PHASE_READY:
                self._learn_addresses()
                return
            if self._future.done():
                error = self._future.exception()
                raise error or JobFailedError(
                    self.job_id, str(self._future.state), "", "the Ray cluster job ended"
                )
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"Ray cluster {self.run_id} (job {self.job_id}) not up after {timeout:g} s "
                    f"({self._future.state}); the job is cancelled"
                )
            time.sleep(delay)
        raise AssertionError("unreachable: the delays never end")

    def _learn_addresses(self) -> None:
        run = RunDir(self.run_dir)
        self._address = run.read_info().scheduler_address
        head = run.read_json("scheduler.json")
        self._client_address = head.get("client_address") or None
        # A driver joins through the GCS only beside a raylet of the cluster (the
        # head's host, or another node); from elsewhere through Ray's client server.
        near = str(head.get("node_ip", "")) in local_addresses()
        client = self._client_address
        self._driver_address = self._address if near or not client else client

    @property
    def address(self) -> str:
        """The cluster's GCS address (``ip:port``), for ``ray.init(address=...)``.

        It admits only drivers holding the run's token and (with TLS) a
        certificate of the run's CA: see :meth:`env`.
        """
        return self._address

    @property
    def client_address(self) -> str | None:
        """``ray://ip:port`` of the head's Ray Client server (None: Ray lacks its extra).

        For a driver on a host without a node of the cluster (a login node): the
        same token and TLS files are needed (:meth:`env`).
        """
        return self._client_address

    @property
    def driver_address(self) -> str:
        """What a driver on this machine joins: :attr:`address` on the head's host,
        else :attr:`client_address` when there is one."""
        return self._driver_address

    @property
    def state(self) -> JobState:
        """The job's state."""
        return self._future.state

    def env(self) -> dict[str, str]:
        """The environment of a driver of this cluster: address, token and TLS files.

        For a driver in another process (``subprocess.run(..., env={**os.environ,
        **cluster.env()})``); :meth:`connect` uses it for this one. The files it
        names are this run's, 0600 in its 0700 directory.
        """
        from jobstrap.engines.ray.plan import node_env

        env = node_env({}, token_file=str(self._files.token), tls=self._files.tls)
        env.pop("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", None)  # a node's setting
        env["RAY_ADDRESS"] = self._driver_address
        return env

    def connect(self, **kwargs: Any) -> Any:
        """``ray.init(address=self.driver_address, **kwargs)`` with the run's token and TLS.

        Ray reads its token and TLS settings once, when it loads: call this before
        anything in the process imports ``ray`` (or run the driver with :meth:`env`).

        Returns
        -------
        ray's context (what ``ray.init`` returns).
        """
        env = self.env()
        if "ray" in sys.modules and any(
            os.environ.get(k) != v for k, v in env.items() if k != "RAY_ADDRESS"
        ):
            raise UserError(
                "RayCluster.connect: ray was imported before the cluster's settings were "
                "set (Ray reads them once, when it loads); connect before importing ray, "
                "or run the driver in a process started with cluster.env()"
            )
        os.environ.update(env)
        import ray

        context = ray.init(address=self._driver_address, **kwargs)
        self._connected = True
        return context

    def close(self) -> None:
        """Disconnect this process's driver and cancel the job (idempotent)."""
        if self._closed:
            return
        self._closed = True
        ray = sys.modules.get("ray")
        if self._connected and ray is not None and ray.is_initialized():
            ray.shutdown()
        try:
            if not self._future.done():
                self._future.cancel()  # recorded as cancelled, like `jobstrap cancel`
            self._guard.discard(self._future.job_ids)
        finally:
            self._guard.cancel_now()  # whatever the cancel above did not reach

    def __enter__(self) -> RayCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
