"""A real Prometheus scrapes a real notebook cluster on the local backend.

Debian's ``prometheus`` runs as a subprocess (loopback only, a temporary data
directory, one-second scrapes) with the configuration and rules that
``jobstrap metrics`` prints. A LocalBatchCluster of 3 jobs: every worker becomes
a target that Prometheus scrapes over HTTPS with the user's client certificate
(``up == 1``), jobstrap's job metrics and Dask's worker count agree with the
cluster, the no-worker alert fires when the jobs are gone, and the targets are gone
after close. Debian's ``prometheus-alertmanager`` runs beside it on the
configuration ``jobstrap metrics alertmanager-config`` prints: the firing alert
reaches it (its API) and its webhook receiver (a small HTTP server here).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from jobstrap import LocalBatchCluster
from metrics_support import (
    ALERTMANAGER,
    PROMETHEUS,
    alert_active,
    alerts_received,
    query,
    running_alertmanager,
    running_prometheus,
    targets_of,
)
from support import local_backend_env, wait_until

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="Debian's prometheus is not installed (apt-get install prometheus)"
)


@pytest.fixture(autouse=True)
def private_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A spool, run root and registry of this test's own (also for subprocesses)."""
    # The local queue's own kill wait (10 s): these tests drain and close gracefully.
    local_backend_env(monkeypatch, tmp_path, kill_wait=10)


@contextlib.contextmanager
def webhook_receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP server on loopback keeping every JSON body posted to it."""
    posted: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            posted.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jobstrap", posted
    finally:
        server.shutdown()
        server.server_close()


Alerting = tuple[str, str | None, list[dict[str, Any]]]


@pytest.fixture
def alerting(tmp_path: Path) -> Iterator[Alerting]:
    """Prometheus (and Alertmanager, if installed) on loopback, from jobstrap's files.

    Yields Prometheus's base URL, Alertmanager's (None without it) and what the
    Alertmanager's webhook receiver was sent. The no-worker alert fires after 2 s
    rather than a minute (``alert-rules --for NoWorker=2s``).
    """
    with webhook_receiver() as (hook, posted), contextlib.ExitStack() as stack:
        manager = None
        if ALERTMANAGER is not None:
            (tmp_path / "am").mkdir()
            manager = stack.enter_context(running_alertmanager(tmp_path / "am", webhook=hook))
        prometheus = stack.enter_context(
            running_prometheus(
                tmp_path,
                scrape_interval="1s",
                rule_args=("--for", "NoWorker=2s"),
                alertmanager=manager.removeprefix("http://") if manager else None,
            )
        )
        yield prometheus, manager, posted


def _time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_every_worker_of_a_cluster_is_scraped_and_gone_after_close(alerting: Alerting) -> None:
    prometheus, manager, posted = alerting
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

        # No worker left while the scheduler is up: the alert fires (after its 2 s).
        gone = time.time()
        cluster.scale(jobs=0)
        wait_until(
            lambda: not query(prometheus, f'up{{run="{run}",role="worker"}}'),
            120,
            lambda: targets_of(prometheus, run),
        )

        wait_until(
            lambda: alert_active(prometheus, "JobstrapNoWorker", run, state="firing"),
            60,
            "the no-worker alert to fire",
        )
        if manager is not None:
            _reaches_alertmanager(manager, posted, run, gone)

    wait_until(lambda: not targets_of(prometheus, run), 60, lambda: targets_of(prometheus, run))
    if manager is None:
        pytest.skip(
            "prometheus-alertmanager is not installed (apt-get install "
            "prometheus-alertmanager): Prometheus checked, the Alertmanager part not run"
        )


def _reaches_alertmanager(
    manager: str, posted: list[dict[str, Any]], run: str, gone: float
) -> None:
    """The firing no-worker alert of ``run`` is in Alertmanager and was posted on."""

    # Prometheus sent it to Alertmanager, which holds it as active (its start
    # after the workers went: not the alert of the start-up, before workers came)...
    def received() -> list[dict[str, Any]]:
        return [
            a
            for a in alerts_received(manager, "JobstrapNoWorker", run)
            if a["status"]["state"] == "active" and _time(a["startsAt"]) >= gone
        ]

    wait_until(received, 60, lambda: alerts_received(manager, "JobstrapNoWorker", run))
    [alert] = received()
    assert alert["labels"]["severity"] == "critical"

    # ... and posted it to the receiver of the configuration it was given.
    def notified() -> list[dict[str, Any]]:
        return [
            a
            for body in list(posted)
            for a in body.get("alerts", [])
            if a["labels"].get("alertname") == "JobstrapNoWorker"
            and a["labels"].get("run") == run
            and a["status"] == "firing"
            and _time(a["startsAt"]) >= gone
        ]

    wait_until(notified, 60, lambda: posted)
