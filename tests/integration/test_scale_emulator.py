"""The batch-system side at scale, on the big emulated Slurm (``scripts/emulator``).

A notebook cluster scales to 2,000 one-worker jobs on a 1000-node controller
(MaxArraySize 1001) and back: two sbatch calls (arrays), at most one squeue per
poll interval while 2,000 jobs are tracked, one scancel for all of them, nothing
left in the queue. Jobs are held pending (the emulator's default partition is
DOWN), so no worker starts: this is the batch side alone. The full size (10,000
jobs, ten minutes) is ``bench/bench_scale.py``.

The emulator is a slurmctld on this machine's loopback, not on the test cluster's
network, so this module runs on the machine itself (``scripts/test`` runs it in a
step of its own, before the cluster's tests) and is skipped in the session on the
test cluster's login node. The ``emulator`` fixture brings it up and, if it
started it, down again; the test cluster is never touched.
"""

from __future__ import annotations

import math
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, current_host

from jobstrap import SLURMCluster
from support import wait_until

EMULATOR = REPO / "scripts" / "emulator"
JOBS = 2000
MAX_ARRAY_SIZE = 1001  # the emulator's

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        current_host() is not None,
        reason="the emulator listens on the machine's own loopback: scripts/test runs "
        "this module outside the test cluster",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="scripts/emulator needs root"),
]


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    """SLURM_CONF of a running emulator (started here if it was not up)."""
    was_up = subprocess.run([EMULATOR, "status"], capture_output=True).returncode == 0
    subprocess.run([EMULATOR, "up"], check=True, capture_output=True, timeout=180)
    env = subprocess.run([EMULATOR, "env"], check=True, capture_output=True, text=True)
    conf = env.stdout.strip().split("SLURM_CONF=", 1)[1]
    try:
        yield conf
    finally:
        if not was_up:
            subprocess.run([EMULATOR, "down"], check=False, capture_output=True, timeout=60)


def active_jobs(name: str) -> list[str]:
    out = subprocess.run(
        ["squeue", "--noheader", "--array", "--states=PENDING,RUNNING", "--format=%i",
         f"--name={name}"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    return out.split()


def test_two_thousand_jobs_submit_track_and_cancel_in_a_handful_of_calls(
    emulator: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_CONF", emulator)
    run_root = tmp_path / "runs"
    run_root.mkdir(mode=0o700)
    monkeypatch.setenv("JOBSTRAP_RUN_ROOT", str(run_root))
    monkeypatch.setenv("JOBSTRAP_STATE_DIR", str(tmp_path / "state"))
    job_name = f"scale{uuid.uuid4().hex[:6]}"
    cluster = SLURMCluster("emulator", job_name=job_name)
    gw = cluster.batchctl
    start = dict(gw.calls)

    def calls(command: str) -> int:
        return gw.calls[command] - start.get(command, 0)

    try:
        cluster.scale(jobs=JOBS)
        wait_until(lambda: len(gw.watcher.tracked()) >= JOBS, 120, "2,000 jobs tracked")
        assert calls("sbatch") == math.ceil(JOBS / MAX_ARRAY_SIZE)
        # Tracked as soon as sbatch answered; what the controller says comes with the
        # watcher's first poll, which may not have happened yet.
        wait_until(
            lambda: {r.raw_state for r in gw.watcher.records().values()} == {"PENDING"},
            120,
            lambda: sorted({r.raw_state for r in gw.watcher.records().values()}),
        )
        records = gw.watcher.records()
        name = next(iter(records.values())).name
        assert len(active_jobs(name)) == JOBS

        # Tracked for four poll intervals: one squeue per interval at most, whatever N.
        poll = gw.watcher.poll_interval
        before, t0 = calls("squeue"), time.monotonic()
        time.sleep(4 * poll)
        window = time.monotonic() - t0
        assert calls("squeue") - before <= math.ceil(window / poll) + 1

        cluster.scale(jobs=0)
        wait_until(lambda: not active_jobs(name), 120, lambda: active_jobs(name)[:5])
        # One scancel, one folded argument per array (not 2,000 ids, not 4 calls).
        assert calls("scancel") == 1
    finally:
        cluster.close()
    assert active_jobs(name) == []
