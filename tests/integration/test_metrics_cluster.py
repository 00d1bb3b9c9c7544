"""Debian's Prometheus on the login node scrapes runs on the real Slurm test cluster.

Prometheus runs on ``head`` (a subprocess, loopback web port) with the
configuration ``jobstrap metrics prometheus-config`` prints for a shared run root;
the workers run on node1..node3 and are scraped over their chosen interface, over
HTTPS with the user's scraper certificate.
"""

from __future__ import annotations

import ipaddress
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import COMPUTE_NODES, TestCluster, new_shared_dir

import jobstrap
from jobstrap import SLURMCluster
from jobstrap.batchctl.control import BatchControl
from jobstrap.states import JobState
from metrics_support import PROMETHEUS, alert_active, query, running_prometheus, targets_of
from support import wait_until

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(PROMETHEUS is None, reason="needs Debian's prometheus on the login node"),
]

PROFILE = "testcluster"
SMALL = {"cores": 1, "memory": "500MiB", "walltime": "00:10:00"}
TIMEOUT = 300.0


@pytest.fixture(scope="module")
def shared_root(testcluster: TestCluster, request: pytest.FixtureRequest) -> Iterator[Path]:
    root = new_shared_dir("metrics-cluster")
    failed_before = request.session.testsfailed
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JOBSTRAP_RUN_ROOT", str(root / "runs"))
        patch.setenv("JOBSTRAP_STATE_DIR", str(root / "state"))
        patch.delenv("JOBSTRAP_PROFILE", raising=False)
        yield root
    if request.session.testsfailed == failed_before:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def prometheus(shared_root: Path) -> Iterator[str]:
    directory = shared_root / "prometheus"
    directory.mkdir()
    with running_prometheus(directory, scrape_interval="2s") as base:
        yield base


def _worker_targets(prometheus: str, run: str) -> list[dict[str, str]]:
    return [r["metric"] for r in query(prometheus, f'up{{run="{run}",role="worker"}} == 1')]


def test_every_worker_of_a_3_job_cluster_is_scraped_and_the_counts_match_slurm(
    prometheus: str,
) -> None:
    # max_failures=1: the first job killed behind the cluster's back makes it give up
    # instead of submitting replacements (its default, 3, replaces the first two, and a
    # replacement that starts before the third kill is seen brings a worker back).
    with SLURMCluster(PROFILE, jobs=3, max_failures=1, **SMALL) as cluster:
        cluster.wait_for_workers(3, timeout=TIMEOUT)
        run = cluster.run_id
        wait_until(
            lambda: len(_worker_targets(prometheus, run)) == 3,
            TIMEOUT,
            lambda: targets_of(prometheus, run),
        )
        workers = _worker_targets(prometheus, run)
        assert {w["node"] for w in workers} <= set(COMPUTE_NODES)
        assert {w["job_id"] for w in workers} == set(cluster.jobs)
        for target in targets_of(prometheus, run):
            host = target["discoveredLabels"]["__address__"].rsplit(":", 1)[0]
            assert not ipaddress.ip_address(host).is_loopback
            assert target["scrapeUrl"].startswith("https://")

        job_ids = list(cluster.jobs)
        in_slurm = BatchControl.for_system("slurm").status(job_ids)
        running = sum(1 for r in in_slurm.values() if r.state is JobState.RUNNING)
        expr = f'jobstrap_jobs{{run="{run}",state="RUNNING"}}'
        wait_until(
            lambda: [r["value"][1] for r in query(prometheus, expr)] == [str(running)],
            60,
            lambda: query(prometheus, expr),
        )
        connected = f'sum(dask_scheduler_workers{{run="{run}"}})'
        wait_until(
            lambda: (
                [r["value"][1] for r in query(prometheus, connected)]
                == [str(len(cluster.scheduler_info["workers"]))]
            ),
            60,
            lambda: query(prometheus, connected),
        )

        # Kill every worker job behind the cluster's back: the alert fires within 90 s.
        killed = time.monotonic()
        BatchControl.for_system("slurm").cancel(job_ids)
        wait_until(
            lambda: alert_active(prometheus, "JobstrapNoWorker", run, state="firing"),
            90,
            "JobstrapNoWorker to fire",
        )
        assert time.monotonic() - killed < 90
        wait_until(lambda: not _worker_targets(prometheus, run), 30, "the workers to go")

    wait_until(lambda: not targets_of(prometheus, run), 30, lambda: targets_of(prometheus, run))


def _sleep(seconds: float) -> str:
    import time as clock

    clock.sleep(seconds)
    return "done"


def test_the_workers_of_a_3_node_batch_run_are_scraped_on_their_nodes(prometheus: str) -> None:
    future = jobstrap.submit(
        _sleep, 90, profile=PROFILE, nodes=3, walltime="00:10:00", memory="1GiB"
    )
    try:
        run = future.run_dir.name
        connected = f'sum(dask_scheduler_workers{{run="{run}"}})'

        def all_scraped() -> bool:
            counted = [float(r["value"][1]) for r in query(prometheus, connected)]
            scraped = _worker_targets(prometheus, run)
            return bool(counted) and counted[0] > 0 and len(scraped) == counted[0]

        wait_until(all_scraped, TIMEOUT, lambda: targets_of(prometheus, run))
        workers = _worker_targets(prometheus, run)
        assert {w["node"] for w in workers} <= set(COMPUTE_NODES)
        assert all(w["job_id"] for w in workers)
        scheduler = query(prometheus, f'up{{run="{run}",role="scheduler"}} == 1')
        assert len(scheduler) == 1
        assert future.result(timeout=TIMEOUT) == "done"
    finally:
        future.cancel()
    wait_until(lambda: not targets_of(prometheus, run), 60, lambda: targets_of(prometheus, run))
