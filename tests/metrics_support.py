"""A real Prometheus (and Alertmanager) for the metrics tests, from jobstrap's configuration.

Debian's ``prometheus`` and ``prometheus-alertmanager`` run as subprocesses (never as
services): loopback only, free ports, temporary data directories, the configurations
and alert rules that ``jobstrap metrics`` prints. The helpers query their HTTP APIs.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from jobstrap.cli import cli
from support import wait_until

__all__ = [
    "ALERTMANAGER",
    "PROMETHEUS",
    "alert_active",
    "alerts_received",
    "query",
    "running_alertmanager",
    "running_prometheus",
    "targets_of",
]

PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _printed(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@contextlib.contextmanager
def running_prometheus(
    directory: Path,
    *,
    scrape_interval: str = "1s",
    run_root: str | None = None,
    rule_args: tuple[str, ...] = (),
    alertmanager: str | None = None,
) -> Iterator[str]:
    """Run Prometheus on jobstrap's configuration; yield its base URL; stop it after.

    ``rule_args`` go to ``jobstrap metrics alert-rules``; firing alerts go to
    ``alertmanager`` (``host:port``) if given.
    """
    assert PROMETHEUS is not None, "prometheus is not installed"
    root = ["--run-root", run_root] if run_root else []
    rules = directory / "rules.yml"
    rules.write_text(_printed("metrics", "alert-rules", "--pending-for", "10m", *rule_args))
    alerting = ["--alertmanager", alertmanager] if alertmanager else []
    config = directory / "prometheus.yml"
    config.write_text(
        _printed(
            "metrics",
            "prometheus-config",
            *root,
            "--scrape-interval",
            scrape_interval,
            "--rules",
            str(rules),
            *alerting,
        )
    )
    port = _free_port()
    argv = [
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={directory / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with _serving(argv, directory / "prometheus.log", f"http://127.0.0.1:{port}") as base:
        yield base


@contextlib.contextmanager
def running_alertmanager(directory: Path, *, webhook: str) -> Iterator[str]:
    """Run Alertmanager on ``jobstrap metrics alertmanager-config``; yield its base URL.

    Its receiver posts to ``webhook``; clustering is off (no gossip listener).
    """
    assert ALERTMANAGER is not None, "prometheus-alertmanager is not installed"
    config = directory / "alertmanager.yml"
    config.write_text(
        _printed("metrics", "alertmanager-config", "--webhook", webhook, "--group-wait", "1s")
    )
    port = _free_port()
    argv = [
        ALERTMANAGER,
        f"--config.file={config}",
        f"--storage.path={directory / 'alertmanager'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    with _serving(argv, directory / "alertmanager.log", f"http://127.0.0.1:{port}") as base:
        yield base


@contextlib.contextmanager
def _serving(argv: list[str], log_path: Path, base: str) -> Iterator[str]:
    """Start ``argv``, wait for ``base``'s ``/-/ready``; yield ``base``; end it after."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_until(
            lambda: get(base, "/-/ready") is not None or process.poll() is not None,
            60,
            f"{Path(argv[0]).name} to be ready",
        )
        assert process.poll() is None, log_path.read_text()[-2000:]
        yield base
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def get(base: str, path: str, **params: str) -> Any:
    """GET ``path`` of the API: parsed JSON, the raw body, or None when unreachable."""
    url = base + path + ("?" + urllib.parse.urlencode(params) if params else "")
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read()
    except OSError:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body


def query(base: str, expr: str) -> list[dict[str, Any]]:
    """The instant vector of ``expr`` (empty on any error)."""
    answer = get(base, "/api/v1/query", query=expr)
    if not isinstance(answer, dict) or answer.get("status") != "success":
        return []
    return list(answer["data"]["result"])


def targets_of(base: str, run: str) -> list[dict[str, Any]]:
    """Prometheus's active targets of ``run``."""
    answer = get(base, "/api/v1/targets", state="active")
    if not isinstance(answer, dict):
        return []
    return [t for t in answer["data"]["activeTargets"] if t["labels"].get("run") == run]


def alert_active(base: str, name: str, run: str, state: str | None = None) -> bool:
    """Whether alert ``name`` of ``run`` is pending or firing (or in ``state``)."""
    answer = get(base, "/api/v1/alerts")
    alerts = answer["data"]["alerts"] if isinstance(answer, dict) else []
    return any(
        a["labels"].get("alertname") == name
        and a["labels"].get("run") == run
        and (state is None or a.get("state") == state)
        for a in alerts
    )


def alerts_received(base: str, name: str, run: str) -> list[dict[str, Any]]:
    """The alerts named ``name`` of ``run`` that Alertmanager holds (its v2 API)."""
    answer = get(base, "/api/v2/alerts")
    alerts = answer if isinstance(answer, list) else []
    return [
        a
        for a in alerts
        if a.get("labels", {}).get("alertname") == name and a["labels"].get("run") == run
    ]
