"""The head rank's program of Ray function and cluster jobs, without Ray running.

The runner calls the shipped function and writes the framed outcome every
engine's future reads; the cluster form says ``ready`` and waits for the drain.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobstrap.batch.package import serialise, work_for, write_input
from jobstrap.batch.progress import read_progress
from jobstrap.batch.remote import rebuild
from jobstrap.bootstrap import drain
from jobstrap.engines.ray import runner
from jobstrap.store.rundir import RunDir
from jobstrap.store.runfiles import read_framed


@pytest.fixture(autouse=True)
def no_drain() -> Iterator[None]:
    drain._reset_for_tests()
    yield
    drain._reset_for_tests()


def _run(tmp_path: Path, function: object, *args: object) -> RunDir:
    run = RunDir.create(tmp_path / "runs", "graph-test")
    write_input(run, serialise(work_for(function, args, None), 2**20))
    return run


def _divide(a: int, b: int) -> float:
    return a / b


def test_the_functions_value_is_the_runs_result(tmp_path: Path) -> None:
    run = _run(tmp_path, _divide, 6, 3)

    assert runner.run_function(run.path) == 0

    assert pickle.loads(read_framed(run.result_file)) == 2.0
    assert not run.error_file.exists()
    progress = read_progress(run.path)
    assert progress is not None
    assert progress.phase == "done"


def test_the_functions_exception_is_the_runs_error_with_its_traceback(tmp_path: Path) -> None:
    run = _run(tmp_path, _divide, 1, 0)

    assert runner.run_function(run.path) == 1

    error = rebuild(pickle.loads(read_framed(run.error_file)))
    assert isinstance(error, ZeroDivisionError)
    assert "_divide" in error.remote_traceback  # type: ignore[attr-defined]
    assert not run.result_file.exists()


def test_a_function_ended_by_the_batch_system_leaves_no_error_file(tmp_path: Path) -> None:
    run = _run(tmp_path, _divide, 1, 0)
    drain.request_drain("SIGTERM")  # the job is being ended: its failure is not the function's

    assert runner.run_function(run.path) == 1

    assert not run.error_file.exists()
    assert not run.result_file.exists()


def test_a_cluster_job_says_ready_and_serves_until_told_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = RunDir.create(tmp_path / "runs", "cluster-test")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:4242")
    ended = threading.Event()

    def serve() -> None:
        runner.serve_cluster(run.path, poll=0.05)
        ended.set()

    threading.Thread(target=serve, daemon=True).start()
    from support import wait_until

    wait_until(lambda: (p := read_progress(run.path)) and p.phase == "ready", 10, "ready")
    assert not ended.wait(0.3)  # ready, and still serving

    drain.request_drain("SIGTERM")

    assert ended.wait(10)
    progress = read_progress(run.path)
    assert progress is not None
    assert progress.phase == "done"
