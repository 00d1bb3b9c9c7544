"""Idle-aware release: an idle job is kept for the hold, then released; pending ones go first."""

from __future__ import annotations

import pytest

from jobstrap.cluster.idle import (
    AUTO,
    AUTO_MINIMUM,
    IdleClock,
    hold_seconds,
    observed_wait,
    parse_idle_hold,
    to_release,
)
from jobstrap.errors import ConfigError


def test_idle_hold_takes_seconds_durations_and_auto() -> None:
    assert parse_idle_hold(None) == 0.0
    assert parse_idle_hold(30) == 30.0
    assert parse_idle_hold("2m") == 120.0
    assert parse_idle_hold("Auto") == AUTO
    for bad in (-1, "soon", True, float("inf"), [1]):
        with pytest.raises(ConfigError, match="idle_hold"):
            parse_idle_hold(bad)


def test_auto_holds_for_the_longest_recent_queue_wait() -> None:
    assert observed_wait([]) is None
    assert observed_wait([5.0, 40.0, 10.0]) == 40.0
    # Only the recent waits count: the queue of an hour ago is not today's.
    assert observed_wait([500.0, 1, 2, 3, 4, 5]) == 5
    assert hold_seconds(AUTO, [12.0, 30.0]) == 30.0
    # A short queue still holds for the churn a release costs.
    assert hold_seconds(AUTO, []) == AUTO_MINIMUM
    assert hold_seconds(AUTO, [1.0]) == AUTO_MINIMUM
    assert hold_seconds(AUTO, [1.0], floor=60.0) == 60.0
    assert hold_seconds(20.0, [300.0]) == 20.0
    assert hold_seconds(0.0, [], floor=3.0) == 3.0


def test_the_clock_starts_when_a_job_goes_idle_and_stops_when_it_works() -> None:
    clock = IdleClock()
    clock.update(idle={"a", "b"}, busy=set(), now=100.0)
    clock.update(idle={"a", "b"}, busy=set(), now=105.0)
    assert clock.idle_for("a", 110.0) == 10.0
    clock.update(idle={"b"}, busy={"a"}, now=110.0)
    assert clock.idle_for("a", 120.0) == 0.0
    assert clock.idle_for("b", 120.0) == 20.0
    clock.update(idle={"a"}, busy=set(), now=130.0)  # b went away
    assert clock.since == {"a": 130.0}


def test_an_idle_job_is_kept_during_the_hold_and_released_after() -> None:
    idle = {"gpu-1.0": 100.0}
    assert to_release(1, [], idle, now=110.0, hold=30.0) == []
    assert to_release(1, [], idle, now=130.0, hold=30.0) == ["gpu-1.0"]


def test_a_gap_shorter_than_the_hold_keeps_the_job_across_steps() -> None:
    # Step 1 ends at 100, step 2 starts at 105 (5 s gap), the queue wait is 20 s.
    clock = IdleClock()
    clock.update(idle={"j"}, busy=set(), now=100.0)
    assert to_release(1, [], clock.since, now=104.0, hold=20.0) == []
    clock.update(idle=set(), busy={"j"}, now=105.0)
    assert to_release(1, [], clock.since, now=140.0, hold=20.0) == []  # busy: never
    clock.update(idle={"j"}, busy=set(), now=150.0)
    assert to_release(1, [], clock.since, now=171.0, hold=20.0) == ["j"]


def test_jobs_without_workers_go_first_then_the_longest_idle() -> None:
    idle = {"old": 10.0, "new": 50.0}
    assert to_release(1, ["pending"], idle, now=100.0, hold=5.0) == ["pending"]
    assert to_release(2, ["pending"], idle, now=100.0, hold=5.0) == ["pending", "old"]
    assert to_release(3, [], idle, now=100.0, hold=5.0) == ["old", "new"]
    assert to_release(0, ["pending"], idle, now=100.0, hold=0.0) == []
