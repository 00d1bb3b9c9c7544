"""Draining workers before their job ends: stop new tasks, let running ones finish.

``Scheduler.retire_workers`` moves a worker's results away and removes it at once:
a task it was running is started again elsewhere, which is work thrown away. A
walltime-aware cluster knows a job's end well ahead, so it drains instead, through
the ``jobstrap_drain`` handler this module adds to the scheduler:

1. the job's workers go to ``closing_gracefully`` (distributed's own status for a
   worker being retired): the scheduler sends them no new task and the workers start
   none of the tasks queued on them;
2. while a task is running on them whose expected rest (the scheduler's duration
   estimate for its prefix, less what it has run) fits in the seconds the cluster
   grants, the drain waits (:func:`drain_decision`); a task that cannot finish in
   time is not waited for (it restarts elsewhere now rather than later);
   Tasks queued on them but not started move to running workers (the work-stealing
   extension's confirmed move), so they too start only once;
3. ``retire_workers(close_workers=True)`` then moves their results to the other
   workers and closes them; the cluster cancels the job.

Runs inside the scheduler (in this process or in the scheduler's job, where the
cluster installs :class:`WorkerDrain` as a plugin); imports nothing client-side.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from distributed.core import Status
from distributed.diagnostics.plugin import SchedulerPlugin

__all__ = ["DRAIN_HANDLER", "RunningTask", "WorkerDrain", "drain_decision", "install_drain"]

logger = logging.getLogger(__name__)

#: The scheduler handler the cluster calls (``scheduler_comm.jobstrap_drain``).
DRAIN_HANDLER = "jobstrap_drain"

#: Seconds between two looks at the draining workers' tasks.
POLL_SECONDS = 0.2

#: The workers report what they execute in their heartbeats (every second or so):
#: a task running when the drain began is known from the first heartbeat after it.
HEARTBEAT_WAIT = 5.0


@dataclass(frozen=True)
class RunningTask:
    """A task executing on a draining worker, as the scheduler sees it.

    Attributes
    ----------
    elapsed
        Seconds it has been executing.
    estimate
        The scheduler's expected duration of a task of its prefix (seconds).
    """

    elapsed: float
    estimate: float

    @property
    def rest(self) -> float:
        """Expected seconds until it finishes (0 once it has overrun its estimate)."""
        return max(0.0, self.estimate - self.elapsed)


def drain_decision(running: Iterable[RunningTask], seconds_left: float) -> float | None:
    """Wait for the running tasks, or retire the workers now.

    Parameters
    ----------
    running
        The tasks executing on the draining workers.
    seconds_left
        Seconds the drain may still wait before the workers must be retired.

    Returns
    -------
    float or None
        The expected wait (seconds) while some running task is expected to finish
        within ``seconds_left``; ``None`` to retire now: nothing runs, the time is
        up, or no running task can finish in time (waiting would only delay its
        restart elsewhere). A task that overran its estimate is expected to finish
        any moment; ``seconds_left`` bounds that hope.
    """
    if seconds_left <= 0:
        return None
    fitting = [task.rest for task in running if task.rest <= seconds_left]
    if not fitting:
        return None
    return max(fitting)


def _running_tasks(scheduler: Any, workers: Iterable[Any]) -> list[RunningTask]:
    """What the draining workers execute, with the scheduler's estimate for each."""
    tasks = []
    for ws in workers:
        for ts, elapsed in ws.executing.items():
            if ts in ws.processing:  # finished since the last heartbeat otherwise
                estimate = scheduler._get_prefix_duration(ts.prefix)
                tasks.append(RunningTask(float(elapsed), float(estimate)))
    return tasks


async def drain_workers(
    scheduler: Any, names: list[str] | None = None, seconds: float = 0.0
) -> dict[str, Any]:
    """Stop sending tasks to these workers, wait for their running tasks, retire them.

    Parameters
    ----------
    scheduler
        The scheduler.
    names
        The workers' names.
    seconds
        How long the drain may wait for running tasks (the caller keeps the time it
        needs to move data and end the job out of it).

    Returns
    -------
    dict
        ``retired`` (worker addresses), ``waited`` (seconds), ``interrupted`` (tasks
        still running when the workers were retired: they start again elsewhere).
    """
    wanted = {str(name) for name in names or ()}
    workers = [ws for ws in scheduler.workers.values() if str(ws.name) in wanted]
    began = time.monotonic()
    deadline = began + max(0.0, float(seconds))
    stimulus_id = f"jobstrap-drain-{time.time()}"
    for ws in workers:
        if ws.status != Status.closing_gracefully:
            # As retire_workers does: the scheduler's state first (no new task from
            # now on), then the worker's (it starts none of its queued tasks).
            scheduler.handle_worker_status_change(Status.closing_gracefully, ws, stimulus_id)
            scheduler.stream_comms[ws.address].send(
                {
                    "op": "worker-status-change",
                    "status": Status.closing_gracefully.name,
                    "stimulus_id": stimulus_id,
                }
            )
    # A task that started just before the drain shows in the next heartbeat.
    seen = time.time()
    while time.monotonic() < min(deadline, began + HEARTBEAT_WAIT) and any(
        ws.processing and ws.last_seen <= seen for ws in workers if ws.address in scheduler.workers
    ):
        await asyncio.sleep(POLL_SECONDS)
    _move_queued_tasks(scheduler, workers)
    interrupted = 0
    while True:
        live = [ws for ws in workers if ws.address in scheduler.workers]
        running = _running_tasks(scheduler, live)
        if drain_decision(running, deadline - time.monotonic()) is None:
            interrupted = len(running)
            break
        await asyncio.sleep(POLL_SECONDS)
    waited = time.monotonic() - began
    addresses = [ws.address for ws in workers if ws.address in scheduler.workers]
    retired: dict[str, Any] = {}
    if addresses:
        retired = await scheduler.retire_workers(
            workers=addresses, close_workers=True, remove=True, stimulus_id=stimulus_id
        )
    if interrupted:
        logger.info("drained %s after %.1f s; %d task(s) restart", names, waited, interrupted)
    return {"retired": list(retired), "waited": waited, "interrupted": interrupted}


def _move_queued_tasks(scheduler: Any, workers: Iterable[Any]) -> None:
    """Hand the tasks queued on draining workers (not started) to running workers.

    Through the work-stealing extension's request, which the worker confirms only
    for a task it has not started: the task moves without a new start, where
    removing the worker later would send it through ``processing`` again.
    """
    stealing = scheduler.extensions.get("stealing")
    thieves = list(scheduler.running)
    if stealing is None or not thieves:
        return
    for ws in workers:
        for ts in list(ws.processing):
            if ts in ws.executing or ts in ws.long_running:
                continue
            thief = min(thieves, key=lambda candidate: candidate.occupancy)
            try:
                stealing.move_task_request(ts, ws, thief)
            except Exception:  # best effort: the task starts again elsewhere otherwise
                logger.debug("could not move %s off a draining worker", ts.key, exc_info=True)


def install_drain(scheduler: Any) -> None:
    """Add the ``jobstrap_drain`` handler to a scheduler (idempotent)."""

    async def handler(names: list[str] | None = None, seconds: float = 0.0) -> dict[str, Any]:
        return await drain_workers(scheduler, names, seconds)

    scheduler.handlers[DRAIN_HANDLER] = handler


class WorkerDrain(SchedulerPlugin):
    """Installs the ``jobstrap_drain`` handler on a scheduler in another process."""

    name = "jobstrap-worker-drain"

    async def start(self, scheduler: Any) -> None:
        install_drain(scheduler)
