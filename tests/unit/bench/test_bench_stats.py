"""The benchmarks' paired ratio and its bootstrap interval (bench/stats.py)."""

from __future__ import annotations

import importlib.util
import random
import statistics
from pathlib import Path
from types import ModuleType

import pytest

STATS = Path(__file__).resolve().parents[3] / "bench" / "stats.py"


@pytest.fixture(scope="module")
def stats() -> ModuleType:
    # bench/ is a folder of scripts, not a package: load the module from its file.
    spec = importlib.util.spec_from_file_location("bench_stats", STATS)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_constant_factor_gives_that_ratio_with_no_spread(stats: ModuleType) -> None:
    theirs = {r: 1.0 + r for r in range(10)}
    ours = {r: 1.5 * s for r, s in theirs.items()}
    for statistic in (statistics.median, statistics.fmean):
        found = stats.paired_ratio(ours, theirs, statistic)
        assert (found["ratio"], found["low"], found["high"], found["rounds"]) == (
            1.5,
            1.5,
            1.5,
            10,
        )


def test_rounds_missing_on_either_side_are_left_out_of_both(stats: ModuleType) -> None:
    # Round 3 failed for "theirs": its outlier on our side must not count.
    ours = {0: 2.0, 1: 2.0, 2: 2.0, 3: 100.0}
    theirs = {0: 1.0, 1: 1.0, 2: 1.0}
    found = stats.paired_ratio(ours, theirs, statistics.fmean)
    assert (found["ratio"], found["high"], found["rounds"]) == (2.0, 2.0, 3)


def test_fewer_than_three_paired_rounds_give_no_interval(stats: ModuleType) -> None:
    assert stats.paired_ratio({0: 1.0, 1: 1.0}, {0: 1.0, 1: 1.0, 2: 1.0}) is None


def test_noisy_rounds_give_an_interval_around_the_ratio_reproducibly(stats: ModuleType) -> None:
    rng = random.Random(7)
    theirs = {r: 2.0 + rng.uniform(0, 2) for r in range(20)}
    ours = {r: 2.2 + rng.uniform(0, 2) for r in range(20)}
    found = stats.paired_ratio(ours, theirs, statistics.median, seed=3)
    assert found["low"] < found["ratio"] < found["high"]
    assert found["high"] - found["low"] > 0.05  # uniform noise of 2 s does not vanish
    assert stats.paired_ratio(ours, theirs, statistics.median, seed=3) == found
    wider = stats.paired_ratio(ours, theirs, statistics.median, seed=3, level=0.99)
    assert wider["low"] <= found["low"]
    assert wider["high"] >= found["high"]
