"""Lifetime planning: margins, staggering and replacement timing."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from jobstrap.cluster.lifetime import (
    MAX_MARGIN,
    JobLife,
    QueueWaitEstimate,
    concurrent_replacements,
    default_margin,
    default_stagger,
    margin_parts,
    max_lead,
    overlap_limit,
    peak_jobs,
    plan_retirements,
    replacement_due,
)


def test_margin_leaves_a_drain_of_a_tenth_of_the_walltime_within_bounds() -> None:
    assert default_margin(3600) == 480
    assert default_margin(1200) == 160
    assert default_margin(60) == 20
    assert default_margin(86400) == MAX_MARGIN


@given(walltime=st.integers(min_value=60, max_value=int(MAX_MARGIN * 7.5)))
def test_a_task_of_a_tenth_of_the_walltime_fits_in_the_default_drain(walltime: int) -> None:
    margin = default_margin(walltime)
    parts = margin_parts(margin)
    assert parts.drain >= walltime / 10
    assert parts.drain + parts.handover + parts.backstop == margin


@given(margin=st.integers(min_value=1, max_value=100_000))
def test_the_margin_parts_are_positive_and_add_up(margin: int) -> None:
    parts = margin_parts(margin)
    assert parts.drain >= 0
    assert parts.handover >= 0
    assert parts.backstop >= 1
    assert parts.drain + parts.handover + parts.backstop == margin


def test_stagger_spreads_rotations_over_a_jobs_useful_life() -> None:
    assert default_stagger(3600, jobs=8) == (3600 - 480) // 8
    assert default_stagger(3600, jobs=2) == 600  # at most 10 minutes
    assert default_stagger(150, jobs=3, margin=30) == 40
    assert default_stagger(60, jobs=50) == 5


def test_the_overlap_of_a_replacement_and_its_predecessor_is_bounded_by_the_margin() -> None:
    # Submitted at most half a margin before the drain, gone a margin after it.
    assert max_lead(20) == 10.0
    assert overlap_limit(20) == 30.0
    # 3 jobs of 2 minutes: retirements 33 s apart, overlaps of at most 30 s never meet.
    stagger = default_stagger(120, jobs=3)
    assert stagger == 33
    assert concurrent_replacements(3, 20, stagger) == 1
    assert peak_jobs(3, 20, stagger) == 4
    # Retirements closer than an overlap: two meet; never more than the jobs.
    assert concurrent_replacements(3, 20, 16) == 2
    assert concurrent_replacements(2, 20, 1) == 2
    assert peak_jobs(0, 20, 10) == 0


def test_a_slow_queue_does_not_make_the_lead_longer_than_its_limit() -> None:
    # Expected wait 30 s (lead 70 s), limited to 10 s: the overlap stays bounded.
    assert replacement_due(100.0, queue_wait=30.0, startup=10.0, lead_limit=10.0) == 90.0
    assert replacement_due(100.0, queue_wait=1.0, startup=2.0, lead_limit=10.0) == 96.0


def test_jobs_started_together_retire_one_stagger_apart() -> None:
    jobs = [JobLife(f"job{i}", started=0.0, walltime=150) for i in range(3)]
    plan = plan_retirements(jobs, margin=30, stagger=20, now=0.0)
    assert sorted(plan.values()) == [80.0, 100.0, 120.0]


def test_a_job_never_retires_after_its_deadline() -> None:
    jobs = [JobLife("a", 0.0, 150), JobLife("b", 50.0, 150)]
    plan = plan_retirements(jobs, margin=30, stagger=20, now=0.0)
    assert plan["a"] <= 120.0
    assert plan["b"] <= 170.0


def test_jobs_already_late_retire_now_and_still_spaced() -> None:
    jobs = [JobLife("a", 0.0, 100), JobLife("b", 0.0, 100)]
    plan = plan_retirements(jobs, margin=30, stagger=20, now=95.0)
    assert sorted(plan.values()) == [95.0, 115.0]


@given(
    starts=st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=12),
    walltime=st.integers(min_value=60, max_value=4000),
    stagger=st.integers(min_value=1, max_value=200),
)
def test_no_two_retirements_are_closer_than_the_stagger(
    starts: list[int], walltime: int, stagger: int
) -> None:
    jobs = [JobLife(f"j{i}", float(s), walltime) for i, s in enumerate(starts)]
    plan = plan_retirements(jobs, margin=20, stagger=stagger, now=0.0)
    for a, b in itertools.combinations(plan.values(), 2):
        assert abs(a - b) >= stagger - 1e-9


def test_queue_wait_estimate_follows_observations() -> None:
    estimate = QueueWaitEstimate(initial=30.0)
    assert estimate.expected == 30.0
    estimate.observe(2.0)
    estimate.observe(4.0)
    assert estimate.expected == 3.0


def test_replacement_is_submitted_before_retirement_by_twice_the_wait() -> None:
    assert replacement_due(100.0, queue_wait=5.0, startup=10.0) == 80.0


def test_a_slow_queue_never_replaces_a_job_before_half_its_life() -> None:
    # Queue wait as long as the job's life: without the floor the successor would be
    # due at once, and so would its own successor (a runaway chain of jobs).
    assert replacement_due(145.0, queue_wait=60.0, started=100.0, startup=10.0) == 122.5
    # A fast queue is not held back by the floor.
    assert replacement_due(1000.0, queue_wait=5.0, started=0.0, startup=10.0) == 980.0
