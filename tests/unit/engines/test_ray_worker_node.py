"""When a Ray worker node's rank ends its node: the run's end, a lost head, a dead node."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from jobstrap.engines.ray.engine import _watch_node


class FakeNode:
    """Stands in for :class:`~jobstrap.engines.ray.node.RayNode` (only what is watched)."""

    def __init__(self, code: int | None = None) -> None:
        self.code = code
        self.log_file = Path("/nonexistent/ray.log")

    def exit_code(self) -> int | None:
        return self.code

    def last_words(self) -> str:
        return "raylet: out of memory"


@pytest.fixture
def listening() -> str:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()


def _closed_address() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()  # nothing listens there now: connections are refused at once
    return address


def test_the_apps_exit_code_ends_the_node_cleanly(tmp_path: Path, listening: str) -> None:
    exit_file = tmp_path / "exit_code"
    threading.Timer(0.3, exit_file.write_text, args=("3\n",)).start()
    code = _watch_node(FakeNode(), listening, exit_file, threading.Event(), 60.0)  # type: ignore[arg-type]
    assert code == 0


def test_a_head_that_stops_answering_ends_the_node_with_1(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    address = _closed_address()
    code = _watch_node(FakeNode(), address, tmp_path / "exit_code", threading.Event(), 0.5)  # type: ignore[arg-type]
    assert code == 1
    assert f"lost the Ray head at {address}" in capfd.readouterr().err


def test_a_node_that_dies_is_one_line_with_its_logs_last_words(
    tmp_path: Path, listening: str, capfd: pytest.CaptureFixture[str]
) -> None:
    code = _watch_node(FakeNode(code=1), listening, tmp_path / "exit_code", threading.Event(), 60.0)  # type: ignore[arg-type]
    assert code == 1
    err = capfd.readouterr().err
    assert "ended (exit code 1: raylet: out of memory)" in err
    assert err.count("\n") == 1


def test_a_node_killed_by_a_signal_says_which(
    tmp_path: Path, listening: str, capfd: pytest.CaptureFixture[str]
) -> None:
    code = _watch_node(
        FakeNode(code=-9), listening, tmp_path / "exit_code", threading.Event(), 60.0
    )  # type: ignore[arg-type]
    assert code == 1
    assert "killed by SIGKILL" in capfd.readouterr().err


def test_the_batch_systems_signal_stops_the_node_cleanly(tmp_path: Path, listening: str) -> None:
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    assert _watch_node(FakeNode(), listening, tmp_path / "exit_code", stop, 60.0) == 0  # type: ignore[arg-type]
