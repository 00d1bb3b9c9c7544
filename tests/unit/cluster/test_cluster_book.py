"""The job book's failure policy: when failed jobs stop a cluster, and what resets it."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobstrap.cluster.book import ClusterFailedError, JobBook, JobFailedWarning
from jobstrap.states import JobState
from jobstrap.systems import JobRecord


@pytest.fixture
def book() -> JobBook:
    """A book of three pending jobs ``a``, ``b``, ``c`` that gives up after 2 failures."""
    jobs = JobBook(max_failures=2, python="/usr/bin/python3")
    jobs.record(["c-0.0", "c-0.1", "c-0.2"], ["a", "b", "c"], walltime=600)
    return jobs


def fail(
    book: JobBook, job_id: str, logs: Path, stderr: str = "boom\n"
) -> ClusterFailedError | None:
    (logs / f"{job_id}.err").write_text(stderr)
    info = book.update(job_id, JobRecord(job_id, JobState.FAILED, exit_code=1))
    assert info is not None
    return book.job_failed(info, str(logs))


def test_a_failure_below_the_limit_warns_and_the_next_one_gives_up(
    book: JobBook, tmp_path: Path
) -> None:
    with pytest.warns(JobFailedWarning, match="failure 1 of at most 2"):
        assert fail(book, "a", tmp_path) is None

    error = fail(book, "b", tmp_path)

    assert isinstance(error, ClusterFailedError)
    assert error.failures == 2
    assert [f.job_id for f in book.failures] == ["a", "b"]


def test_a_worker_arriving_breaks_the_run_of_failures(book: JobBook, tmp_path: Path) -> None:
    with pytest.warns(JobFailedWarning):
        fail(book, "a", tmp_path)
    info = book.get("b")
    assert info is not None

    first_news = book.worker_arrived(info, "c-0.1-0", now=100.0)

    assert first_news
    assert book.consecutive_failures == 0
    assert book.live()["b"].state is JobState.RUNNING


def test_a_missing_python_stops_the_cluster_at_once(book: JobBook, tmp_path: Path) -> None:
    stderr = "script: line 9: /usr/bin/python3: No such file or directory\n"

    error = fail(book, "a", tmp_path, stderr)

    assert error is not None
    assert "python not found" in str(error)


def test_cancellations_by_others_count_towards_giving_up(book: JobBook) -> None:
    first, second = (book.update(j, JobRecord(j, JobState.CANCELLED)) for j in ("a", "b"))
    assert first is not None
    assert second is not None

    with pytest.warns(JobFailedWarning, match="cancelled outside the cluster"):
        assert book.cancelled_elsewhere(first) is None
    error = book.cancelled_elsewhere(second)

    assert error is not None
    assert "cancelled outside the cluster" in str(error)


def test_jobs_the_cluster_cancels_are_not_listed_as_live(book: JobBook) -> None:
    book.mark_cancelled(["a"])

    assert sorted(book.live()) == ["b", "c"]
    assert sorted(book.history()) == ["a", "b", "c"]
    assert book.name_of("b") == "c-0.1"
    assert book.name_of("c-0.1") == "c-0.1"
