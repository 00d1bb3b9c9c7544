"""Graphs and functions as batch jobs on the local backend: real jobs, real Dask.

Each test submits through ``jobstrap.submit`` with the default profile (``system:
local``): the local queue starts the rendered job script, and the graph runner
computes in the job's own process with Dask's threads (a one-node job asking for no
distributed workers, see test_inprocess_local.py) or, when the test asks for
workers, on a real ``distributed`` cluster whose ranks ``mpiexec`` starts.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest

import jobstrap
from jobstrap.batch.future import JobFuture
from jobstrap.batch.progress import Progress, render_text
from jobstrap.batch.remote import RemoteError
from jobstrap.engines.dask.graph_runner import CorruptRunFileError, frame, unframe
from jobstrap.errors import JobFailedError, UserError
from jobstrap.states import JobState
from support import local_backend_env

#: Seconds any one job may take here (startup is a few seconds; CI machines are slow).
TIMEOUT = 240.0
REPO = Path(__file__).resolve().parents[3]
#: Walltime of every job here unless the walltime is what a test is about.
WALLTIME = "10m"

Submit = Callable[..., JobFuture]


@pytest.fixture(scope="module", autouse=True)
def local_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("batch")
    with pytest.MonkeyPatch.context() as patch:
        local_backend_env(patch, root)
        yield root


@pytest.fixture
def submit_job() -> Submit:
    """``jobstrap.submit`` with the walltime every job here gets unless told otherwise."""

    def submit(obj: Any, *args: Any, **settings: Any) -> JobFuture:
        settings.setdefault("walltime", WALLTIME)
        return jobstrap.submit(obj, *args, **settings)

    return submit


@pytest.fixture
def run_dirs(local_env: Path) -> Callable[[], set[Path]]:
    """The run directories that exist at the time of the call."""

    def existing() -> set[Path]:
        runs = local_env / "runs"
        return set(runs.glob("*")) if runs.exists() else set()

    return existing


@pytest.fixture
def write_app(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write an app file ``name`` with ``code`` into the test's folder; return its path."""

    def write(name: str, code: str) -> Path:
        app = tmp_path / name
        app.write_text(code)
        return app

    return write


