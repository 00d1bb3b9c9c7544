"""The rotation works against the small jobs protocol, not against a cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from jobstrap.cluster.rotation import LifetimeManager, RotatingJobs
from jobstrap.config.profile import Profile, load_profile


class FakeJobs:
    """Jobs by name: started at ``started``, arrived when listed in ``arrived``."""

    def __init__(self, started: dict[str, float]) -> None:
        self.started = dict(started)
        self.arrived: set[str] = set(started)
        self.added: list[str] = []
        self.retired: list[str] = []
        self.drained: list[tuple[str, float]] = []
        self.pending: list[Coroutine[Any, Any, Any]] = []
        #: What an adaptive loop wants of the pool (None: no such loop).
        self.wanted: int | None = None
        #: Set by a test to the manager's outgoing set (the pool's plan leaves them out).
        self.outgoing: set[str] = set()

    def names(self) -> list[str]:
        return [*self.started, *self.added]

    def running_jobs(self) -> dict[str, tuple[float, float | None]]:
        return {name: (when, when) for name, when in self.started.items()}

    def waiting_jobs(self) -> set[str]:
        return set(self.names()) - self.arrived

    def pool_of(self, name: str) -> str:
        return "default"

    def add_replacement(self, pool: str | None = None) -> str:
        name = f"new{len(self.added)}"
        self.added.append(name)
        return name

    def replacement_wanted(self, pool: str) -> bool:
        capacity = len([n for n in self.names() if n not in self.retired])
        return self.wanted is None or capacity - len(self.outgoing) <= self.wanted

    async def apply(self) -> None:
        return None

    async def retire(self, name: str) -> None:
        self.retired.append(name)
        del self.started[name]

    async def drain(self, name: str, seconds: float) -> None:
        self.drained.append((name, seconds))
        await self.retire(name)

    def background(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        self.pending.append(coroutine)

    def run_background(self) -> None:
        while self.pending:
            asyncio.run(self.pending.pop(0))


@pytest.fixture
def profile() -> Profile:
    return load_profile(None, {"system": "local", "walltime": "00:10:00", "lifetime_margin": 60})


def test_an_ageing_job_gets_a_successor_then_retires_once_it_arrived(profile: Profile) -> None:
    jobs = FakeJobs({"old": 0.0})
    manager = LifetimeManager(jobs, profile)
    checked: RotatingJobs = jobs  # the fake satisfies the protocol

    asyncio.run(manager.step(now=539.0))  # 600 s walltime, 60 s margin: due at 540
    assert jobs.added == ["new0"]
    assert manager.outgoing == {"old"}
    assert jobs.retired == []  # its successor has no worker yet

    jobs.arrived.add("new0")
    asyncio.run(manager.step(now=541.0))
    assert manager.draining == {"old"}
    jobs.run_background()

    assert checked is jobs
    assert jobs.retired == ["old"]
    # A 60 s margin: 46 s of drain, 7 s of handover and 7 s of backstop before 600 s.
    assert jobs.drained == [("old", 45.0)]
    assert manager.retirements == 1
    assert manager.outgoing == set()


def test_a_replacement_is_submitted_at_most_half_a_margin_before_the_drain(
    profile: Profile,
) -> None:
    # The first expected queue wait (30 s) asks for a lead of 70 s; the limit is 30 s,
    # so the replacement and its predecessor overlap for at most 90 s.
    jobs = FakeJobs({"old": 0.0})
    manager = LifetimeManager(jobs, profile)
    asyncio.run(manager.step(now=509.0))
    assert jobs.added == []
    asyncio.run(manager.step(now=510.0))
    assert jobs.added == ["new0"]
    assert manager.overlap_limit == 90.0


def test_a_late_replacement_delays_the_drain_until_the_margin_but_no_further(
    profile: Profile,
) -> None:
    jobs = FakeJobs({"a": 0.0})
    manager = LifetimeManager(jobs, profile)
    asyncio.run(manager.step(now=520.0))
    assert jobs.added == ["new0"]
    asyncio.run(manager.step(now=539.0))
    assert manager.draining == set()  # the successor has no worker yet
    asyncio.run(manager.step(now=540.0))  # the latest start: the whole drain is left
    assert manager.draining == {"a"}
    jobs.run_background()
    assert jobs.drained == [("a", 46.0)]


def test_the_backstop_signal_comes_after_the_drain_and_the_handover(profile: Profile) -> None:
    manager = LifetimeManager(FakeJobs({}), profile)
    assert manager.signal_seconds == 7
    assert manager.parts.drain + manager.parts.handover + manager.signal_seconds == 60


def test_no_backstop_is_asked_for_when_it_could_arrive_during_the_drain(
    profile: Profile,
) -> None:
    # Slurm may send the signal up to 60 s early: with a 60 s margin it could come
    # while the drain waits for running tasks, and the job would retire them at once.
    manager = LifetimeManager(FakeJobs({}), profile)
    assert manager.backstop(0) == manager.signal_seconds
    assert manager.backstop(60) is None
    hour = load_profile(None, {"system": "local", "walltime": "01:00:00"})
    long_jobs = LifetimeManager(FakeJobs({}), hour)
    assert long_jobs.parts.handover >= 60
    assert long_jobs.backstop(60) == long_jobs.signal_seconds


def test_a_job_drains_as_soon_as_its_replacement_is_up(profile: Profile) -> None:
    # Two jobs doing one job's work is waste: once the successor's workers are here
    # the old job drains, up to the lead (half a margin) before its planned time.
    jobs = FakeJobs({"old": 0.0})
    manager = LifetimeManager(jobs, profile)
    asyncio.run(manager.step(now=510.0))
    assert jobs.added == ["new0"]
    assert manager.draining == set()
    jobs.arrived.add("new0")
    asyncio.run(manager.step(now=515.0))
    assert manager.draining == {"old"}
    jobs.run_background()
    assert jobs.drained == [("old", 46.0)]


def test_a_job_adapt_no_longer_wants_retires_without_a_successor(profile: Profile) -> None:
    # Adapt wants 1 of the 2 jobs: the one due to retire gets no successor (it would
    # be submitted only to be given up) and drains at its time; once adapt wants 2
    # again, the next due job gets one.
    jobs = FakeJobs({"a": 0.0, "b": 100.0})
    manager = LifetimeManager(jobs, profile)
    jobs.outgoing = manager.outgoing
    jobs.wanted = 1
    for now in range(400, 550, 10):  # through "a"'s replacement window and retirement
        asyncio.run(manager.step(now=float(now)))
        assert jobs.added == [], f"a successor at {now} s"
    assert manager.draining == {"a"}
    jobs.run_background()
    assert jobs.retired == ["a"]

    # "b" alone is what adapt wants: it is replaced when due.
    for now in range(550, 700, 10):
        asyncio.run(manager.step(now=float(now)))
    assert jobs.added == ["new0"]
    assert "b" in manager.outgoing
    jobs.run_background()
