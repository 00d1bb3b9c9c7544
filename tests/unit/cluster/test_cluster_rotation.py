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

    def names(self) -> list[str]:
        return [*self.started, *self.added]

    def running_jobs(self) -> dict[str, tuple[float, float | None]]:
        return {name: (when, when) for name, when in self.started.items()}

    def waiting_jobs(self) -> set[str]:
        return set(self.names()) - self.arrived

    def add_replacement(self) -> str:
        name = f"new{len(self.added)}"
        self.added.append(name)
        return name

    async def apply(self) -> None:
        return None

    async def retire(self, name: str) -> None:
        self.retired.append(name)
        del self.started[name]

    def background(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        coroutine.close()


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

    assert checked is jobs
    assert jobs.retired == ["old"]
    assert manager.retirements == 1
    assert manager.outgoing == set()
