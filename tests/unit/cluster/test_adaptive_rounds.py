"""The idle-aware adaptive loop's rounds, against a small fake of the cluster's jobs.

What a round decides from the scheduler's work (given here as a
:class:`~jobstrap.cluster.demand.Demand`): submit at once, give up only what every
one of the last ``wait_count`` rounds found surplus, and tell the rotation what the
pool wants.
"""

from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace
from typing import Any

from jobstrap.cluster.adaptive import JobAdaptive, PoolAdaptive
from jobstrap.cluster.demand import Demand
from jobstrap.cluster.scaling import JobShape


class FakeJobPool:
    """Jobs of one pool, all pending (no worker at the scheduler)."""

    def __init__(self, jobs: int) -> None:
        self.jobs = [f"j{i}" for i in range(jobs)]
        self.count = jobs
        self.wanted: dict[str, int] = {}
        self.retired: set[str] = set()
        self.default_pool = "default"

    def plan(self, pool: str | None = None) -> set[str]:
        return set(self.jobs)

    async def scale_to(self, target: int, pool: str | None = None) -> None:
        while len(self.jobs) < target:
            self.jobs.append(f"j{self.count}")
            self.count += 1

    async def scale_down(self, jobs: list[str]) -> None:
        self.jobs = [j for j in self.jobs if j not in jobs]

    def pool_of(self, name: str) -> str:
        return "default"

    def info(self, name: str) -> Any:
        return SimpleNamespace(submitted=float(name[1:]))

    def queue_waits(self, pool: str) -> list[float]:
        return []

    def worker_names_of(self, jobs: list[str]) -> list[str]:
        return []


def _loop(jobs: int, wait_count: int) -> tuple[PoolAdaptive, FakeJobPool]:
    pool = SimpleNamespace(resources={}, shape=JobShape(threads=1))
    cluster = SimpleNamespace(
        job_pool=FakeJobPool(jobs), workers_per_job=1, pools={"default": pool}
    )
    # interval 0: no periodic callback; the test runs the rounds itself.
    adaptive = PoolAdaptive(
        cluster,
        pools={"default": (0, math.inf)},
        idle_hold=60.0,
        interval=0,
        wait_count=wait_count,
        target_duration=1,
    )
    return adaptive, cluster.job_pool


def _round(adaptive: PoolAdaptive, tasks: int) -> None:
    # One-second tasks with a one-second target duration: a worker per task.
    demand = Demand(plain_tasks=tasks, plain_seconds=float(tasks))

    async def observe() -> Demand:
        return demand

    adaptive._observe = observe  # type: ignore[method-assign]
    asyncio.run(adaptive._round())


def test_a_pending_job_goes_only_after_wait_count_rounds_of_surplus() -> None:
    adaptive, jobs = _loop(jobs=0, wait_count=3)
    _round(adaptive, tasks=3)
    assert len(jobs.plan()) == 3  # up at once
    _round(adaptive, tasks=1)  # a dip (tasks finishing, durations not known yet)
    _round(adaptive, tasks=1)
    assert len(jobs.plan()) == 3
    assert jobs.wanted == {"default": 3}  # what the rotation is told: the recent most
    _round(adaptive, tasks=1)  # three rounds in a row want 1
    assert len(jobs.plan()) == 1
    assert jobs.plan() == {"j0"}  # the newest pending jobs go first
    assert adaptive.released == {"default": 2}
    assert jobs.wanted == {"default": 1}


def test_a_dip_between_rises_gives_nothing_up() -> None:
    adaptive, jobs = _loop(jobs=0, wait_count=3)
    for tasks in (3, 1, 1, 3, 1, 2, 3, 1, 1, 3):  # a 3 in every 3 rounds
        _round(adaptive, tasks=tasks)
        assert len(jobs.plan()) == 3
    assert adaptive.released == {"default": 0}


def test_only_what_every_recent_round_found_surplus_goes() -> None:
    adaptive, jobs = _loop(jobs=4, wait_count=2)
    _round(adaptive, tasks=2)
    assert len(jobs.plan()) == 4  # one round is no pattern
    _round(adaptive, tasks=3)  # both rounds agree only that one job is surplus
    assert len(jobs.plan()) == 3


def test_stopping_the_loop_lets_the_rotation_replace_every_job_again() -> None:
    adaptive, jobs = _loop(jobs=0, wait_count=1)
    _round(adaptive, tasks=2)
    assert jobs.wanted == {"default": 2}
    adaptive.stop()
    assert jobs.wanted == {}


def test_distributed_s_own_loop_tells_the_rotation_the_most_its_recent_rounds_wanted() -> None:
    # adapt() without pools or hold runs distributed's loop (JobAdaptive): the
    # rotation must hear from it too, or it replaces jobs that loop is closing.
    cluster = SimpleNamespace(job_pool=FakeJobPool(3), workers_per_job=1)
    targets = iter([3, 1, 1, 1])

    class Loop(JobAdaptive):
        async def target(self) -> int:
            return next(targets)

    adaptive = Loop(cluster, interval=0, wait_count=3, minimum=0, maximum=10)
    wanted = []
    for _ in range(4):
        asyncio.run(adaptive.safe_target())
        wanted.append(dict(cluster.job_pool.wanted))
    assert wanted == [{"default": 3}, {"default": 3}, {"default": 3}, {"default": 1}]
    adaptive.stop()
    assert cluster.job_pool.wanted == {}
