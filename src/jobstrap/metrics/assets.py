"""What a Prometheus, an Alertmanager and a Grafana need.

The scrape configuration (optionally sending alerts to Alertmanagers), the alert
rules, a minimal Alertmanager configuration and a dashboard are built here as data
and printed by ``jobstrap metrics ...``; the rules are checked with ``promtool check
rules`` and the Alertmanager configuration by the real Alertmanager in the tests.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from jobstrap.metrics.pki import SERVER_NAME, client_files
from jobstrap.metrics.targets import aggregate_files

__all__ = [
    "ALERTS",
    "DEFAULT_FOR",
    "alert_rules",
    "alertmanager_config",
    "alertmanager_target",
    "grafana_dashboard",
    "prometheus_config",
]

#: The alerts :func:`alert_rules` defines.
ALERTS = (
    "JobstrapNoWorker",
    "JobstrapJobPendingTooLong",
    "JobstrapWorkerMemoryHigh",
    "JobstrapRepeatedJobFailures",
    "JobstrapWalltimeWithoutSuccessor",
    "JobstrapTargetDown",
)

#: How long each alert's condition must hold before it fires (its ``for:``), unless
#: :func:`alert_rules` is told otherwise; the others fire at once.
DEFAULT_FOR = {
    "JobstrapNoWorker": "60s",
    "JobstrapWorkerMemoryHigh": "2m",
    "JobstrapWalltimeWithoutSuccessor": "1m",
    "JobstrapTargetDown": "2m",
}


def prometheus_config(
    run_root: str | os.PathLike[str],
    *,
    scrape_interval: str = "15s",
    rule_files: tuple[str, ...] = (),
    alertmanagers: Sequence[str] = (),
) -> str:
    """A Prometheus configuration scraping every live run of ``run_root`` (YAML).

    One scrape job over the aggregate ``file_sd`` file; HTTPS with the user's
    client certificate, endpoints checked against the runs' CAs under
    :data:`~jobstrap.metrics.pki.SERVER_NAME`. Firing alerts go to each of
    ``alertmanagers`` (``HOST:PORT`` or ``http[s]://HOST:PORT[/prefix]``, see
    :func:`alertmanager_target`).
    """
    targets, bundle = aggregate_files(run_root)
    client = client_files(run_root)
    config: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {
                "job_name": "jobstrap",
                "scheme": "https",
                "tls_config": {
                    "ca_file": str(bundle),
                    "cert_file": str(client.cert),
                    "key_file": str(client.key),
                    "server_name": SERVER_NAME,
                },
                "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "30s"}],
            }
        ],
    }
    if rule_files:
        config["rule_files"] = [str(Path(f)) for f in rule_files]
    if alertmanagers:
        # One entry per scheme and prefix: Prometheus takes them per entry, not per target.
        groups: dict[tuple[str, str], list[str]] = {}
        for address in alertmanagers:
            scheme, target, prefix = alertmanager_target(address)
            groups.setdefault((scheme, prefix), []).append(target)
        config["alerting"] = {
            "alertmanagers": [
                {
                    "scheme": scheme,
                    **({"path_prefix": prefix} if prefix else {}),
                    "static_configs": [{"targets": targets}],
                }
                for (scheme, prefix), targets in groups.items()
            ]
        }
    return yaml.safe_dump(config, sort_keys=False)


def alertmanager_target(address: str) -> tuple[str, str, str]:
    """``(scheme, host[:port], path prefix)`` of an Alertmanager given as a flag.

    ``HOST:PORT`` (plain HTTP, the way an Alertmanager on the login node's loopback
    listens) or a URL ``http[s]://HOST[:PORT][/prefix]``.

    Raises
    ------
    ValueError
        Anything else, in one line.
    """
    text = address.strip()
    url = "://" in text
    parsed = urllib.parse.urlsplit(text if url else f"http://{text}")
    try:
        port = parsed.port
    except ValueError:  # not a number, or out of range
        port = -1
    # A URL may leave the port to its scheme; HOST alone is too likely a slip.
    if (
        parsed.scheme not in ("http", "https")
        or not parsed.hostname
        or port == -1
        or (port is None and not url)
    ):
        raise ValueError(
            f"not an Alertmanager address: {address!r} (HOST:PORT, e.g. 127.0.0.1:9093, "
            "or http://HOST:PORT)"
        )
    if parsed.query or parsed.fragment or parsed.username:
        raise ValueError(f"not an Alertmanager address: {address!r} (no query or user part)")
    return parsed.scheme, parsed.netloc, parsed.path.rstrip("/")


def alertmanager_config(
    *,
    webhook: str = "http://127.0.0.1:5001/jobstrap",
    group_wait: str = "30s",
    repeat_interval: str = "4h",
) -> str:
    """A minimal Alertmanager configuration for jobstrap's alerts (YAML), to edit.

    One route, grouping the alerts of a run, to one receiver posting them to
    ``webhook`` (any HTTP endpoint that takes Alertmanager's JSON; replace the
    receiver with ``email_configs`` or a chat's configuration as the site allows).
    Resolved alerts are sent too, so the receiver hears when a run recovers.
    """
    for name, value in (("group_wait", group_wait), ("repeat_interval", repeat_interval)):
        _seconds(value, name)
    scheme = urllib.parse.urlsplit(webhook).scheme
    if scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: {webhook!r}")
    config = {
        "route": {
            "receiver": "jobstrap",
            "group_by": ["alertname", "run"],
            "group_wait": group_wait,
            "group_interval": "5m",
            "repeat_interval": repeat_interval,
        },
        "receivers": [
            {
                "name": "jobstrap",
                "webhook_configs": [{"url": webhook, "send_resolved": True}],
            }
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def alert_rules(
    *, pending_for: str = "30m", failures: int = 3, durations: Mapping[str, str] | None = None
) -> str:
    """jobstrap's alert rules (Prometheus rules YAML).

    Parameters
    ----------
    pending_for
        A job pending longer than this (a Prometheus duration) alerts.
    failures
        This many job failures of one run within 30 minutes alert.
    durations
        The ``for:`` of some alerts (name, or name without ``Jobstrap``, to a
        Prometheus duration; ``0s`` fires at the first evaluation) instead of :data:`DEFAULT_FOR`.

    Raises
    ------
    ValueError
        An unknown alert name (with the nearest one) or a bad duration, in one line.
    """
    seconds = _seconds(pending_for, "--pending-for")
    waits = _durations(durations or {})
    no_worker = waits["JobstrapNoWorker"]
    rules = [
        {
            "alert": "JobstrapNoWorker",
            # The scheduler answers (the run is active) but counts no worker.
            "expr": "sum by (run, user) (dask_scheduler_workers) == 0",
            "for": no_worker,
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": f"run {{{{ $labels.run }}}} has had no worker for {no_worker}",
                "description": "The scheduler of {{ $labels.run }} is up but no worker is "
                "connected: its worker jobs ended or cannot start (`jobstrap status`).",
            },
        },
        {
            "alert": "JobstrapJobPendingTooLong",
            "expr": f"jobstrap_job_pending_seconds > {seconds}",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "job {{ $labels.job_id }} of {{ $labels.run }} pending for "
                f"more than {pending_for}",
                "description": "Pending for {{ $value | humanizeDuration }}; the queue may "
                "be full or the request larger than the partition allows.",
            },
        },
        {
            "alert": "JobstrapWorkerMemoryHigh",
            "expr": "jobstrap_worker_memory_used_ratio > 0.9",
            "for": waits["JobstrapWorkerMemoryHigh"],
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "worker {{ $labels.worker }} of {{ $labels.run }} above 90 % "
                "of its memory limit",
                "description": "At {{ $value | humanizePercentage }}; the nanny restarts "
                "it at 95 %. Give workers more memory or split the work.",
            },
        },
        {
            "alert": "JobstrapRepeatedJobFailures",
            "expr": "sum by (run, user) (increase(jobstrap_job_failures_total[30m]))"
            f" >= {failures}",
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "run {{ $labels.run }}: {{ $value }} job failures in 30 minutes",
                "description": "`jobstrap status` and the jobs' stderr say why "
                "(reason label: OUT_OF_MEMORY, TIMEOUT, NODE_FAIL, PREEMPTED...).",
            },
        },
        {
            "alert": "JobstrapWalltimeWithoutSuccessor",
            # Every running job of the run is past 90 % of its walltime and none waits
            # to take over.
            "expr": "min by (run, user) (jobstrap_job_walltime_used_ratio) > 0.9 unless on (run) "
            '(sum by (run) (jobstrap_jobs{state="PENDING"}) > 0)',
            "for": waits["JobstrapWalltimeWithoutSuccessor"],
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "run {{ $labels.run }} is past 90 % of its walltime with no "
                "successor job",
                "description": "Its workers go when the walltime ends; rotation "
                "(`lifetime`) or a longer walltime keeps the run alive.",
            },
        },
        {
            "alert": "JobstrapTargetDown",
            "expr": 'up{job="jobstrap"} == 0',
            "for": waits["JobstrapTargetDown"],
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "{{ $labels.role }} {{ $labels.worker }} of {{ $labels.run }} "
                "does not answer scrapes",
                "description": "Its process died or its node is unreachable from here.",
            },
        },
    ]
    return yaml.safe_dump({"groups": [{"name": "jobstrap", "rules": rules}]}, sort_keys=False)


def _durations(given: Mapping[str, str]) -> dict[str, str]:
    """:data:`DEFAULT_FOR` with the ``given`` ``for:`` durations, checked."""
    waits = dict(DEFAULT_FOR)
    for raw, duration in given.items():
        name = raw if raw.startswith("Jobstrap") else f"Jobstrap{raw}"
        if name not in ALERTS:
            close = difflib.get_close_matches(name, ALERTS, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"--for: no alert named {raw!r} (known: {', '.join(ALERTS)}){hint}")
        _seconds(duration, f"--for {raw}")
        waits[name] = duration
    return waits


def _seconds(duration: str, field: str = "duration") -> int:
    """Seconds of a Prometheus duration such as ``30m`` or ``1h30m``."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"{field}: not a Prometheus duration: {duration!r} (e.g. 30m, 1h30m)")
    return int(sum(int(n) * units[u] for n, u in parts))


def _panel(title: str, exprs: list[tuple[str, str]], *, x: int, y: int, unit: str = "short") -> Any:
    return {
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
            for i, (expr, legend) in enumerate(exprs)
        ],
    }


