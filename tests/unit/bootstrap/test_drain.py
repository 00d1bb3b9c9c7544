"""Telling the app to wind down: the flag, callbacks and the drain file."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import wait_until


def test_drain_request_sets_the_flag_runs_callbacks_and_writes_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobstrap.bootstrap import drain

    drain._reset_for_tests()
    monkeypatch.setenv(drain.DRAIN_FILE_ENV, str(tmp_path / "drain"))
    heard: list[str] = []
    drain.on_drain(lambda: heard.append("first"))
    try:
        accepted = drain.request_drain("SIGUSR1")
        again = drain.request_drain("SIGTERM")
        wait_until(lambda: heard, 10, "the callback")

        assert accepted
        assert not again
        assert drain.draining()
        assert drain.drain_reason() == "SIGUSR1"
        assert (tmp_path / "drain").read_text().startswith("SIGUSR1")
        assert heard == ["first"]
    finally:
        drain._reset_for_tests()


def test_drain_file_alone_tells_another_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobstrap.bootstrap import drain

    drain._reset_for_tests()
    flag = tmp_path / "drain"
    monkeypatch.setenv(drain.DRAIN_FILE_ENV, str(flag))
    assert not drain.draining()

    flag.write_text("SIGTERM 0\n")

    assert drain.draining()
