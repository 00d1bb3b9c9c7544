"""Why a rank's workers did not start: the worker's own failure, or the network.

Real nannies and worker processes against a real in-process scheduler (plain TCP
on loopback: the message does not depend on the transport).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import dask
import pytest
from distributed import Scheduler
from distributed.security import Security

from jobstrap.engines.dask.workers import WorkerOptions, serve_workers


def _options(**extra: object) -> WorkerOptions:
    return WorkerOptions(
        host="127.0.0.1",
        security=Security(),
        nthreads=1,
        death_timeout=3,
        dashboard=False,
        extra=dict(extra),
    )


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(autouse=True)
def _forked_workers() -> Iterator[None]:
    # The bootstrap's default (a fork server) needs a rank's setup; a fork is enough here.
    with dask.config.set({"distributed.worker.multiprocessing-method": "fork"}):
        yield


def test_a_worker_that_fails_on_its_own_is_not_blamed_on_the_network(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def run() -> int:
        async with Scheduler(host="127.0.0.1", port=0, dashboard=False) as scheduler:
            options = _options(preload=["no_such_module_for_jobstrap_tests"])
            return await serve_workers(scheduler.address, options)

    code = asyncio.run(run())

    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("jobstrap")]
    assert code == 1
    assert len(lines) == 1
    assert "failed to start" in lines[0]
    assert "answers from this node" in lines[0]
    assert "worker process itself failed" in lines[0]
    assert "network" not in lines[0]


def test_an_unreachable_scheduler_is_reported_as_the_network(
    capsys: pytest.CaptureFixture[str],
) -> None:
    address = f"tcp://127.0.0.1:{_closed_port()}"

    code = asyncio.run(serve_workers(address, _options()))

    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("jobstrap")]
    assert code == 1
    assert len(lines) == 1
    assert f"could not join the scheduler at {address}" in lines[0]
    assert "does not answer from this node" in lines[0]
    assert "--interface" in lines[0]
