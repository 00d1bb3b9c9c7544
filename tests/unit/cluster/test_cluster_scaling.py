"""Scale arithmetic of notebook clusters: everything counted in whole jobs."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobstrap.cluster.scaling import (
    JobShape,
    adapt_bounds,
    job_of_worker,
    jobs_for,
    worker_names,
    worker_suffixes,
)
from jobstrap.errors import ConfigError

GIB = 2**30
ONE = JobShape(nodes=1, processes=1, threads=4, memory=8 * GIB)
PAIR = JobShape(nodes=1, processes=2, threads=2, memory=8 * GIB)
WIDE = JobShape(nodes=2, processes=3, threads=1, memory=6 * GIB)

shapes = st.builds(
    JobShape,
    nodes=st.integers(1, 4),
    processes=st.integers(1, 4),
    threads=st.integers(1, 8),
    memory=st.integers(2**20, 64 * GIB),
)


def test_a_job_counts_workers_cores_and_memory_over_all_its_nodes() -> None:
    assert (WIDE.workers, WIDE.cores, WIDE.job_memory) == (6, 6, 12 * GIB)


def test_workers_round_up_to_whole_jobs() -> None:
    assert jobs_for(PAIR, workers=3) == 2
    assert jobs_for(PAIR, workers=4) == 2
    assert jobs_for(WIDE, workers=7) == 2


def test_cores_and_memory_round_up_to_whole_jobs() -> None:
    assert jobs_for(PAIR, cores=5) == 2
    assert jobs_for(ONE, memory="17GiB") == 3
    assert jobs_for(ONE, memory=8 * GIB) == 1


def test_the_largest_of_several_requests_wins() -> None:
    assert jobs_for(PAIR, jobs=1, workers=5, cores=2) == 3


def test_nothing_asked_is_zero_jobs() -> None:
    assert jobs_for(ONE) == 0
    assert jobs_for(ONE, jobs=0, workers=0) == 0


def test_negative_or_non_numeric_requests_are_refused() -> None:
    with pytest.raises(ConfigError, match="jobs"):
        jobs_for(ONE, jobs=-1)
    with pytest.raises(ConfigError, match="expected a number"):
        jobs_for(ONE, workers="3")


def test_memory_needs_a_memory_setting() -> None:
    with pytest.raises(ConfigError, match="memory"):
        jobs_for(JobShape(memory=None), memory="1GiB")


@given(shape=shapes, workers=st.integers(0, 500))
def test_scaling_by_workers_gives_the_fewest_jobs_with_enough_workers(
    shape: JobShape, workers: int
) -> None:
    jobs = jobs_for(shape, workers=workers)

    assert jobs * shape.workers >= workers
    assert jobs == 0 or (jobs - 1) * shape.workers < workers


@given(shape=shapes, workers=st.integers(0, 500))
def test_a_target_in_jobs_is_a_fixed_point(shape: JobShape, workers: int) -> None:
    # The adaptive loop converts the scheduler's target to jobs and compares it with
    # the plan (in jobs): converting the plan's own worker count must not move it,
    # or a job of several workers would be added and removed forever.
    jobs = jobs_for(shape, workers=workers)

    assert jobs_for(shape, workers=jobs * shape.workers) == jobs


def test_adapt_bounds_convert_workers_to_jobs() -> None:
    assert adapt_bounds(PAIR, minimum=3, maximum=9) == (2, 4)


def test_adapt_bounds_in_jobs_are_taken_as_they_are() -> None:
    assert adapt_bounds(PAIR, minimum_jobs=1, maximum_jobs=50) == (1, 50)


def test_adapt_maximum_below_one_job_still_allows_one_job() -> None:
    assert adapt_bounds(WIDE, maximum=2) == (0, 1)


def test_adapt_maximum_zero_allows_no_job() -> None:
    assert adapt_bounds(PAIR, maximum=0) == (0, 0)


def test_adapt_without_a_maximum_is_unbounded() -> None:
    low, high = adapt_bounds(PAIR, minimum=1)

    assert (low, math.isinf(high)) == (1, True)


def test_adapt_bounds_by_cores_and_memory() -> None:
    assert adapt_bounds(ONE, minimum_cores=5, maximum_cores=17) == (2, 4)
    assert adapt_bounds(ONE, minimum_memory="9GiB", maximum_memory="40GiB") == (2, 5)


def test_the_strictest_of_several_adapt_bounds_wins() -> None:
    assert adapt_bounds(PAIR, minimum=2, minimum_jobs=3, maximum=20, maximum_jobs=5) == (3, 5)


def test_a_minimum_above_the_maximum_is_an_error_that_says_what_a_job_is() -> None:
    with pytest.raises(ConfigError, match="2 workers, 4 cores"):
        adapt_bounds(PAIR, minimum_jobs=4, maximum_jobs=2)


def test_one_worker_per_node_is_named_by_rank() -> None:
    assert worker_names("jobstrap-3.4", JobShape(nodes=2)) == ["jobstrap-3.4-0", "jobstrap-3.4-1"]


def test_several_workers_per_node_are_named_by_rank_and_process() -> None:
    assert worker_suffixes(JobShape(nodes=2, processes=2)) == ["-0-0", "-0-1", "-1-0", "-1-1"]


@given(shape=shapes, prefix=st.sampled_from(["jobstrap", "my-cluster", "node-7", "a"]))
def test_every_worker_name_leads_back_to_its_job(shape: JobShape, prefix: str) -> None:
    job = f"{prefix}-12.5"

    assert {job_of_worker(name) for name in worker_names(job, shape)} == {job}


def test_a_worker_that_joined_by_hand_is_its_own_group() -> None:
    assert job_of_worker("tcp://10.0.0.1:4321") == "tcp://10.0.0.1:4321"
    assert job_of_worker(7) == "7"
