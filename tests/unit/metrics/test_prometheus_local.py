"""A real Prometheus scrapes a real notebook cluster on the local backend.

Debian's ``prometheus`` runs as a subprocess (loopback only, a temporary data
directory, one-second scrapes) with the configuration and rules that
``jobstrap metrics`` prints. A LocalBatchCluster of 3 jobs: every worker becomes
a target that Prometheus scrapes over HTTPS with the user's client certificate
(``up == 1``), jobstrap's job metrics and Dask's worker count agree with the
cluster, the no-worker alert becomes active when the jobs are gone, and the
targets are gone after close.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobstrap import LocalBatchCluster
from metrics_support import PROMETHEUS, alert_active, query, running_prometheus, targets_of
from support import wait_until

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="Debian's prometheus is not installed (apt-get install prometheus)"
)


@pytest.fixture(autouse=True)
def private_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A spool and run root of this test's own (also for subprocesses)."""
    monkeypatch.setenv("JOBSTRAP_LOCAL_SPOOL", str(tmp_path / "spool"))
    monkeypatch.setenv("JOBSTRAP_RUN_ROOT", str(tmp_path / "runs"))
    monkeypatch.setenv("JOBSTRAP_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[str]:
    """A Prometheus on loopback reading jobstrap's configuration; yields its base URL."""
    with running_prometheus(tmp_path, scrape_interval="1s") as base:
        yield base


def test_every_worker_of_a_cluster_is_scraped_and_gone_after_close(prometheus: str) -> None:
    with LocalBatchCluster(cores=1, memory="300MiB", jobs=3) as cluster:
        cluster.wait_for_workers(3, timeout=120)
        run = cluster.run_id
        up = f'up{{run="{run}",role="worker"}} == 1'

        wait_until(
            lambda: len(query(prometheus, up)) == 3, 120, lambda: targets_of(prometheus, run)
        )
        workers = query(prometheus, up)
        # The ids the cluster's own job series use (array tasks: 1_0, 1_1, 1_2).
        assert {w["metric"]["job_id"] for w in workers} == set(cluster.jobs)
        assert {w["metric"]["array_task"] for w in workers} == {"0", "1", "2"}
        assert {w["metric"]["node"] for w in workers} == {socket.gethostname().split(".")[0]}
        assert {w["metric"]["worker"] for w in workers} == {
            ws["name"] for ws in cluster.scheduler_info["workers"].values()
        }
        scheduler = f'up{{run="{run}",role="scheduler"}} == 1'
        wait_until(lambda: query(prometheus, scheduler), 60, "the scheduler to be scraped")

        # Dask's count and jobstrap's job states agree with the cluster.
        workers_now = f'sum(dask_scheduler_workers{{run="{run}"}})'
        wait_until(
            lambda: [r["value"][1] for r in query(prometheus, workers_now)] == ["3"],
            60,
            lambda: query(prometheus, workers_now),
        )
        running = f'jobstrap_jobs{{run="{run}",state="RUNNING"}}'
        wait_until(
            lambda: [r["value"][1] for r in query(prometheus, running)] == ["3"],
            60,
            lambda: query(prometheus, running),
        )
        limits = f'jobstrap_worker_memory_limit_bytes{{run="{run}"}}'
        wait_until(lambda: len(query(prometheus, limits)) == 3, 60, "the memory limits")

        # No worker left while the scheduler is up: the alert becomes active (pending
        # for its 60 s, then firing).
        cluster.scale(jobs=0)
        wait_until(
            lambda: not query(prometheus, f'up{{run="{run}",role="worker"}}'),
            120,
            lambda: targets_of(prometheus, run),
        )

        wait_until(
            lambda: alert_active(prometheus, "JobstrapNoWorker", run),
            60,
            "the no-worker alert to become active",
        )

    wait_until(lambda: not targets_of(prometheus, run), 60, lambda: targets_of(prometheus, run))