def wait_for_phase(future: JobFuture, phase: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = future.progress()
        if progress is not None and progress.phase == phase:
            return
        time.sleep(0.2)
    raise AssertionError(
        f"no phase {phase!r} after {timeout:g} s; last progress {future.progress()}, "
        f"state {future.state}\n{future.logs(tail=20)}"
    )


def boom(n: int) -> None:
    def inner() -> None:
        raise ValueError(f"bad value {n}")

    inner()


def _rebuild_job_only(message: str) -> Exception:
    # Stands for an exception whose module exists only where the job runs.
    if "JOBSTRAP_RUN_DIR" not in os.environ:
        raise ImportError("JobOnlyError can only be rebuilt inside a job")
    return JobOnlyError(message)


class JobOnlyError(Exception):
    """An exception type that cannot be rebuilt on the submitting side."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _rebuild_job_only, (str(self),)


def raise_job_only() -> None:
    raise JobOnlyError("only in the job")


def sum_of_squares_on_the_cluster(n: int) -> int:
    from distributed import get_client

    client = get_client()
    return sum(client.gather(client.map(lambda x: x * x, range(n))))


# ------------------------------------------------------------------- run files (pure)


def test_a_framed_payload_reads_back_unchanged() -> None:
    assert unframe(frame(b"payload")) == b"payload"


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[:-1], id="truncated"),
        pytest.param(lambda data: data + b"x", id="padded"),
        pytest.param(lambda data: data[:-1] + bytes([data[-1] ^ 1]), id="bit-flipped"),
        pytest.param(lambda data: data[:10], id="header-cut"),
        pytest.param(lambda data: b"\x80" + data[1:], id="not-framed"),
    ],
)
def test_a_damaged_frame_is_refused(damage: Any) -> None:
    with pytest.raises(CorruptRunFileError):
        unframe(damage(frame(b"a result of some length")))


def test_the_progress_line_shows_the_queue_wait_then_the_tasks() -> None:
    pending = render_text(JobState.PENDING, None, reason="Priority", waited=75)
    running = render_text(
        JobState.RUNNING,
        Progress(phase="computing", total=40, done=10, workers=2, started=1.0),
        now=61.0,
    )

    assert pending == "PENDING 1m15s (Priority)"
    assert running.startswith("RUNNING computing [")
    assert "10/40 tasks" in running


# ------------------------------------------------------------------------------- results


def test_a_chunked_array_expression_computed_in_a_job_equals_the_local_result(
    submit_job: Submit,
) -> None:
    x = da.random.default_rng(1).random((2000, 2000), chunks=(500, 500))
    expression = (x + x.T) - x.mean(axis=0)

    remote = submit_job(expression).result(timeout=TIMEOUT)

    np.testing.assert_allclose(remote, expression.compute())


def test_a_function_gets_its_positional_and_keyword_arguments(submit_job: Submit) -> None:
    future = submit_job(divmod, 17, 3)
    keyword = submit_job(int, "ff", kwargs={"base": 16})

    assert (future.result(timeout=TIMEOUT), keyword.result(timeout=TIMEOUT)) == ((5, 2), 255)


def test_a_function_can_use_the_whole_cluster_through_get_client(submit_job: Submit) -> None:
    future = submit_job(sum_of_squares_on_the_cluster, 10)

    assert future.result(timeout=TIMEOUT) == sum(i * i for i in range(10))


def test_a_dict_of_collections_comes_back_with_the_same_shape(submit_job: Submit) -> None:
    x = da.arange(10, chunks=5)
    graph = {"total": x.sum(), "parts": [x.max(), dask.delayed(len)("abc")]}

    result = submit_job(graph).result(timeout=TIMEOUT)

    assert result == {"total": 45, "parts": [9, 3]}


def test_awaiting_a_future_gives_its_result(submit_job: Submit) -> None:
    future = submit_job(da.ones(4, chunks=2).sum())

    async def wait() -> Any:
        return await asyncio.wait_for(future, TIMEOUT)

    assert asyncio.run(wait()) == 4


def test_progress_counts_every_task_once_the_graph_is_done(submit_job: Submit) -> None:
    future = submit_job(da.ones((100, 100), chunks=10).sum())
    future.result(timeout=TIMEOUT)

    progress = future.progress()

    assert progress is not None
    assert (progress.phase, progress.done == progress.total, progress.total > 100) == (
        "done",
        True,
        True,
    )


# -------------------------------------------------------------------------------- errors


def test_a_remote_exception_is_raised_here_with_its_remote_traceback(submit_job: Submit) -> None:
    future = submit_job(boom, 7)

    with pytest.raises(ValueError, match="bad value 7") as caught:
        future.result(timeout=TIMEOUT)

    remote = caught.value.remote_traceback  # type: ignore[attr-defined]
    assert ("in inner" in remote, "in inner" in str(caught.value.__cause__)) == (True, True)


def test_an_exception_that_cannot_travel_arrives_as_a_remote_error(submit_job: Submit) -> None:
    future = submit_job(raise_job_only)

    with pytest.raises(RemoteError, match="JobOnlyError: only in the job") as caught:
        future.result(timeout=TIMEOUT)

    assert "raise_job_only" in caught.value.remote_traceback


def test_exception_returns_the_remote_exception_without_raising(submit_job: Submit) -> None:
    error = submit_job(boom, 3).exception(timeout=TIMEOUT)

    assert isinstance(error, ValueError)
    assert "bad value 3" in str(error)


def test_a_cancelled_job_raises_naming_cancelled(submit_job: Submit) -> None:
    future = submit_job(time.sleep, 600)
    wait_for_phase(future, "computing")

    assert future.cancel() is True
    with pytest.raises(JobFailedError, match="CANCELLED") as caught:
        future.result(timeout=TIMEOUT)

    assert caught.value.state == "CANCELLED"


def test_a_job_killed_at_its_walltime_raises_naming_timeout() -> None:
    future = jobstrap.submit(time.sleep, 600, walltime=20)

    with pytest.raises(JobFailedError, match="TIMEOUT") as caught:
        future.result(timeout=TIMEOUT)

    assert (caught.value.state, future.state) == ("TIMEOUT", JobState.TIMEOUT)


def test_an_input_over_the_size_limit_fails_before_anything_is_created(
    run_dirs: Callable[[], set[Path]],
) -> None:
    embedded = da.from_array(np.ones(100_000), chunks=10_000)  # 800 kB inside the graph
    runs_before = run_dirs()

    with pytest.raises(UserError, match="read the data inside the graph"):
        jobstrap.submit(embedded.sum(), max_input_size="100KiB")

    assert run_dirs() == runs_before


def test_arguments_with_a_collection_are_refused() -> None:
    with pytest.raises(UserError, match="arguments are for functions"):
        jobstrap.submit(da.ones(3, chunks=1).sum(), 1)


def test_an_object_with_nothing_to_compute_is_refused() -> None:
    with pytest.raises(UserError, match="nothing to compute"):
        jobstrap.submit([1, 2, 3])


# ---------------------------------------------------------------------- runs as records


def test_another_process_reattaches_and_gets_the_result(submit_job: Submit) -> None:
    future = submit_job(da.arange(100, chunks=10).sum())

    code = (
        "import sys; from jobstrap.batch.future import JobFuture; "
        f"print(JobFuture.attach({future.run_id!r}).result(timeout={TIMEOUT}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT + 30
    )

    assert (done.returncode, done.stdout.strip()) == (0, "4950"), done.stderr


def test_a_truncated_result_file_is_never_returned(submit_job: Submit) -> None:
    future = submit_job(da.arange(1000, chunks=100))
    future.result(timeout=TIMEOUT)
    result_file = future.run_dir / "result.pkl"
    data = result_file.read_bytes()
    result_file.write_bytes(data[: len(data) // 2])  # as if the writer died mid-copy

    with pytest.raises(JobFailedError, match=r"result\.pkl is damaged"):
        JobFuture.attach(future.run_id).result(timeout=TIMEOUT)


# ---------------------------------------------------------------------------- the CLI


def jobstrap_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobstrap", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT + 60,
        cwd=cwd,
        check=False,
    )


def test_jobstrap_run_runs_an_example_and_exits_with_its_code() -> None:
    done = jobstrap_cli("run", "examples/squares.py", "50")

    assert done.returncode == 0, done.stderr
    assert "sum of squares 0..49 = 40425" in done.stdout


def test_jobstrap_run_exits_with_the_apps_own_exit_code(
    write_app: Callable[[str, str], Path],
) -> None:
    app = write_app("fails.py", "import sys\nprint('about to fail')\nsys.exit(3)\n")

    done = jobstrap_cli("run", str(app))

    assert (done.returncode, "about to fail" in done.stdout) == (3, True), done.stderr


def test_jobstrap_run_works_without_mpi_through_the_local_launcher() -> None:
    done = jobstrap_cli("run", "--set", "launcher=none", "examples/squares.py", "20")

    assert done.returncode == 0, done.stderr
    assert "sum of squares 0..19 = 2470" in done.stdout


def test_a_worker_rank_can_fork_several_workers(write_app: Callable[[str, str], Path]) -> None:
    app = write_app(
        "count.py",
        "import os\n"
        "from distributed import Client\n"
        "with Client() as client:\n"
        "    workers = client.scheduler_info()['workers'].values()\n"
        "    pids = client.run(os.getppid)\n"
        "    print('workers', len(workers), 'nanny processes', len(set(pids.values())))\n",
    )

    done = jobstrap_cli("run", "--set", "workers_per_rank=3", str(app))

    # One worker rank (a one-node job: scheduler, client, one worker rank), three
    # workers, each forked by its own nanny, the three nannies in that rank's process.
    assert done.returncode == 0, done.stderr
    assert "workers 3 nanny processes 1" in done.stdout


def test_several_workers_per_rank_need_nannies() -> None:
    done = jobstrap_cli("render", "--role", "app", "--set", "workers_per_rank=2", "--set",
                        "nanny=false", "app.py")  # fmt: skip

    assert done.returncode != 0
    assert "workers_per_rank" in done.stderr
    assert "nanny" in done.stderr


def test_render_shows_the_app_script_submit_would_send() -> None:
    done = jobstrap_cli("render", "--role", "app", "app.py", "3")

    assert done.returncode == 0, done.stderr
    launch = next(line for line in done.stdout.splitlines() if "jobstrap.bootstrap" in line)
    # Scheduler, client and a worker (a one-node job), and the app run by the job's Python.
    assert "-n 3 " in launch, launch
    assert launch.split(" -- ", 1)[1].startswith("app.py 3"), launch


def test_jobstrap_result_prints_a_finished_runs_result(submit_job: Submit, tmp_path: Path) -> None:
    future = submit_job(da.arange(10, chunks=5).sum())
    future.result(timeout=TIMEOUT)

    printed = jobstrap_cli("result", future.run_id)
    saved = jobstrap_cli("result", future.run_id, "--output", str(tmp_path / "r.json"))

    assert (printed.returncode, printed.stdout.strip()) == (0, "np.int64(45)"), printed.stderr
    assert (saved.returncode, (tmp_path / "r.json").read_text().strip()) == (0, "45")


def test_jobstrap_result_of_a_failed_run_shows_the_remote_traceback(submit_job: Submit) -> None:
    future = submit_job(boom, 5)
    future.exception(timeout=TIMEOUT)

    done = jobstrap_cli("result", future.run_id)

    assert (done.returncode, "in inner" in done.stderr) == (1, True), done.stderr


def test_run_directories_are_private(submit_job: Submit, local_env: Path) -> None:
    future = submit_job(divmod, 1, 1)
    future.result(timeout=TIMEOUT)

    modes = {
        p.name: oct(os.stat(p).st_mode & 0o777)
        for p in (future.run_dir, future.run_dir / "input.pkl", future.run_dir / "result.pkl")
    }

    assert modes == {future.run_dir.name: "0o700", "input.pkl": "0o600", "result.pkl": "0o600"}


def test_a_graph_starts_at_once_and_nannies_can_be_left_out(submit_job: Submit) -> None:
    # On a scheduler and workers: a one-node job would otherwise compute in-process.
    future = submit_job(divmod, 7, 2, nanny=False, graph_scheduler="distributed")
    assert future.result(timeout=TIMEOUT) == (3, 1)

    script = (future.run_dir / "job.sh").read_text()
    assert "--start-after-workers 0" in script
    assert "--no-nanny" in script
