"""jobstrap's job series where the job book is not in the scheduler's process.

On the local backend, scraped over HTTPS with the user's scraper certificate as a
Prometheus would: a batch run's scheduler (inside its job) serves its own job as
running, with its queue wait and the share of its walltime used; the scheduler job
of a ``scheduler="job"`` cluster serves the job book its notebook pushes, under the
names and labels an in-process scheduler uses.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobstrap import LocalBatchCluster
from jobstrap.metrics.pki import SERVER_NAME, client_files
from jobstrap.metrics.targets import read_targets, run_targets_file
from support import local_backend_env, wait_until

Samples = dict[str, list[tuple[dict[str, str], float]]]


@pytest.fixture
def local_env(tmp_path: Path) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as patch:
        local_backend_env(patch, tmp_path)
        patch.delenv("JOBSTRAP_METRICS", raising=False)
        yield tmp_path


def scheduler_target(run_dir: Path) -> dict[str, object] | None:
    for entry in read_targets(run_targets_file(run_dir)):
        if entry["labels"]["role"] == "scheduler":
            return entry
    return None


def scrape(run_dir: Path, address: str) -> Samples:
    """The endpoint's samples, fetched with the scraper certificate (as Prometheus does)."""
    client = client_files(run_dir.parent)
    context = ssl.create_default_context(cafile=str(run_dir / "tls" / "ca.pem"))
    context.load_cert_chain(str(client.cert), str(client.key))
    host, port = address.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls,
    ):
        tls.sendall(b"GET /metrics HTTP/1.0\r\nHost: metrics\r\n\r\n")
        chunks = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
    body = b"".join(chunks).decode().split("\r\n\r\n", 1)[1]
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def jobstrap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobstrap", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=dict(os.environ),
        check=False,
    )


APP = """
import pathlib, sys, time
stop = pathlib.Path(sys.argv[1])
deadline = time.monotonic() + 300
while not stop.exists() and time.monotonic() < deadline:
    time.sleep(0.2)
"""


def test_a_batch_run_serves_its_own_job_state_queue_wait_and_walltime(local_env: Path) -> None:
    app, stop = local_env / "app.py", local_env / "stop"
    app.write_text(APP)
    done = jobstrap("submit", "--system", "local", "--set", "walltime=20m", str(app), str(stop))
    assert done.returncode == 0, done.stderr
    [run_dir] = [p for p in (local_env / "runs").iterdir() if not p.name.startswith(".")]
    try:
        wait_until(lambda: scheduler_target(run_dir), 120, "the scheduler's metrics target")
        target = scheduler_target(run_dir)
        assert target is not None
        [job_id] = json.loads((run_dir / "run.json").read_text())["job_ids"]
        labels = target["labels"]
        assert isinstance(labels, dict)
        assert labels["job_id"] == job_id
        [address] = target["targets"]  # type: ignore[misc]

        # run.json may be written after the job started: the series appear once it is.
        wait_until(
            lambda: "jobstrap_job_queue_wait_seconds" in scrape(run_dir, address),
            60,
            lambda: sorted(scrape(run_dir, address)),
        )
        samples = scrape(run_dir, address)
        assert samples["jobstrap_jobs"] == [({"state": "RUNNING", "pool": "default"}, 1.0)]
        assert samples["jobstrap_jobs_submitted_total"] == [({"pool": "default"}, 1.0)]
        job = {"job_id": job_id, "pool": "default"}
        assert samples["jobstrap_job_walltime_seconds"] == [(job, 1200.0)]
        [(wait_labels, wait)] = samples["jobstrap_job_queue_wait_seconds"]
        assert wait_labels == job
        assert wait >= 0
        [(used_labels, used)] = samples["jobstrap_job_walltime_used_ratio"]
        assert used_labels == job
        assert 0 < used < 1
        assert "jobstrap_job_pending_seconds" not in samples  # it runs
    finally:
        stop.touch()
        wait_until(lambda: (run_dir / "exit_code").exists(), 120, "the app to end")
        jobstrap("cancel", run_dir.name)


def test_a_scheduler_job_serves_the_job_book_its_notebook_pushes(local_env: Path) -> None:
    with LocalBatchCluster(
        cores=1, memory="300MiB", jobs=2, scheduler="job", poll_interval=1
    ) as cluster:
        cluster.wait_for_workers(2, timeout=120)
        run_dir = cluster.run_dir.path
        wait_until(lambda: scheduler_target(run_dir), 60, "the scheduler's metrics target")
        target = scheduler_target(run_dir)
        assert target is not None
        [address] = target["targets"]  # type: ignore[misc]

        def running() -> list[tuple[dict[str, str], float]]:
            return scrape(run_dir, address).get("jobstrap_jobs", [])

        wait_until(
            lambda: running() == [({"state": "RUNNING", "pool": "default"}, 2.0)], 60, running
        )
        samples = scrape(run_dir, address)
        walltimes = samples["jobstrap_job_walltime_seconds"]
        assert {labels["job_id"] for labels, _ in walltimes} == set(cluster.jobs)
        assert samples["jobstrap_jobs_submitted_total"] == [({"pool": "default"}, 2.0)]


def test_a_pushed_book_is_served_as_sent_and_not_once_it_is_stale() -> None:
    from types import SimpleNamespace

    from jobstrap.metrics.jobs import ClusterCollector, JobView, PushedCollector, to_wire

    book = SimpleNamespace(
        jobs={"9": JobView("9", "PENDING", submitted=100.0)},
        job_history={},
        failures=[SimpleNamespace(state="OUT_OF_MEMORY")],
    )
    sent = ClusterCollector(book, clock=lambda: 130.0)
    now = [1000.0]
    served = PushedCollector(max_age=60, clock=lambda: now[0])
    served.receive(to_wire(sent))

    def samples(collector: object) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
        return {
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for family in collector.collect()  # type: ignore[attr-defined]
            for s in family.samples
        }

    assert samples(served) == samples(sent)
    assert ("jobstrap_job_pending_seconds", (("job_id", "9"), ("pool", "default")), 30.0) in (
        samples(served)
    )
    now[0] += 61  # the notebook stopped pushing: no job states rather than old ones
    assert samples(served) == set()
