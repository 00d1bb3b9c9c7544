"""One-node graph jobs in the job's own process, on the local backend: real jobs.

A one-node graph job that asks for no distributed workers is computed by the job's
one process with Dask's threads; ``graph_scheduler="distributed"`` still gets a
scheduler and workers. Both give the same future, progress, result, traceback and logs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import pytest

import jobstrap
from jobstrap.batch.future import JobFuture
from support import local_backend_env

TIMEOUT = 240.0
WALLTIME = "10m"
IN_PROCESS_LINE = "in-process: the app runs in this process"


@pytest.fixture(scope="module", autouse=True)
def local_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("inprocess")
    with pytest.MonkeyPatch.context() as patch:
        local_backend_env(patch, root)
        yield root


def submit(obj: Any, *args: Any, **settings: Any) -> JobFuture:
    settings.setdefault("walltime", WALLTIME)
    return jobstrap.submit(obj, *args, **settings)


def listeners_and_modules() -> tuple[list[Any], bool, str]:
    """Runs in the job: this process's listening sockets, whether a scheduler was
    imported, and a line on stdout."""
    import psutil

    print("hello from the job", flush=True)
    listening = [
        c.laddr for c in psutil.Process().net_connections(kind="all") if c.status == "LISTEN"
    ]
    return listening, "distributed.scheduler" in sys.modules, os.environ["JOBSTRAP_RUN_DIR"]


def head_files(future: JobFuture) -> set[str]:
    """What a scheduler and TLS leave in the run directory."""
    names = {"info.json", "scheduler.json", "tls"}
    return {name for name in names if (future.run_dir / name).exists()}


def test_a_one_node_graph_is_computed_in_the_jobs_process(local_env: Path) -> None:
    x = da.random.default_rng(3).random((400, 400), chunks=100)
    expression = ((x + x.T) - x.mean(axis=0)).sum()

    future = submit(expression)
    value = future.result(timeout=TIMEOUT)

    assert value == pytest.approx(expression.compute())
    assert head_files(future) == set()
    assert (future.run_dir / "exit_code").read_text().strip() == "0"
    assert "--mode in-process" in (future.run_dir / "job.sh").read_text()
    assert IN_PROCESS_LINE in future.logs(stream="err")
    record = json.loads((future.run_dir / "run.json").read_text())
    assert record["extra"]["in_process"] is True


def test_an_in_process_job_opens_no_listener_and_starts_no_scheduler() -> None:
    future = submit(listeners_and_modules)

    listening, scheduler_imported, run_dir = future.result(timeout=TIMEOUT)

    assert (listening, scheduler_imported, run_dir) == ([], False, str(future.run_dir))
    assert head_files(future) == set()
    assert "hello from the job" in future.logs(stream="out")


def test_in_process_progress_counts_every_task_on_the_jobs_cores() -> None:
    future = submit(da.ones((100, 100), chunks=10).sum(), cores=3)
    future.result(timeout=TIMEOUT)

    progress = future.progress()

    assert progress is not None
    assert (progress.phase, progress.done == progress.total, progress.total > 100) == (
        "done",
        True,
        True,
    )
    # One worker, the job's own process, with a thread per core; no scheduler's files.
    assert (progress.workers, progress.threads, head_files(future)) == (1, 3, set())


def test_a_failing_task_in_process_raises_here_with_its_remote_traceback() -> None:
    def boom(n: int) -> None:  # nested: shipped by value, as a notebook's function is
        def inner() -> None:
            raise ValueError(f"bad value {n}")

        inner()

    future = submit(dask.delayed(boom)(7))

    with pytest.raises(ValueError, match="bad value 7") as caught:
        future.result(timeout=TIMEOUT)

    remote = caught.value.remote_traceback  # type: ignore[attr-defined]
    assert ("in inner" in remote, "in inner" in str(caught.value.__cause__)) == (True, True)
    progress = future.progress()
    assert progress is not None
    assert (progress.phase, progress.erred) == ("failed", 1)
    assert "bad value 7" in future.logs(stream="err")  # the job's log has the traceback too
    assert IN_PROCESS_LINE in future.logs(stream="err")


def test_the_override_still_starts_a_scheduler_and_workers() -> None:
    future = submit(da.ones((20, 20), chunks=10).sum(), graph_scheduler="distributed")

    assert future.result(timeout=TIMEOUT) == 400

    assert head_files(future) == {"info.json", "scheduler.json", "tls"}
    assert "--mode mpi" in (future.run_dir / "job.sh").read_text()
    assert IN_PROCESS_LINE not in future.logs(stream="err")
    progress = future.progress()
    assert progress is not None
    assert (progress.phase, progress.workers >= 1) == ("done", True)
