"""The app's rank's view of the Ray cluster, against a stand-in for Ray's GCS client."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("ray")

from jobstrap.engines.ray import link as ray_link
from jobstrap.engines.ray.link import RayLink

ALIVE, DEAD = 0, 1  # GcsNodeInfo's states


class _Id:
    def __init__(self, name: str) -> None:
        self.name = name

    def hex(self) -> str:
        return self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Id) and other.name == self.name


class FakeGcs:
    """Nodes by id: (address, state, head); what ``get_all_node_info`` answers."""

    def __init__(self) -> None:
        self.nodes: dict[str, tuple[str, int, bool]] = {}
        self.silent = False

    def get_all_node_info(self, timeout: float) -> dict[_Id, Any]:
        if self.silent:
            raise TimeoutError("GCS did not answer")
        return {
            _Id(node_id): SimpleNamespace(node_manager_address=addr, state=state, is_head_node=head)
            for node_id, (addr, state, head) in self.nodes.items()
        }


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_link, "POLL_INTERVAL", 0.05)


def _link(gcs: FakeGcs, **more: Any) -> tuple[RayLink, threading.Event]:
    interrupted = threading.Event()
    link = RayLink(
        "10.0.0.1:6379", death_timeout=0.5, client=gcs, interrupt=interrupted.set, **more
    )
    return link, interrupted


def test_the_app_waits_for_every_node_and_the_ca_key_goes_once_all_joined() -> None:
    gcs = FakeGcs()
    gcs.nodes["head"] = ("10.0.0.1", ALIVE, True)
    joined = threading.Event()
    link, _ = _link(gcs, on_all_joined=joined.set)
    threading.Timer(0.3, lambda: gcs.nodes.update(w1=("10.0.0.2", ALIVE, False))).start()
    threading.Timer(0.6, lambda: gcs.nodes.update(w2=("10.0.0.3", ALIVE, False))).start()
    try:
        assert link.wait_for_workers(2, timeout=30) == 2
        assert joined.is_set()
    finally:
        link.stop()


def test_a_node_that_never_joins_ends_the_wait_at_the_deadline() -> None:
    gcs = FakeGcs()
    gcs.nodes["head"] = ("10.0.0.1", ALIVE, True)
    joined = threading.Event()
    link, _ = _link(gcs, on_all_joined=joined.set)
    try:
        started = time.monotonic()
        assert link.wait_for_workers(1, timeout=0.5) == 0
        assert time.monotonic() - started < 10
        assert not joined.is_set()  # a late node can still be certified
    finally:
        link.stop()


def test_a_node_that_dies_stops_the_app_naming_it(capfd: pytest.CaptureFixture[str]) -> None:
    gcs = FakeGcs()
    gcs.nodes.update(head=("10.0.0.1", ALIVE, True), w1=("10.0.0.2", ALIVE, False))
    link, interrupted = _link(gcs)
    try:
        assert link.wait_for_workers(1, timeout=30) == 1
        gcs.nodes["w1"] = ("10.0.0.2", DEAD, False)
        assert interrupted.wait(10)
        assert link.lost.is_set()
        assert link.lost_message is not None
        assert "10.0.0.2" in link.lost_message
    finally:
        link.stop()
    assert "Ray node(s) died (10.0.0.2)" in capfd.readouterr().err


def test_a_silent_head_stops_the_app_after_the_death_timeout() -> None:
    gcs = FakeGcs()
    gcs.nodes.update(head=("10.0.0.1", ALIVE, True), w1=("10.0.0.2", ALIVE, False))
    link, interrupted = _link(gcs)
    try:
        link.wait_for_workers(1, timeout=30)
        gcs.silent = True
        assert interrupted.wait(10)
        assert link.lost_message is not None
        assert "stopped answering" in link.lost_message
    finally:
        link.stop()


def test_nothing_is_stopped_while_every_node_lives() -> None:
    gcs = FakeGcs()
    gcs.nodes.update(head=("10.0.0.1", ALIVE, True), w1=("10.0.0.2", ALIVE, False))
    link, interrupted = _link(gcs)
    try:
        link.wait_for_workers(1, timeout=30)
        assert not interrupted.wait(1.0)
        assert not link.lost.is_set()
    finally:
        link.stop()
