"""The settings that keep one scheduler up at thousands of workers (engines/dask/scale.py)."""

from __future__ import annotations

import asyncio
import resource
from typing import Any

import dask
import pytest

from jobstrap.engines.dask import scale


def test_small_launches_join_at_once() -> None:
    assert scale.join_jitter(1) == 0.0
    assert scale.join_jitter(scale.JITTER_FROM - 1) == 0.0


def test_large_launches_spread_at_the_join_rate_up_to_a_cap() -> None:
    assert scale.join_jitter(4000, rate=400.0) == pytest.approx(10.0)
    assert scale.join_jitter(100_000, rate=400.0) == scale.MAX_JITTER_S


def test_the_join_rate_comes_from_the_environment_when_valid() -> None:
    assert scale.join_rate({"JOBSTRAP_JOIN_RATE": "50"}) == 50.0
    assert scale.join_rate({"JOBSTRAP_JOIN_RATE": "fast"}) == scale.JOIN_RATE
    assert scale.join_rate({"JOBSTRAP_JOIN_RATE": "-3"}) == scale.JOIN_RATE
    assert scale.join_rate({}) == scale.JOIN_RATE


def test_world_workers_reads_the_launchers_size() -> None:
    step = {"SLURM_PROCID": "3", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "1000"}
    assert scale.world_workers(step) == 1000
    assert scale.world_workers({"PMI_RANK": "0", "PMI_SIZE": "256"}) == 256
    assert scale.world_workers({}) == 1


def test_scale_defaults_do_not_override_a_users_setting(monkeypatch: Any) -> None:
    monkeypatch.setattr(scale, "_applied", False)
    config = dask.config.config
    saved_defaults = list(dask.config.defaults)
    with dask.config.set({"distributed.comm.timeouts.connect": "7s"}):
        try:
            scale.apply_scale_defaults()
            assert dask.config.get("distributed.comm.timeouts.connect") == "7s"
            assert dask.config.get("distributed.scheduler.worker-ttl") == "10 minutes"
            assert dask.config.get("distributed.comm.socket-backlog") == 4096
        finally:
            dask.config.defaults[:] = saved_defaults
            dask.config.refresh(config=config)


def test_the_open_files_limit_is_raised_to_the_hard_limit(monkeypatch: Any) -> None:
    limits = {"now": (1024, 4096)}

    def getrlimit(_: int) -> tuple[int, int]:
        return limits["now"]

    def setrlimit(_: int, value: tuple[int, int]) -> None:
        limits["now"] = value

    monkeypatch.setattr(resource, "getrlimit", getrlimit)
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    assert scale.raise_open_files_limit() == (4096, 4096)
    assert limits["now"] == (4096, 4096)


def test_a_high_soft_limit_is_left_alone(monkeypatch: Any) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _: (100_000, 200_000))

    def refuse(*_: Any) -> None:
        raise AssertionError("setrlimit must not be called")

    monkeypatch.setattr(resource, "setrlimit", refuse)
    assert scale.raise_open_files_limit() == (100_000, 100_000 * 2)


def test_a_batch_worker_pauses_once_before_its_first_registration(monkeypatch: Any) -> None:
    from distributed import Worker

    from jobstrap.engines.dask.servers import HeadlessWorker

    pauses: list[float] = []
    registrations: list[str] = []

    async def fake_sleep(seconds: float) -> None:
        pauses.append(seconds)

    async def fake_register(self: Any) -> None:
        registrations.append("registered")

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    monkeypatch.setattr(Worker, "_register_with_scheduler", fake_register)
    worker: Any = HeadlessWorker.__new__(HeadlessWorker)
    worker.join_jitter = 2.0
    worker._joined_once = False

    async def twice() -> None:
        await worker._register_with_scheduler()
        await worker._register_with_scheduler()  # a reconnection: no second pause

    asyncio.run(twice())
    assert registrations == ["registered", "registered"]
    assert len(pauses) == 1
    assert 0.0 <= pauses[0] <= 2.0
