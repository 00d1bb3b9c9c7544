"""Where the dashboard listens: the node's loopback unless the interface is asked for.

The dashboard is plain HTTP without a login; bound to the scheduler's interface,
anyone on that network reads the run's tasks, logs and stack traces. These tests
start real schedulers and connect to their ports.
"""

from __future__ import annotations

import logging
import socket
import urllib.request
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from jobstrap.engines.dask import mpi_compat
from jobstrap.engines.dask.scheduler import LOOPBACK, SchedulerRunner, dashboard_host
from jobstrap.errors import UserError


def interface_address() -> str:
    """An IPv4 address of this machine that is not loopback (skip without one)."""
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family == socket.AF_INET and not entry.address.startswith("127."):
                return str(entry.address)
    pytest.skip("this machine has no non-loopback IPv4 address")


def answers(host: str, port: int) -> bool:
    """Whether an HTTP GET of ``/health`` on ``host:port`` gets a 200."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=5) as response:
            return int(response.status) == 200
    except OSError:
        return False


def refused(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Forget earlier warnings; give back the log levels a scheduler's shutdown raised."""
    from jobstrap.engines.dask.quiet import NOISY_LOGGERS

    monkeypatch.setattr("jobstrap.net.security._warned", set())
    levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def start(host: str, **kwargs: Any) -> SchedulerRunner:
    from distributed import Security

    runner = SchedulerRunner(
        host=host, protocol="tcp", security=Security(), dashboard_port=0, **kwargs
    )
    runner.start()
    return runner


def stop(runner: SchedulerRunner) -> None:
    runner.finish(0)
    runner.wait(30)


def test_the_dashboard_host_is_loopback_unless_the_interface_is_asked_for() -> None:
    assert dashboard_host("10.1.0.5", "loopback") == LOOPBACK == "127.0.0.1"
    assert dashboard_host("10.1.0.5", "interface") == "10.1.0.5"
    with pytest.raises(ValueError, match="loopback or interface"):
        dashboard_host("10.1.0.5", "all")


def test_by_default_the_dashboard_answers_on_loopback_and_is_refused_on_the_interface() -> None:
    host = interface_address()
    runner = start(host)
    try:
        url = runner.dashboard_address
        assert url is not None
        assert url.startswith("http://127.0.0.1:")
        port = int(url.rsplit(":", 1)[1].split("/")[0])

        assert answers("127.0.0.1", port)
        assert refused(host, port)
        assert runner.address.startswith(f"tcp://{host}:")  # the scheduler itself: interface
    finally:
        stop(runner)


def test_asked_for_the_dashboard_answers_on_the_scheduler_s_interface() -> None:
    host = interface_address()
    runner = start(host, dashboard_bind="interface")
    try:
        url = runner.dashboard_address
        assert url is not None
        assert url.startswith(f"http://{host}:")
        port = int(url.rsplit(":", 1)[1].split("/")[0])

        assert answers(host, port)
    finally:
        stop(runner)


# --------------------------------------------------------------- jobstrap.mpi.initialize


def test_initialize_binds_the_dashboard_to_loopback_by_default() -> None:
    import inspect

    default = inspect.signature(mpi_compat.initialize).parameters["dashboard_bind"].default
    assert default == "loopback"


class _Comm:
    """allgather says another rank failed, so ``_scheduler`` stops the run at once."""

    def allgather(self, value: object) -> list[object]:
        return [value, "another rank failed"]


@pytest.mark.parametrize(("bind", "expected"), [("loopback", "127.0.0.1"), ("interface", None)])
def test_initialize_s_scheduler_puts_the_dashboard_where_asked(
    bind: str, expected: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = interface_address()
    runners: list[SchedulerRunner] = []

    class Recorded(SchedulerRunner):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            runners.append(self)

    monkeypatch.setattr("jobstrap.engines.dask.scheduler.SchedulerRunner", Recorded)
    monkeypatch.setattr(mpi_compat, "bcast", lambda comm, value: value)
    monkeypatch.setattr("jobstrap.net.network.choose_address", lambda *a, **k: host)

    mpi_compat._scheduler(
        _Comm(),
        None,
        interface=None,
        single_host=False,
        protocol="tcp",
        dashboard=True,
        dashboard_address=":0",
        dashboard_bind=bind,
        death_timeout=5,
        exit=False,
    )

    assert runners[0].dashboard_host == (expected or host)


def test_initialize_refuses_an_unknown_dashboard_bind() -> None:
    with pytest.raises(UserError, match="dashboard_bind"):
        mpi_compat._check_dashboard_bind("everywhere")


def test_the_interface_opt_in_warns_once_naming_the_risk(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from jobstrap.net.security import warn_insecure

    caplog.set_level(logging.WARNING, logger="jobstrap")
    warn_insecure("dashboard", "a test")
    warn_insecure("dashboard", "a test")

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "plain HTTP without a login" in warnings[0]
    assert "jobstrap tunnel" in warnings[0]
