"""A scheduler's HTTPS metrics endpoint: client certificates required, targets file kept.

A real ``distributed`` scheduler with a run's TLS material (no batch system): the
endpoint refuses a scraper without a certificate and one whose certificate another
CA signed, answers the run's own certificate and the user's scraper certificate,
and serves jobstrap's job metrics beside Dask's.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from pathlib import Path
from types import SimpleNamespace

from distributed import Scheduler

from jobstrap.engines.dask.metrics import SERVICE, install_scheduler_metrics
from jobstrap.metrics.jobs import ClusterCollector
from jobstrap.metrics.pki import SERVER_NAME, client_files
from jobstrap.metrics.targets import aggregate_files, run_targets_file
from jobstrap.net.security import create_tls, load_security
from jobstrap.states import JobState
from jobstrap.store.rundir import RunDir


def _scrape(port: int, context: ssl.SSLContext) -> str:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls,
    ):
        tls.sendall(b"GET /metrics HTTP/1.0\r\nHost: metrics\r\n\r\n")
        chunks = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def _context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def _cluster() -> SimpleNamespace:
    now = 1000.0
    return SimpleNamespace(
        jobs={
            "7_0": SimpleNamespace(
                job_id="7_0",
                state=JobState.RUNNING,
                submitted=now - 50,
                started=now - 40,
                walltime=400,
            ),
            "7_1": SimpleNamespace(
                job_id="7_1",
                state=JobState.PENDING,
                submitted=now - 30,
                started=None,
                walltime=400,
            ),
        },
        job_history={"6": SimpleNamespace(job_id="6", state=JobState.OUT_OF_MEMORY)},
        failures=[SimpleNamespace(state="OUT_OF_MEMORY")],
        batchctl=SimpleNamespace(calls={"sbatch": 2}, seconds={"sbatch": 0.5}),
    )


def test_only_the_run_s_and_the_scraper_s_certificates_are_answered(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "run-a")
    files = create_tls(run)

    # The checks run while the scheduler serves: in a thread beside its loop.
    results: dict[str, object] = {}

    async def with_checks() -> None:
        security = load_security(run)
        async with Scheduler(
            host="127.0.0.1", port=0, protocol="tls", security=security, dashboard=False
        ) as scheduler:
            collector = ClusterCollector(_cluster(), clock=lambda: 1000.0)
            await install_scheduler_metrics(scheduler, run, collectors=[collector])
            port = int(scheduler.services[SERVICE].port)
            results["targets"] = json.loads(run_targets_file(run).read_text())
            _, bundle = aggregate_files(tmp_path)
            scraper = client_files(tmp_path)
            stranger = tmp_path / "stranger"
            create_tls(stranger)
            loop = asyncio.get_running_loop()

            def attempt(context: ssl.SSLContext) -> str:
                try:
                    return _scrape(port, context)
                except (ssl.SSLError, OSError) as error:
                    return f"refused: {type(error).__name__}"

            results["none"] = await loop.run_in_executor(None, attempt, _context(bundle))
            results["stranger"] = await loop.run_in_executor(
                None,
                attempt,
                _context(bundle, stranger / "tls" / "cert.pem", stranger / "tls" / "key.pem"),
            )
            results["run"] = await loop.run_in_executor(
                None, attempt, _context(bundle, files.cert, files.key)
            )
            results["scraper"] = await loop.run_in_executor(
                None, attempt, _context(bundle, scraper.cert, scraper.key)
            )
        results["after"] = json.loads(run_targets_file(run).read_text())

    asyncio.run(with_checks())

    [target] = results["targets"]  # type: ignore[misc]
    assert target["labels"]["role"] == "scheduler"
    assert target["labels"]["run"] == "run-a"
    assert str(results["none"]).startswith("refused")
    assert str(results["stranger"]).startswith("refused")
    for who in ("run", "scraper"):
        text = str(results[who])
        assert text.startswith("HTTP/1.1 200"), text[:200]
        assert "dask_scheduler_workers" in text
        assert 'jobstrap_jobs{pool="default",state="RUNNING"} 1.0' in text
        assert 'jobstrap_job_pending_seconds{job_id="7_1",pool="default"} 30.0' in text
        assert 'jobstrap_job_walltime_used_ratio{job_id="7_0",pool="default"} 0.1' in text
        assert 'jobstrap_job_failures_total{reason="OUT_OF_MEMORY"} 1.0' in text
        assert 'jobstrap_jobs_ended_total{pool="default",state="OUT_OF_MEMORY"} 1.0' in text
        assert 'jobstrap_batch_command_seconds_total{command="sbatch"} 0.5' in text
    assert results["after"] == []  # the run ended: nothing left to scrape


def test_without_tls_material_no_endpoint_is_opened(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "run-plain")

    async def main() -> bool:
        async with Scheduler(host="127.0.0.1", port=0, protocol="tcp", dashboard=False) as s:
            await install_scheduler_metrics(s, run)
            return SERVICE in s.services

    assert asyncio.run(main()) is False


def test_two_workers_in_one_process_each_report_their_own_numbers(tmp_path: Path) -> None:
    # distributed's /metrics shares one collector per process (distributed#8544);
    # each jobstrap endpoint has a registry bound to its own worker.
    from distributed import Worker

    from jobstrap.engines.dask.metrics import MetricsService

    run = RunDir.create(tmp_path, "run-b")
    files = create_tls(run)
    seen: dict[str, str] = {}

    async def main() -> None:
        security = load_security(run)
        service = {SERVICE: (MetricsService, {"role": "worker", "run_dir": str(run)})}
        async with Scheduler(
            host="127.0.0.1", port=0, protocol="tls", security=security, dashboard=False
        ) as scheduler:
            await install_scheduler_metrics(scheduler, run)
            async with (
                Worker(scheduler.address, nthreads=1, name="one", security=security,
                       services=service, dashboard=False),
                Worker(scheduler.address, nthreads=3, name="three", security=security,
                       services=service, dashboard=False),
            ):  # fmt: skip
                await asyncio.sleep(0.5)  # the plugin's coalesced write
                entries = json.loads(run_targets_file(run).read_text())
                loop = asyncio.get_running_loop()
                context = _context(files.ca, files.cert, files.key)
                for entry in entries:
                    if entry["labels"]["role"] != "worker":
                        continue
                    port = int(entry["targets"][0].rsplit(":", 1)[1])
                    text = await loop.run_in_executor(None, _scrape, port, context)
                    seen[entry["labels"]["worker"]] = text

    asyncio.run(main())

    assert set(seen) == {"one", "three"}
    assert "\ndask_worker_threads 1.0" in seen["one"]
    assert "\ndask_worker_threads 3.0" in seen["three"]


def test_workers_that_joined_before_the_endpoint_are_targets_and_counted(tmp_path: Path) -> None:
    # The scheduler's address goes out before its metrics are installed (they are
    # not on the path of the workers' joining): the plugin picks up who is there.
    from distributed import Worker

    from jobstrap.engines.dask.metrics import MetricsService

    run = RunDir.create(tmp_path, "run-c")
    create_tls(run)

    async def main() -> tuple[list[str], int]:
        security = load_security(run)
        service = {SERVICE: (MetricsService, {"role": "worker", "run_dir": str(run)})}
        async with (
            Scheduler(
                host="127.0.0.1", port=0, protocol="tls", security=security, dashboard=False
            ) as scheduler,
            Worker(scheduler.address, nthreads=1, name="early-1", security=security,
                   services=service, dashboard=False),
            Worker(scheduler.address, nthreads=1, name="early-2", security=security,
                   services=service, dashboard=False),
        ):  # fmt: skip
            plugin = await install_scheduler_metrics(scheduler, run)
            assert plugin is not None
            entries = json.loads(run_targets_file(run).read_text())
            workers = sorted(
                e["labels"]["worker"] for e in entries if e["labels"]["role"] == "worker"
            )
            return workers, plugin.joined

    workers, joined = asyncio.run(main())

    assert workers == ["early-1", "early-2"]
    assert joined == 2
