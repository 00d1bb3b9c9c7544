"""``jobstrap doctor``: check a site end to end and say how to fix what is wrong."""

from __future__ import annotations

import json
import signal
import threading
from types import FrameType

import click

from jobstrap.cli.options import profile_options
from jobstrap.config.profile import parse_assignments
from jobstrap.tools.doctor import format_report, run_doctor


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Unwind through run_doctor's finally blocks, which cancel the probe job.
    raise SystemExit(128 + signum)


@click.command()
@profile_options
@click.option(
    "--timeout",
    default=300.0,
    show_default=True,
    metavar="S",
    help="Seconds to wait for the probe job to start.",
)
@click.option(
    "--report-timeout",
    default=90.0,
    show_default=True,
    metavar="S",
    help="Seconds to wait for the probe's report once the job runs.",
)
@click.option("--no-probe", is_flag=True, help="Only check the login node; submit nothing.")
@click.option("--keep", is_flag=True, help="Keep the probe's run directory even when all is well.")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines while waiting.")
def doctor(
    timeout: float,
    report_timeout: float,
    no_probe: bool,
    keep: bool,
    as_json: bool,
    quiet: bool,
    profile_name: str | None,
    assignments: tuple[str, ...],
    system: str | None,
    nodes: int | None,
    tasks_per_node: int | None,
) -> None:
    """Find what stops workers from arriving: run on the login node.

    Checks the batch commands, the profile, Python and Dask here, the partition's
    limits, then submits a tiny probe job that checks the compute node: network
    both ways, versions, the shared file system and the job's CPU and memory
    limits. Exits 1 when something is wrong (the table says how to fix it).
    """  # fmt: skip
    overrides = parse_assignments(assignments)
    flags = {"system": system, "nodes": nodes, "tasks_per_node": tasks_per_node}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    previous: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        for caught in (signal.SIGTERM, signal.SIGHUP):
            previous[caught] = signal.signal(caught, _terminate)
    try:
        report = run_doctor(
            profile_name,
            overrides,
            timeout=timeout,
            report_timeout=report_timeout,
            keep=keep,
            probe=not no_probe,
            echo=(lambda line: None) if quiet else (lambda line: click.echo(line, err=True)),
        )
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(format_report(report), nl=False)
        if report.run_dir:
            click.echo(f"probe run directory (kept): {report.run_dir}")
    raise SystemExit(report.exit_code)


def register(group: click.Group) -> None:
    group.add_command(doctor)
