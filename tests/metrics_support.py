"""A real Prometheus for the metrics tests: started from jobstrap's own configuration.

Debian's ``prometheus`` runs as a subprocess (never as a service): loopback only,
a temporary data directory, the configuration and alert rules that
``jobstrap metrics`` prints. The helpers query its HTTP API.
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

__all__ = ["PROMETHEUS", "alert_active", "query", "running_prometheus", "targets_of"]

PROMETHEUS = shutil.which("prometheus")


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
    directory: Path, *, scrape_interval: str = "1s", run_root: str | None = None
) -> Iterator[str]:
    """Run Prometheus on jobstrap's configuration; yield its base URL; stop it after."""
    assert PROMETHEUS is not None, "prometheus is not installed"
    root = ["--run-root", run_root] if run_root else []
    rules = directory / "rules.yml"
    rules.write_text(_printed("metrics", "alert-rules", "--pending-for", "10m"))
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
        )
    )
    port = _free_port()
    with (directory / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: get(base, "/-/ready") is not None, 60, "Prometheus to be ready")
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
