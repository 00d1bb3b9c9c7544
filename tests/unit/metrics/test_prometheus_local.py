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

import json
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from jobstrap import LocalBatchCluster
from jobstrap.cli import cli
from support import wait_until

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="Debian's prometheus is not installed (apt-get install prometheus)"
)


@pytest.fixture(autouse=True)
def private_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A spool and run root of this test's own (also for subprocesses)."""
    monkeypatch.setenv("JOBSTRAP_LOCAL_SPOOL", str(tmp_path / "spool"))
    monkeypatch.setenv("JOBSTRAP_RUN_ROOT", str(tmp_path / "runs"))
    monkeypatch.setenv("JOBSTRAP_STATE_DIR", str(tmp_path / "state"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[str]:
    """A Prometheus on loopback reading jobstrap's configuration; yields its base URL."""
    runner = CliRunner()
    rules = tmp_path / "rules.yml"
    printed = runner.invoke(cli, ["metrics", "alert-rules", "--pending-for", "10m"])
    assert printed.exit_code == 0, printed.output
    rules.write_text(printed.output)
    printed = runner.invoke(
        cli, ["metrics", "prometheus-config", "--scrape-interval", "1s", "--rules", str(rules)]
    )
    assert printed.exit_code == 0, printed.output
    config = tmp_path / "prometheus.yml"
    config.write_text(printed.output)
    port = _free_port()
    assert PROMETHEUS is not None
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _get(base, "/-/ready") is not None, 60, "Prometheus to be ready")
        yield base
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _get(base: str, path: str, **query: str) -> Any:
    url = base + path + ("?" + urllib.parse.urlencode(query) if query else "")
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read()
    except OSError:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    answer = _get(base, "/api/v1/query", query=expr)
    if not isinstance(answer, dict) or answer.get("status") != "success":
        return []
    return list(answer["data"]["result"])


def _targets(base: str, run: str) -> list[dict[str, Any]]:
    answer = _get(base, "/api/v1/targets", state="active")
    if not isinstance(answer, dict):
        return []
    return [t for t in answer["data"]["activeTargets"] if t["labels"].get("run") == run]


def test_every_worker_of_a_cluster_is_scraped_and_gone_after_close(prometheus: str) -> None:
    with LocalBatchCluster(cores=1, memory="300MiB", jobs=3) as cluster:
        cluster.wait_for_workers(3, timeout=120)
        run = cluster.run_id
        up = f'up{{run="{run}",role="worker"}} == 1'

        wait_until(lambda: len(_query(prometheus, up)) == 3, 120, lambda: _targets(prometheus, run))
        workers = _query(prometheus, up)
        job_ids = {w["metric"]["job_id"] for w in workers}
        assert all(job_ids)
        assert {w["metric"]["node"] for w in workers} == {socket.gethostname().split(".")[0]}
        assert {w["metric"]["worker"] for w in workers} == {
            ws["name"] for ws in cluster.scheduler_info["workers"].values()
        }
        scheduler = f'up{{run="{run}",role="scheduler"}} == 1'
        wait_until(lambda: _query(prometheus, scheduler), 60, "the scheduler to be scraped")

        # Dask's count and jobstrap's job states agree with the cluster.
        workers_now = f'sum(dask_scheduler_workers{{run="{run}"}})'
        wait_until(
            lambda: [r["value"][1] for r in _query(prometheus, workers_now)] == ["3"],
            60,
            lambda: _query(prometheus, workers_now),
        )
        running = f'jobstrap_jobs{{run="{run}",state="RUNNING"}}'
        wait_until(
            lambda: [r["value"][1] for r in _query(prometheus, running)] == ["3"],
            60,
            lambda: _query(prometheus, running),
        )
        limits = f'jobstrap_worker_memory_limit_bytes{{run="{run}"}}'
        wait_until(lambda: len(_query(prometheus, limits)) == 3, 60, "the memory limits")

        # No worker left while the scheduler is up: the alert becomes active (pending
        # for its 60 s, then firing).
        cluster.scale(jobs=0)
        wait_until(
            lambda: not _query(prometheus, f'up{{run="{run}",role="worker"}}'),
            120,
            lambda: _targets(prometheus, run),
        )

        def no_worker_alert() -> bool:
            answer = _get(prometheus, "/api/v1/alerts")
            alerts = answer["data"]["alerts"] if isinstance(answer, dict) else []
            return any(
                a["labels"].get("alertname") == "JobstrapNoWorker" and a["labels"].get("run") == run
                for a in alerts
            )

        wait_until(no_worker_alert, 60, lambda: _get(prometheus, "/api/v1/alerts"))

    wait_until(lambda: not _targets(prometheus, run), 60, lambda: _targets(prometheus, run))
