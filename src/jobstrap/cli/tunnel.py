"""``jobstrap tunnel``: an SSH tunnel from a laptop to a run's dashboard (and scheduler),
or to the Prometheus on the login node (``--prometheus``)."""

from __future__ import annotations

import json
import signal
import socket
import threading
from collections.abc import Callable
from types import FrameType

import click

from jobstrap.errors import UserError
from jobstrap.tools.tunnel import (
    RunTarget,
    TunnelKeeper,
    TunnelPlan,
    find_target,
    plan_for,
    prometheus_plan,
    remote_target,
    resolve_via,
)


def _port(value: str, flag: str) -> int | None:
    """``auto`` -> None (pick one), else a port number."""
    if value == "auto":
        return None
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise click.BadParameter(f"expected a port 1-65535 or auto, not {value!r}", param_hint=flag)
    return int(value)


def _find(
    reference: str,
    via: tuple[str, ...],
    *,
    remote_jobstrap: str,
    ssh: str,
    ssh_options: tuple[str, ...],
) -> RunTarget:
    """The run's addresses: from this machine if it knows the run, else the login node."""
    try:
        return find_target(reference)
    except UserError as local_error:
        if not via:
            raise
        try:
            return remote_target(
                reference, via, remote_jobstrap=remote_jobstrap, ssh=ssh, ssh_options=ssh_options
            )
        except UserError as remote_error:
            raise UserError(f"{local_error}; and {remote_error}") from None


@click.command()
@click.argument("reference", metavar="RUN|CLUSTER|DIR|ADDRESS", required=False)
@click.option(
    "--via",
    metavar="LOGIN",
    help=(
        "Login node to go through (an ssh host or alias; a,b jumps through a to b). "
        "Default: $JOBSTRAP_TUNNEL_VIA, else tunnel_via of --profile."
    ),
)
@click.option(
    "--local-port",
    default="auto",
    show_default=True,
    metavar="N|auto",
    help="Laptop port of the dashboard (auto: the remote port if free).",
)
@click.option(
    "--scheduler",
    "forward_scheduler",
    is_flag=True,
    help="Also forward the scheduler's port, for a client on the laptop.",
)
@click.option(
    "--scheduler-port",
    default="auto",
    show_default=True,
    metavar="N|auto",
    help="Laptop port of the scheduler forward.",
)
@click.option(
    "--prometheus",
    "prometheus_port",
    is_flag=False,
    flag_value="9090",
    default=None,
    metavar="[PORT]",
    help="Instead of a run: the Prometheus on the login node's loopback, port PORT "
    "(default 9090); --local-port is its laptop port.",
)
@click.option(
    "--node",
    metavar="HOST",
    help="Reach the scheduler's node by this name instead of its advertised address.",
)
@click.option(
    "--print",
    "print_only",
    is_flag=True,
    help="Only print the ssh command (to run it yourself, e.g. on the laptop).",
)
@click.option("--json", "as_json", is_flag=True, help="With --print: the plan as JSON.")
@click.option(
    "--ssh-option",
    "-o",
    "ssh_options",
    multiple=True,
    metavar="OPTION",
    help="Extra ssh -o option (repeatable), e.g. -o IdentityFile=~/.ssh/hpc.",
)
@click.option("--ssh", "ssh_program", default="ssh", show_default=True, help="ssh executable.")
@click.option(
    "--remote-jobstrap",
    default="jobstrap",
    show_default=True,
    metavar="CMD",
    help="How to run jobstrap on the login node, to look the run up there.",
)
@click.option(
    "--profile",
    "-p",
    "profile_name",
    metavar="P",
    help="Profile whose tunnel_via names the login node.",
)
@click.option(
    "--target-json",
    is_flag=True,
    hidden=True,
    help="Print the run's addresses as JSON (what the remote lookup asks for).",
)
def tunnel(
    reference: str | None,
    via: str | None,
    local_port: str,
    forward_scheduler: bool,
    scheduler_port: str,
    prometheus_port: str | None,
    node: str | None,
    print_only: bool,
    as_json: bool,
    ssh_options: tuple[str, ...],
    ssh_program: str,
    remote_jobstrap: str,
    profile_name: str | None,
    target_json: bool,
) -> None:
    """Keep an SSH tunnel to a run's dashboard (or --prometheus) open and print its URL.

    Runs `ssh -N -L 127.0.0.1:PORT:NODE:PORT LOGIN` with your own ssh config and
    keys, and starts it again (with backoff) whenever it drops. Stop with Ctrl-C.
    """  # fmt: skip
    if prometheus_port is not None:
        if reference is not None or forward_scheduler or node:
            raise UserError(
                "--prometheus forwards the login node's Prometheus alone: give no run, "
                "--scheduler or --node (tunnel to a run in another command)"
            )
        if not prometheus_port.isdigit() or not 0 < int(prometheus_port) < 65536:
            raise click.BadParameter(
                f"expected the Prometheus's port 1-65535, not {prometheus_port!r}",
                param_hint="--prometheus",
            )
    elif reference is None:
        raise click.UsageError("Missing argument 'RUN|CLUSTER|DIR|ADDRESS' (or --prometheus).")
    if target_json:
        assert reference is not None
        click.echo(json.dumps(find_target(reference).to_json()))
        return
    dashboard_port = _port(local_port, "--local-port")
    scheduler_local = _port(scheduler_port, "--scheduler-port")
    profile = None
    if profile_name:
        from jobstrap.config.profile import load_profile

        profile = load_profile(profile_name)
    hops = resolve_via(via, profile=profile)
    if not hops and print_only:
        # Printed for the laptop: this login node is where it must ssh to. Its own
        # name may differ from what the laptop calls it; say so.
        hops = (socket.getfqdn(),)
        click.echo(
            f"# going through {hops[0]} (this host); use --via if the laptop calls it otherwise",
            err=True,
        )
    if prometheus_port is not None:
        plan = prometheus_plan(
            hops,
            remote_port=int(prometheus_port),
            local_port=dashboard_port,
            ssh=ssh_program,
            ssh_options=ssh_options,
        )
        _keep(plan, print_only=print_only, as_json=as_json)
        return
    assert reference is not None
    target = _find(
        reference, hops, remote_jobstrap=remote_jobstrap, ssh=ssh_program, ssh_options=ssh_options
    )

    def build(found: RunTarget, first: TunnelPlan | None) -> TunnelPlan:
        # After the first plan the laptop ports stay fixed: the URL the user opened
        # must keep working across reconnects.
        dash = first.forward("dashboard") if first else None
        sched = first.forward("scheduler") if first else None
        return plan_for(
            found,
            hops,
            local_port=dash.local_port if dash else dashboard_port,
            scheduler=forward_scheduler,
            scheduler_local_port=sched.local_port if sched else scheduler_local,
            node=node,
            ssh=ssh_program,
            ssh_options=ssh_options,
        )

    first = build(target, None)
    if print_only:
        if as_json:
            click.echo(json.dumps(first.describe(), indent=2))
        else:
            click.echo(first.command())
            _explain(first, target, err=True)
        return

    def refresh() -> TunnelPlan:
        # A run whose scheduler restarted has new addresses; follow them on reconnect.
        return build(_find(reference, hops, remote_jobstrap=remote_jobstrap,
                           ssh=ssh_program, ssh_options=ssh_options), first)  # fmt: skip

    keeper = TunnelKeeper(refresh, report=lambda line: click.echo(line, err=True))
    _explain(first, target, err=False)
    _run_until_stopped(keeper)


