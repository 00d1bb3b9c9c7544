"""Ratios between two methods with a confidence interval (shared by the benchmarks).

On the test cluster a run's time carries a wait for Slurm's next scheduling pass that
is uniform over ``sched_interval`` (2 s) and has nothing to do with the method: with a
handful of rounds, a ratio of two medians moves by more than the 10 % a target leaves.
A point ratio alone therefore says little. These helpers put a percentile bootstrap
interval around it, resampling whole rounds so that the methods' runs stay paired
(the same round saw the same cluster and the same load).
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Mapping, Sequence

Statistic = Callable[[Sequence[float]], float]

STATISTICS: dict[str, Statistic] = {"median": statistics.median, "mean": statistics.fmean}


def paired_ratio(
    ours: Mapping[int, float],
    theirs: Mapping[int, float],
    statistic: Statistic = statistics.median,
    *,
    resamples: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float | int] | None:
    """``statistic(ours) / statistic(theirs)`` over the rounds both completed, with a
    percentile bootstrap interval.

    Parameters
    ----------
    ours, theirs
        Seconds per round number; a round missing from either side (a failed run) is
        left out of both, so every resample compares the same rounds.
    statistic
        What summarises one method's runs (median or mean).
    resamples, level, seed
        Bootstrap resamples, the interval's coverage, and the resampling seed (the
        interval is reproducible from the stored runs).

    Returns
    -------
    dict or None
        ``ratio``, ``low``, ``high`` (rounded to 3 places) and ``rounds``; None with
        fewer than three paired rounds, too few to resample.
    """
    rounds = sorted(set(ours) & set(theirs))
    if len(rounds) < 3:
        return None
    a = [ours[r] for r in rounds]
    b = [theirs[r] for r in rounds]
    rng = random.Random(seed)
    n = len(rounds)
    draws = []
    for _ in range(resamples):
        picks = [rng.randrange(n) for _ in range(n)]
        draws.append(statistic([a[i] for i in picks]) / statistic([b[i] for i in picks]))
    draws.sort()
    tail = (1.0 - level) / 2.0
    low = draws[int(tail * (resamples - 1))]
    high = draws[int((1.0 - tail) * (resamples - 1))]
    return {
        "ratio": round(statistic(a) / statistic(b), 3),
        "low": round(low, 3),
        "high": round(high, 3),
        "rounds": n,
    }
