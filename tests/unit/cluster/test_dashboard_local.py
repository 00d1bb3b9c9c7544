"""The dashboard of a real cluster on the local backend: loopback only by default.

The scheduler listens on a real network interface; its dashboard (plain HTTP, no
login) must not: a connection to the dashboard's port on that interface is refused
while the node's loopback answers, and what the run records says so.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest

from jobstrap import LocalBatchCluster
from support import local_backend_env


@pytest.fixture(autouse=True)
def private_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A spool, run root and registry of this test's own (also for subprocesses)."""
    # The local queue's own kill wait (10 s): these tests drain and close gracefully.
    local_backend_env(monkeypatch, tmp_path, kill_wait=10)


def an_interface() -> tuple[str, str]:
    """(name, IPv4 address) of a non-loopback interface that is up (skip without one)."""
    stats = psutil.net_if_stats()
    for name, entries in psutil.net_if_addrs().items():
        for entry in entries:
            up = name in stats and stats[name].isup
            if up and entry.family == socket.AF_INET and not entry.address.startswith("127."):
                return name, str(entry.address)
    pytest.skip("this machine has no non-loopback IPv4 interface that is up")


def answers(host: str, port: int) -> bool:
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


def test_the_dashboard_answers_on_loopback_and_is_refused_on_the_scheduler_s_interface() -> None:
    name, address = an_interface()
    with LocalBatchCluster(cores=1, memory="300MiB", scheduler_interface=name) as cluster:
        assert urlsplit(cluster.scheduler_address).hostname == address
        port = int(cluster.scheduler_info["services"]["dashboard"])

        assert answers("127.0.0.1", port)
        assert refused(address, port)
        assert cluster.dashboard_link == f"http://127.0.0.1:{port}/status"
        info = json.loads((Path(cluster.run_dir) / "info.json").read_text())
        assert info["dashboard_address"] == f"http://127.0.0.1:{port}/status"


def test_asked_for_the_dashboard_answers_on_the_scheduler_s_interface() -> None:
    name, address = an_interface()
    with LocalBatchCluster(
        cores=1, memory="300MiB", scheduler_interface=name, dashboard_bind="interface"
    ) as cluster:
        port = int(cluster.scheduler_info["services"]["dashboard"])

        assert answers(address, port)
        assert cluster.dashboard_link == f"http://{address}:{port}/status"