def _run_until_stopped(keeper: TunnelKeeper) -> None:
    """Keep the tunnel open until Ctrl-C or a signal, then say it closed."""
    with _stop_on_signals(keeper.stop):
        try:
            keeper.run()
        except KeyboardInterrupt:
            keeper.stop()
    click.echo("tunnel closed", err=True)


def _keep(plan: TunnelPlan, *, print_only: bool, as_json: bool) -> None:
    """Print a fixed plan, or keep its tunnel open until Ctrl-C or a signal."""
    if print_only:
        click.echo(json.dumps(plan.describe(), indent=2) if as_json else plan.command())
        if not as_json:
            click.echo(f"Prometheus: {plan.prometheus_url}", err=True)
        return
    keeper = TunnelKeeper(plan, report=lambda line: click.echo(line, err=True))
    click.echo(f"Prometheus: {plan.prometheus_url}")
    _run_until_stopped(keeper)


def _explain(plan: TunnelPlan, target: RunTarget, *, err: bool) -> None:
    if plan.dashboard_url:
        click.echo(f"Dashboard: {plan.dashboard_url}", err=err)
        if target.engine == "ray":
            # Ray's dashboard checks the run's token; its page asks for it.
            token = f"{target.run_dir or 'RUN_DIR'}/ray/token"
            click.echo(f"  it asks for the run's token: the content of {token}", err=err)
    if plan.scheduler_address:
        run_dir = target.run_dir or "RUN_DIR"
        click.echo(f"Scheduler: {plan.scheduler_address}", err=err)
        click.echo(
            f"  copy {run_dir}/tls/ to the laptop, then:\n"
            "  from distributed import Client\n"
            "  from jobstrap.net.security import load_security\n"
            f'  client = Client("{plan.scheduler_address}", '
            'security=load_security("COPY_OF_RUN_DIR"), direct_to_workers=False)',
            err=err,
        )


class _stop_on_signals:  # noqa: N801 - used like a function: `with _stop_on_signals(...)`
    """Turn SIGTERM/SIGHUP into a clean stop (ssh is terminated, not orphaned)."""

    def __init__(self, stop: Callable[[], None]) -> None:
        self._stop = stop
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # The handler runs in the main thread, which may be inside keeper.run();
        # stop() from another thread avoids joining ourselves.
        threading.Thread(target=self._stop, daemon=True).start()

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGHUP):
            self._previous[signum] = signal.signal(signum, self._handle)

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]


def register(group: click.Group) -> None:
    group.add_command(tunnel)
