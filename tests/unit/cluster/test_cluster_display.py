"""The notebook view of a cluster: the summary line, the jobs table, the repr."""

from __future__ import annotations

import pytest

from jobstrap.cluster.display import job_counts, jobs_html, repr_with_jobs
from jobstrap.cluster.jobs import JobStatus
from jobstrap.cluster.rotation import JobLifetime
from jobstrap.states import JobState


@pytest.fixture
def jobs() -> list[JobStatus]:
    """A running job being replaced and a pending one."""
    return [
        JobStatus("12", "c-0.0", JobState.RUNNING, "node<1>", 1.0, 2.0, 3600, 600.0, ("c-0.0-0",)),
        JobStatus("13", "c-1.0", JobState.PENDING, "", 5.0, None, 3600, None, (), "Priority"),
    ]


def test_the_table_lists_each_job_with_its_time_left_and_phase(jobs: list[JobStatus]) -> None:
    lifetimes = {"c-0.0": JobLifetime("c-0.0", 10.0, 600.0, "replacing")}

    html = jobs_html(jobs, lifetimes, system="slurm", run_id="cluster-1", error=None)

    assert html.startswith(
        "<p style='text-align: left;'>Jobs: 1 running, 1 pending (slurm, run cluster-1)</p>"
    )
    assert "<td style='text-align: left;'>10 min (replacing)</td>" in html
    assert "<td style='text-align: left;'>Priority</td>" in html
    assert "node&lt;1&gt;" in html
    assert html.index(">12<") < html.index(">13<")


def test_no_jobs_no_table_and_the_error_in_red() -> None:
    html = jobs_html([], {}, system="local", run_id="r", error=RuntimeError("gave up\nmore"))

    assert "<table>" not in html
    assert "color: #c00;'>gave up</p>" in html


def test_the_repr_adds_the_job_counts(jobs: list[JobStatus]) -> None:
    text = repr_with_jobs("Cluster(a, workers=1)", job_counts(jobs), "1 replacing, 0 draining")

    assert text == ("Cluster(a, workers=1, jobs=1 running, 1 pending (1 replacing, 0 draining))")


def test_a_cluster_of_pools_shows_each_jobs_pool(jobs: list[JobStatus]) -> None:
    gpu = JobStatus(
        "14", "c-gpu-2.0", JobState.RUNNING, "gpu1", 6.0, 7.0, 3600, 60.0, ("c-gpu-2.0-0",),
        pool="gpu",
    )  # fmt: skip
    cell = "<td style='text-align: left;'>{}</td>"

    plain = jobs_html([*jobs, gpu], {}, system="slurm", run_id="r", error=None)
    pooled = jobs_html([*jobs, gpu], {}, system="slurm", run_id="r", error=None, pools=True)

    assert "Pool" not in plain  # a single-shape cluster looks as it always did
    assert "<th style='text-align: left;'>Pool</th>" in pooled
    row = pooled[pooled.index(">14<") :]
    assert row.index(cell.format("c-gpu-2.0")) < row.index(cell.format("gpu"))
    assert row.index(cell.format("gpu")) < row.index(cell.format("RUNNING"))
    assert cell.format("default") in pooled
    assert str(gpu).startswith("14 RUNNING (gpu), on gpu1")
