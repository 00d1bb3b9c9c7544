"""A notebook cluster's metrics: its scheduler's endpoint, targets file and job series.

The scheduler of a notebook cluster runs in the user's process, so the cluster hands
it what only the cluster knows: which job and pool each worker belongs to (for the
targets' labels) and jobstrap's own job series (:class:`ClusterCollector`).
"""

from __future__ import annotations

from typing import Any

from distributed.scheduler import Scheduler

from jobstrap.engines.dask.metrics import install_scheduler_metrics
from jobstrap.metrics.jobs import ClusterCollector, job_of_worker

__all__ = ["install_cluster_metrics"]


async def install_cluster_metrics(cluster: Any, scheduler: Scheduler) -> None:
    """Serve ``scheduler``'s metrics with ``cluster``'s (a ``BatchCluster``) job and pool labels."""

    def pool_of(worker: str) -> str:
        # Workers are named "<job name>-<i>" after the job (the spec's key) they run in.
        return str(cluster.job_pool.pool_of(worker.rsplit("-", 1)[0]))

    collector = ClusterCollector(cluster, rotation=cluster._lifetime)
    await install_scheduler_metrics(
        scheduler,
        cluster.run_dir,
        job_of=job_of_worker(cluster),
        pool_of=pool_of,
        collectors=[collector],
    )
