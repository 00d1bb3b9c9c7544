"""What work each pool is needed for, from the scheduler's state: adapt per pool.

:func:`observe` runs in the scheduler (``run_function``, so a scheduler in a job
answers as well as one in this process) and returns plain data: the tasks that
ask for resources, grouped by what they ask (whether they wait as *unrunnable*
because no worker provides the resource, or sit processing on a worker that
does), and the load of plain tasks. :func:`worker_targets` turns that into
workers per pool: a resource-restricted task wakes the pool whose workers provide
the resource; plain tasks the default pool, by their expected run time as
``Scheduler.adaptive_target`` counts it. Pure apart from :func:`observe`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Demand", "PoolNeeds", "observe", "worker_targets"]

#: Above this share of the workers' memory in use, the plain pool doubles (as
#: ``Scheduler.adaptive_target`` does).
MEMORY_FRACTION = 0.6

#: Durations are summed over at most this many tasks per group and scaled up (as
#: ``Scheduler.adaptive_target`` does), so a million-task graph costs no more.
_SAMPLE = 100


@dataclass(frozen=True)
class Demand:
    """The scheduler's work, as the pools see it.

    Attributes
    ----------
    restricted
        ``(restrictions, tasks)`` pairs: tasks asking for resources, unrunnable or
        processing, grouped by what they ask.
    plain_tasks
        Tasks without resource restrictions, queued, unrunnable or processing.
    plain_seconds
        Their expected run time in seconds (the scheduler's per-prefix durations).
    busy
        Worker names with a task processing.
    workers
        Every worker name at the scheduler.
    memory_pressure
        The workers hold more than 60 % of their memory (``adaptive_target``'s rule:
        then it asks for twice the workers).
    """

    restricted: tuple[tuple[Mapping[str, float], int], ...] = ()
    plain_tasks: int = 0
    plain_seconds: float = 0.0
    busy: frozenset[str] = frozenset()
    workers: frozenset[str] = frozenset()
    memory_pressure: bool = False

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Demand:
        """From :func:`observe`'s plain answer."""
        return cls(
            restricted=tuple((dict(r), int(n)) for r, n in payload.get("restricted", ())),
            plain_tasks=int(payload.get("plain_tasks", 0)),
            plain_seconds=float(payload.get("plain_seconds", 0.0)),
            busy=frozenset(payload.get("busy", ())),
            workers=frozenset(payload.get("workers", ())),
            memory_pressure=bool(payload.get("memory_pressure", False)),
        )


def _duration(scheduler: Any, ts: Any) -> float:
    try:
        return float(scheduler._get_prefix_duration(ts.prefix))
    except Exception:  # a scheduler without the estimate: distributed's default guess
        return 0.5


def observe(dask_scheduler: Any = None) -> dict[str, Any]:
    """Run in the scheduler: its work grouped for the pools (plain, picklable data)."""
    scheduler = dask_scheduler
    groups: dict[tuple[tuple[str, float], ...], int] = {}
    plain = 0
    plain_seconds = 0.0
    sampled = 0

    def count(ts: Any) -> None:
        nonlocal plain, plain_seconds, sampled
        restrictions = ts.resource_restrictions
        if restrictions:
            key = tuple(sorted(restrictions.items()))
            groups[key] = groups.get(key, 0) + 1
            return
        plain += 1
        if sampled < _SAMPLE:
            sampled += 1
            plain_seconds += _duration(scheduler, ts)

    for ts in scheduler.unrunnable:
        count(ts)
    for ts in scheduler.queued:
        count(ts)
    busy = []
    for ws in scheduler.workers.values():
        if ws.processing:
            busy.append(ws.name)
        for ts in ws.processing:
            count(ts)
    if sampled and plain > sampled:
        plain_seconds *= plain / sampled
    limit = sum(ws.memory_limit or 0 for ws in scheduler.workers.values())
    used = sum(ws.nbytes for ws in scheduler.workers.values())
    return {
        "memory_pressure": limit > 0 and used > MEMORY_FRACTION * limit,
        "restricted": [[dict(key), n] for key, n in groups.items()],
        "plain_tasks": plain,
        "plain_seconds": plain_seconds,
        "busy": [str(b) for b in busy],
        "workers": [str(ws.name) for ws in scheduler.workers.values()],
    }


@dataclass(frozen=True)
class PoolNeeds:
    """What the plan needs to know of one pool.

    Attributes
    ----------
    resources
        The resources each of its workers provides.
    threads
        Threads per worker (plain work is counted in threads, as distributed does).
    """

    resources: Mapping[str, float] = field(default_factory=dict)
    threads: int = 1


def _slots(resources: Mapping[str, float], restrictions: Mapping[str, float]) -> int:
    """How many such tasks one worker runs at once (0: it cannot run them at all)."""
    slots = math.inf
    for name, amount in restrictions.items():
        have = resources.get(name, 0)
        if have < amount:
            return 0
        slots = min(slots, have // amount if amount > 0 else math.inf)
    return 1 if math.isinf(slots) else max(1, int(slots))


def worker_targets(
    demand: Demand,
    pools: Mapping[str, PoolNeeds],
    plain_pool: str,
    target_duration: float,
    plain_workers: int = 0,
) -> dict[str, int]:
    """Workers each pool is needed for.

    Parameters
    ----------
    demand
        The scheduler's work.
    pools
        The adapted pools, in order: a restricted task goes to the first pool whose
        workers can run it.
    plain_pool
        The pool plain tasks wake (the cluster's first pool without resources).
    target_duration
        Seconds the plain work should take (distributed's ``target_duration``).
    plain_workers
        Workers the plain pool has now (doubled under memory pressure).

    Returns
    -------
    dict
        Workers wanted by pool (tasks no pool can run are left out: they stay
        unrunnable, as they would without adapt).
    """
    wanted = dict.fromkeys(pools, 0)
    for restrictions, tasks in demand.restricted:
        for name, needs in pools.items():
            slots = _slots(needs.resources, restrictions)
            if slots:
                wanted[name] += math.ceil(tasks / slots)
                break
    if plain_pool in pools and demand.plain_tasks:
        threads = math.ceil(demand.plain_seconds / max(target_duration, 1e-3))
        threads = max(1, min(demand.plain_tasks, threads))
        wanted[plain_pool] += math.ceil(threads / max(1, pools[plain_pool].threads))
    if plain_pool in pools and demand.memory_pressure:
        wanted[plain_pool] = max(wanted[plain_pool], 2 * plain_workers)
    return wanted
