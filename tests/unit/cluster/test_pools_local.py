"""Worker pools and idle-aware adapt on the local backend: real jobs, scheduler and workers.

The "gpu" pool's workers get the Dask resource GPU=1 through ``worker_resources``
(no device needed): tasks tagged ``resources={"GPU": 1}`` can only run there, and
``adapt(pools=...)`` starts that pool for them alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from distributed import Client, get_worker

from jobstrap import LocalBatchCluster
from jobstrap.cluster.adaptive import JobAdaptive, PoolAdaptive
from jobstrap.errors import ConfigError
from support import local_backend_env

SMALL = {"cores": 1, "memory": "300MiB", "walltime": "00:10:00", "poll_interval": 1}
POOLS = {"cpu": {}, "gpu": {"worker_resources": {"GPU": 1}}}


@pytest.fixture(autouse=True)
def private_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A spool, run root and registry of this test's own (also for subprocesses)."""
    # The local queue's own kill wait (10 s): these tests drain and close gracefully.
    local_backend_env(monkeypatch, tmp_path, kill_wait=10)


def wait_until(condition: Callable[[], bool], timeout: float, seen: Callable[[], object]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s; last seen: {seen()}")
        time.sleep(0.2)


def _where() -> Callable[[int], str]:
    # Defined in a function so that it is pickled by value: the workers cannot
    # import this test module.
    def where(x: int) -> str:
        time.sleep(0.05)
        return str(get_worker().name)

    return where


where = _where()


def test_gpu_tasks_run_only_on_the_gpu_pool_which_adapt_starts_and_stops() -> None:
    with LocalBatchCluster(**SMALL, pools=POOLS) as cluster:
        cluster.scale(jobs=1, pool="cpu")
        with Client(cluster) as client:
            client.wait_for_workers(1, timeout=90)
            plain = client.gather(client.map(where, range(10), pure=False))
            assert {w.split("-")[1] for w in plain} == {"cpu"}
            cpu_jobs = set(cluster.job_pool.plan("cpu"))

            adaptive = cluster.adapt(pools={"gpu": (0, 2)}, interval="300ms")
            tagged = client.map(where, range(40), resources={"GPU": 1}, pure=False)
            ran_on = client.gather(tagged, direct=False)
            assert len(ran_on) == 40
            assert {w.split("-")[1] for w in ran_on} == {"gpu"}

            gpu_jobs = {s.name for s in cluster.job_history.values() if s.pool == "gpu"}
            assert len(gpu_jobs) == 2  # the pool's maximum, reached for the 40 tasks
            assert {"status": "up", "pool": "gpu", "n": 2} in [e for _, e in adaptive.log]
            wait_until(
                lambda: not cluster.job_pool.plan("gpu"),
                90,
                lambda: {p: cluster.job_pool.plan(p) for p in cluster.pools},
            )
            # The cpu pool is not adapted: its job stayed, and served throughout.
            assert set(cluster.job_pool.plan("cpu")) == cpu_jobs
            assert {s.pool for s in cluster.jobs.values()} == {"cpu"}
            assert adaptive.released == {"gpu": 2}


def _step(client: Client) -> str:
    return str(client.submit(where, 0, pure=False).result(timeout=90))


def test_idle_hold_keeps_a_job_across_a_short_gap_and_releases_it_after() -> None:
    with LocalBatchCluster(**SMALL) as cluster, Client(cluster) as client:
        adaptive = cluster.adapt(minimum_jobs=0, maximum_jobs=1, idle_hold=30, interval="200ms")
        first = _step(client)
        time.sleep(3)  # the gap between two steps of a serial workflow
        second = _step(client)
        assert second == first  # the same worker, so the same job: nothing queued again
        assert len(cluster.job_history) == 1
        assert adaptive.released == {"default": 0}
        wait_until(lambda: not cluster.job_pool.plan(), 120, lambda: cluster.jobs)
        assert adaptive.released == {"default": 1}


def test_adapt_holds_idle_jobs_by_default() -> None:
    with LocalBatchCluster(**SMALL) as cluster, Client(cluster) as client:
        adaptive = cluster.adapt(minimum_jobs=0, maximum_jobs=1, interval="200ms")
        assert isinstance(adaptive, PoolAdaptive)
        assert adaptive.idle_hold == "auto"
        first = _step(client)
        time.sleep(3)  # the loop's own patience (0.6 s) is long over: only the hold keeps it
        assert _step(client) == first
        assert len(cluster.job_history) == 1
        assert adaptive.released == {"default": 0}


def test_without_a_hold_the_idle_job_goes_and_the_next_step_queues_again() -> None:
    with LocalBatchCluster(**SMALL) as cluster, Client(cluster) as client:
        adaptive = cluster.adapt(minimum_jobs=0, maximum_jobs=1, idle_hold=0, interval="200ms")
        # No hold is distributed's own loop, counting jobs: what adapt did before holds.
        assert type(adaptive) is JobAdaptive
        _step(client)
        wait_until(lambda: not cluster.job_pool.plan(), 60, lambda: cluster.jobs)
        _step(client)
        assert len(cluster.job_history) == 2


def test_a_custom_adaptive_class_gets_no_hold() -> None:
    class Mine(JobAdaptive):
        pass

    with LocalBatchCluster(**SMALL) as cluster:
        assert type(cluster.adapt(maximum_jobs=1, Adaptive=Mine)) is Mine
        assert type(cluster.adapt(maximum_jobs=1, idle_hold=None)) is JobAdaptive
        with pytest.raises(ConfigError, match="idle_hold"):
            cluster.adapt(maximum_jobs=1, idle_hold="soon")


def test_bad_pool_input_is_one_line_and_nothing_is_submitted(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pools\['gpu'\]\.quue: .*did you mean 'queue'"):
        LocalBatchCluster(**SMALL, pools={"cpu": {}, "gpu": {"quue": "gpu"}})
    with LocalBatchCluster(**SMALL, pools=POOLS) as cluster:
        with pytest.raises(ConfigError, match=r"no such pool.*did you mean 'gpu'"):
            cluster.scale(jobs=1, pool="gpx")
        with pytest.raises(ConfigError, match="did you mean 'gpu'"):
            cluster.adapt(pools={"gpx": (0, 2)})
        with pytest.raises(ConfigError, match="per pool or for the cluster"):
            cluster.adapt(pools={"gpu": (0, 2)}, maximum_jobs=3)
        with pytest.raises(ConfigError, match="idle_hold"):
            cluster.adapt(pools={"gpu": (0, 2)}, idle_hold="soon")
        assert cluster.job_history == {}
    spool = tmp_path / "spool" / "jobs"
    assert not spool.exists() or not any(spool.iterdir())
