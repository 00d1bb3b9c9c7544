"""A notebook cluster's metrics: its scheduler's endpoint, targets file and job series.

The scheduler of a notebook cluster runs in the user's process, so the cluster hands
it what only the cluster knows: which job and pool each worker belongs to (for the
targets' labels) and jobstrap's own job series (:class:`ClusterCollector`). A
scheduler in a job of its own (``scheduler="job"``) serves its targets itself; the
job series, which only this process can compute, are pushed to it every poll
interval (:data:`~jobstrap.engines.dask.metrics.BOOK_HANDLER`) and served there
under the same names and labels.
"""

from __future__ import annotations

import logging
from typing import Any

from distributed.scheduler import Scheduler
from tornado.ioloop import PeriodicCallback

from jobstrap.engines.dask.metrics import BOOK_HANDLER, enabled, install_scheduler_metrics
from jobstrap.metrics.jobs import ClusterCollector, job_of_worker, to_wire

__all__ = ["install_cluster_metrics"]

logger = logging.getLogger("jobstrap.metrics")


async def install_cluster_metrics(cluster: Any, scheduler: Any) -> None:
    """Serve ``scheduler``'s metrics with ``cluster``'s (a ``BatchCluster``) job and pool labels.

    ``scheduler`` is the in-process ``Scheduler``, or the scheduler job's address
    (``scheduler="job"``): then the job series are pushed to it.
    """
    collector = ClusterCollector(cluster, rotation=cluster._lifetime)
    if not isinstance(scheduler, Scheduler):
        if enabled():
            await _push_job_book(cluster, collector)
        return

    def pool_of(worker: str) -> str:
        # Workers are named "<job name>-<i>" after the job (the spec's key) they run in.
        return str(cluster.job_pool.pool_of(worker.rsplit("-", 1)[0]))

    await install_scheduler_metrics(
        scheduler,
        cluster.run_dir,
        job_of=job_of_worker(cluster),
        pool_of=pool_of,
        collectors=[collector],
    )


async def _push_job_book(cluster: Any, collector: ClusterCollector) -> None:
    """Send the job series to the scheduler job now and every poll interval."""

    async def push() -> None:
        try:
            send = getattr(cluster.scheduler_comm, BOOK_HANDLER)
            await send(families=to_wire(collector))
        except Exception as error:  # a scheduler job without the handler, or going away
            logger.debug("job series not pushed: %s: %s", type(error).__name__, error)

    every = 1000 * float(getattr(cluster.profile, "poll_interval", 5))
    callback = PeriodicCallback(push, every)
    cluster.periodic_callbacks["jobstrap-metrics"] = callback  # stopped at close
    callback.start()
    await push()
