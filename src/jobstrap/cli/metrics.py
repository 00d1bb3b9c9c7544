"""``jobstrap metrics``: the targets of live runs; what Prometheus, Alertmanager, Grafana need."""

from __future__ import annotations

import json
from pathlib import Path

import click

from jobstrap.errors import UserError
from jobstrap.metrics import assets
from jobstrap.metrics.pki import ensure_client_pki
from jobstrap.metrics.targets import aggregate_files, read_targets, update_aggregate
from jobstrap.store.rundir import default_run_root

_RUN_ROOT = click.option(
    "--run-root",
    type=click.Path(file_okay=False),
    default=None,
    help="The runs' parent directory (default: $JOBSTRAP_RUN_ROOT, else ~/.jobstrap/runs).",
)


def _root(run_root: str | None) -> Path:
    return default_run_root(run_root)


@click.group()
def metrics() -> None:
    """Prometheus discovery, scrape configuration, alert rules and a Grafana dashboard."""


@metrics.command()
@_RUN_ROOT
@click.option("--path", "show_path", is_flag=True, help="Print the file's path, not its content.")
def targets(run_root: str | None, show_path: bool) -> None:
    """Print the aggregate file_sd targets of every live run (rebuilt first)."""
    root = _root(run_root)
    path = update_aggregate(root) if root.is_dir() else aggregate_files(root)[0]
    if show_path:
        click.echo(str(path))
        return
    click.echo(json.dumps(read_targets(path), indent=2))


@metrics.command(name="prometheus-config")
@_RUN_ROOT
@click.option("--scrape-interval", default="15s", show_default=True, help="Prometheus duration.")
@click.option(
    "--rules",
    "rule_files",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="A rules file to load (e.g. saved from `jobstrap metrics alert-rules`); repeatable.",
)
@click.option(
    "--alertmanager",
    "alertmanagers",
    multiple=True,
    metavar="HOST:PORT|URL",
    help="Send firing alerts to this Alertmanager (e.g. 127.0.0.1:9093); repeatable.",
)
def prometheus_config(
    run_root: str | None,
    scrape_interval: str,
    rule_files: tuple[str, ...],
    alertmanagers: tuple[str, ...],
) -> None:
    """Print a Prometheus configuration that scrapes every live run (HTTPS, client certificate).

    Creates the client certificate the Prometheus presents, if it does not exist yet.
    """
    for address in alertmanagers:
        try:
            assets.alertmanager_target(address)
        except ValueError as error:
            raise UserError(f"--alertmanager: {error}") from None
    root = _root(run_root)
    ensure_client_pki(root)
    update_aggregate(root)  # so that the files it names exist before Prometheus starts
    click.echo(
        assets.prometheus_config(
            root,
            scrape_interval=scrape_interval,
            rule_files=rule_files,
            alertmanagers=alertmanagers,
        ),
        nl=False,
    )


@metrics.command(name="alert-rules")
@click.option(
    "--pending-for", default="30m", show_default=True, help="Alert on jobs pending this long."
)
@click.option(
    "--failures", default=3, show_default=True, help="Alert on this many job failures in 30 min."
)
@click.option(
    "--for",
    "for_durations",
    multiple=True,
    metavar="ALERT=DURATION",
    help="How long an alert's condition must hold before it fires, e.g. NoWorker=5m "
    "(defaults: " + ", ".join(f"{k[8:]}={v}" for k, v in assets.DEFAULT_FOR.items()) + ").",
)
def alert_rules(pending_for: str, failures: int, for_durations: tuple[str, ...]) -> None:
    """Print jobstrap's Prometheus alert rules (YAML)."""
    durations: dict[str, str] = {}
    for item in for_durations:
        name, sep, duration = item.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--for: expected ALERT=DURATION (e.g. NoWorker=5m), not {item!r}")
        durations[name.strip()] = duration.strip()
    try:
        rules = assets.alert_rules(pending_for=pending_for, failures=failures, durations=durations)
    except ValueError as error:
        raise UserError(str(error)) from None
    click.echo(rules, nl=False)


@metrics.command(name="alertmanager-config")
@click.option(
    "--webhook",
    default="http://127.0.0.1:5001/jobstrap",
    show_default=True,
    help="Where the receiver posts alerts (Alertmanager's webhook JSON); edit to taste.",
)
@click.option("--group-wait", default="30s", show_default=True, help="Prometheus duration.")
@click.option("--repeat-interval", default="4h", show_default=True, help="Prometheus duration.")
def alertmanager_config(webhook: str, group_wait: str, repeat_interval: str) -> None:
    """Print a minimal Alertmanager configuration for jobstrap's alerts (YAML, to edit)."""
    try:
        config = assets.alertmanager_config(
            webhook=webhook, group_wait=group_wait, repeat_interval=repeat_interval
        )
    except ValueError as error:
        raise UserError(f"alertmanager-config: {error}") from None
    click.echo(config, nl=False)


@metrics.command(name="grafana-dashboard")
def grafana_dashboard() -> None:
    """Print a Grafana dashboard of jobstrap runs (JSON)."""
    click.echo(assets.grafana_dashboard(), nl=False)


def register(group: click.Group) -> None:
    """Add ``jobstrap metrics`` to the command line."""
    group.add_command(metrics)
