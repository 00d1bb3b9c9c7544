"""A random start phase for each measured submission (shared by the benchmarks).

Slurm starts batch jobs in its periodic scheduling pass (``sched_interval``;
``batch_sched_delay`` keeps it from starting them on submission), so a submission
waits for the next pass: 0 to ``sched_interval`` seconds, depending on where in the
cycle it fell. A benchmark that submits a fixed time after the previous job ended
locks that phase to the previous method's duration: with a fixed order, the same
method always follows the same one and always waits about as long, however many
rounds are run. Pausing a random fraction of the interval before each submission
makes every method's wait an independent draw from the same distribution.
"""

from __future__ import annotations

import random
import re
import subprocess
import time

#: Slurm's default ``sched_interval``, when ``scontrol`` does not say otherwise.
DEFAULT_SCHED_INTERVAL = 60.0


def sched_interval() -> float:
    """Seconds between Slurm's periodic scheduling passes (``scontrol show config``)."""
    out = subprocess.run(
        ["scontrol", "show", "config"], capture_output=True, text=True, check=False
    ).stdout
    for line in out.splitlines():
        if line.strip().startswith("SchedulerParameters"):
            found = re.search(r"sched_interval=(\d+)", line)
            if found:
                return float(found.group(1))
    return DEFAULT_SCHED_INTERVAL


def pause_at_random_phase(rng: random.Random, interval: float) -> float:
    """Sleep a uniformly random part of ``interval``; return how long."""
    pause = rng.uniform(0.0, interval)
    time.sleep(pause)
    return pause