def grafana_dashboard() -> str:
    """A Grafana dashboard of jobstrap runs (JSON, importable as it is)."""
    run = 'run=~"$run"'
    panels = [
        ("Workers connected", [(f"sum by (run) (dask_scheduler_workers{{{run}}})", "{{run}}")]),
        (
            "Tasks by state",
            [(f"sum by (state) (dask_scheduler_tasks{{{run}}})", "{{state}}")],
        ),
        (
            "Worker memory (share of limit)",
            [(f"jobstrap_worker_memory_used_ratio{{{run}}}", "{{worker}} on {{node}}")],
        ),
        (
            "Jobs by state",
            [(f"sum by (state, pool) (jobstrap_jobs{{{run}}})", "{{state}} {{pool}}")],
        ),
        (
            "Queue wait per job",
            [(f"jobstrap_job_queue_wait_seconds{{{run}}}", "{{job_id}}")],
        ),
        (
            "Job failures by reason (30 min)",
            [
                (
                    f"sum by (reason) (increase(jobstrap_job_failures_total{{{run}}}[30m]))",
                    "{{reason}}",
                )
            ],
        ),
        (
            "Spilled bytes per worker",
            [(f'dask_worker_memory_bytes{{type="spilled",{run}}}', "{{worker}}")],
        ),
        (
            "Batch command latency (mean)",
            [
                (
                    f"rate(jobstrap_batch_command_seconds_total{{{run}}}[5m]) / "
                    f"rate(jobstrap_batch_command_calls_total{{{run}}}[5m])",
                    "{{command}}",
                )
            ],
        ),
    ]
    units = {
        "Worker memory (share of limit)": "percentunit",
        "Queue wait per job": "s",
        "Spilled bytes per worker": "bytes",
        "Batch command latency (mean)": "s",
    }
    dashboard = {
        "title": "jobstrap runs",
        "uid": "jobstrap-runs",
        "schemaVersion": 39,
        "tags": ["jobstrap", "dask"],
        "time": {"from": "now-3h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus"},
                {
                    "name": "run",
                    "type": "query",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": 'label_values(up{job="jobstrap"}, run)',
                    "includeAll": True,
                    "multi": True,
                    "refresh": 2,
                },
            ]
        },
        "panels": [
            _panel(title, exprs, x=12 * (i % 2), y=8 * (i // 2), unit=units.get(title, "short"))
            for i, (title, exprs) in enumerate(panels)
        ],
    }
    return json.dumps(dashboard, indent=2) + "\n"
