"""The pure half of a tunnel: where to forward what, and the ``ssh`` argv that does it.

:func:`plan_for` builds a :class:`TunnelPlan` from a :class:`~.targets.RunTarget`;
:func:`prometheus_plan` one to a Prometheus on the login node's loopback (the one
``jobstrap metrics prometheus-config`` sets up); :func:`dashboard_link` is the link
a cluster shows when a tunnel is configured.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import shlex
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from jobstrap.errors import UserError
from jobstrap.tools.tunnel.targets import Endpoint, RunTarget, parse_endpoint

#: The environment variable naming the login node(s) tunnels go through.
VIA_ENV = "JOBSTRAP_TUNNEL_VIA"

#: The port a Prometheus listens on unless told otherwise (docs/metrics.md).
PROMETHEUS_PORT = 9090

#: Options every tunnel gets. ``ExitOnForwardFailure`` makes ssh exit (so the keeper
#: notices and retries) instead of living on without the forward; the keep-alives
#: make a dead connection exit within ~45 s instead of hanging until TCP gives up.
DEFAULT_SSH_OPTIONS: tuple[str, ...] = (
    "ExitOnForwardFailure=yes",
    "ServerAliveInterval=15",
    "ServerAliveCountMax=3",
)


# --------------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class Forward:
    """One ``-L`` forward: ``bind:local_port`` on the laptop to ``host:port`` beyond.

    Attributes
    ----------
    local_port
        Port on the laptop.
    remote
        Where the login node sends the traffic.
    label
        ``dashboard``, ``scheduler`` or ``prometheus``.
    bind
        Laptop address the port listens on; loopback, so only the laptop's user
        reaches it.
    """

    local_port: int
    remote: Endpoint
    label: str
    bind: str = "127.0.0.1"

    @property
    def spec(self) -> str:
        """The ``-L`` argument: ``127.0.0.1:8787:10.1.0.5:8787``."""
        host = self.remote.host
        if ":" in host:  # IPv6 literals need brackets inside the colon-separated spec
            host = f"[{host}]"
        return f"{self.bind}:{self.local_port}:{host}:{self.remote.port}"


@dataclass(frozen=True)
class TunnelPlan:
    """Everything one ``ssh -N -L ...`` needs; :meth:`argv` is the command.

    Attributes
    ----------
    destination
        The host ssh logs into (the login node; anything ``ssh`` accepts,
        including an alias from ``~/.ssh/config`` or ``user@host``). The forwarded
        addresses are resolved there.
    forwards
        The ``-L`` forwards, dashboard first.
    jumps
        Hosts to hop through before the destination (``-J a,b``).
    options
        ``-o`` options, :data:`DEFAULT_SSH_OPTIONS` first then the user's.
    ssh
        The ssh executable.
    node
        Host name of the scheduler's node (for messages).
    """

    destination: str
    forwards: tuple[Forward, ...]
    jumps: tuple[str, ...] = ()
    options: tuple[str, ...] = DEFAULT_SSH_OPTIONS
    ssh: str = "ssh"
    node: str = ""

    def __post_init__(self) -> None:
        if not self.forwards:
            raise ValueError("a tunnel plan needs at least one forward")
        for host in (self.destination, *self.jumps):
            # ssh would read a leading "-" as an option: refuse instead of guessing.
            if not host or host.startswith("-") or any(c.isspace() for c in host):
                raise UserError(f"{host!r} is not a host to ssh to")

    def argv(self) -> list[str]:
        """The ssh command line (an argv list; never passed through a shell)."""
        argv = [self.ssh, "-N"]
        for forward in self.forwards:
            argv += ["-L", forward.spec]
        if self.jumps:
            argv += ["-J", ",".join(self.jumps)]
        for option in self.options:
            argv += ["-o", option]
        # "--" ends options: the destination can never be read as one.
        return [*argv, "--", self.destination]

    def command(self) -> str:
        """The same command as one copy-pasteable shell line."""
        return shlex.join(self.argv())

    def forward(self, label: str) -> Forward | None:
        """The forward labelled ``label``, if the plan has one."""
        return next((f for f in self.forwards if f.label == label), None)

    @property
    def local_ports(self) -> tuple[int, ...]:
        """Every laptop port the plan listens on."""
        return tuple(f.local_port for f in self.forwards)

    @property
    def dashboard_url(self) -> str | None:
        """The URL to open on the laptop, e.g. ``http://localhost:8787/status``."""
        forward = self.forward("dashboard")
        if forward is None:
            return None
        return f"http://localhost:{forward.local_port}{forward.remote.path or '/status'}"

    @property
    def prometheus_url(self) -> str | None:
        """The Prometheus web UI on the laptop, e.g. ``http://localhost:9090/``."""
        forward = self.forward("prometheus")
        if forward is None:
            return None
        return f"http://localhost:{forward.local_port}/"

    @property
    def scheduler_address(self) -> str | None:
        """The address a laptop client connects to, e.g. ``tls://localhost:8786``."""
        forward = self.forward("scheduler")
        if forward is None:
            return None
        scheme = forward.remote.scheme if forward.remote.scheme in ("tls", "tcp") else "tcp"
        return f"{scheme}://localhost:{forward.local_port}"

    def describe(self) -> dict[str, Any]:
        """The plan as plain data (for ``--json`` and for the remote lookup)."""
        return {
            "destination": self.destination,
            "jumps": list(self.jumps),
            "node": self.node,
            "forwards": [
                {
                    "label": f.label,
                    "local_port": f.local_port,
                    "host": f.remote.host,
                    "port": f.remote.port,
                    "scheme": f.remote.scheme,
                    "path": f.remote.path,
                }
                for f in self.forwards
            ],
            "dashboard_url": self.dashboard_url,
            "scheduler_address": self.scheduler_address,
            "prometheus_url": self.prometheus_url,
            "command": self.command(),
        }


def resolve_via(
    via: str | None = None,
    *,
    profile: object | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[str, ...]:
    """The hosts a tunnel goes through, last one the ssh destination.

    Order: ``via`` (``--via``), ``$JOBSTRAP_TUNNEL_VIA``, the profile's
    ``tunnel_via``. Each is one host or a comma-separated chain
    (``batchctl,login``: ssh jumps through ``batchctl`` to ``login``).

    Returns
    -------
    tuple of str
        Empty when no tunnel is configured.
    """
    env = os.environ if environ is None else environ
    for candidate in (via, env.get(VIA_ENV), getattr(profile, "tunnel_via", None)):
        if candidate is None:
            continue
        hops = tuple(h.strip() for h in str(candidate).split(",") if h.strip())
        if hops:
            return hops
    return ()


def free_local_port(preferred: int | None = None, *, bind: str = "127.0.0.1") -> int:
    """A TCP port free on the laptop: ``preferred`` if it is free, else any free one.

    Preferring the remote port keeps familiar URLs (``localhost:8787``) whenever
    possible. The port is only known free at the moment of the check; ssh's
    ``ExitOnForwardFailure`` turns a lost race into a retry, not a silent failure.
    """
    candidates = ([preferred] if preferred else []) + [0]
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((bind, port))
            except OSError as error:
                if error.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue
                raise
            return int(sock.getsockname()[1])
    raise OSError("no free local TCP port")  # pragma: no cover - port 0 always binds


def plan_for(
    target: RunTarget,
    via: Sequence[str],
    *,
    local_port: int | None = None,
    scheduler: bool = False,
    scheduler_local_port: int | None = None,
    node: str | None = None,
    ssh: str = "ssh",
    ssh_options: Sequence[str] = (),
    port_is_free: Callable[[int | None], int] = free_local_port,
) -> TunnelPlan:
    """Build the tunnel plan for ``target`` through ``via``.

    Parameters
    ----------
    target
        What to reach (:func:`find_target`).
    via
        Hosts to go through; the last is the ssh destination (the login node).
    local_port
        Laptop port of the dashboard; ``None`` picks one (the remote port if free).
    scheduler
        Also forward the scheduler's comm port (for a laptop client).
    scheduler_local_port
        Laptop port of the scheduler forward; ``None`` picks one.
    node
        Reach the scheduler's node by this name instead of its advertised address
        (e.g. when the login node cannot route the fast network's addresses).
    ssh
        The ssh executable.
    ssh_options
        Extra ``-o`` options (``BatchMode=yes``, ``IdentityFile=...``).
    port_is_free
        Port picker (tests pass a deterministic one).

    Raises
    ------
    UserError
        No login node given, or nothing to forward.
    """
    hops = tuple(via)
    if target.engine == "ray" and scheduler:
        # A driver needs every node's ports, not the GCS's alone.
        raise UserError(
            "a Ray run's GCS port is of no use through a tunnel: a driver joins from a "
            "host on the nodes' network (RayCluster.client_address)"
        )
    if target.engine == "ray" and target.dashboard is None:
        raise UserError(
            "a Ray run has no dashboard to forward: the Ray engine starts Ray's dashboard "
            "only with `dashboard: true` in the profile (docs/ray.md)"
        )
    if not hops:
        raise UserError(
            "say which login node the tunnel goes through: --via LOGIN "
            f"(or set {VIA_ENV}=LOGIN, or tunnel_via in the profile)"
        )
    forwards: list[Forward] = []
    destination, jumps = hops[-1], hops[:-1]
    if target.dashboard is not None:
        if is_loopback(target.dashboard.host):
            # The dashboard answers on its node's loopback only (the default): ssh on
            # through the login node to that node, and forward to its 127.0.0.1.
            remote = target.dashboard
            destination = _scheduler_node(target, node)
            # A scheduler on the login node itself (a notebook's cluster) needs no hop.
            jumps = hops[:-1] if destination == hops[-1] else hops
        else:
            remote = replace(target.dashboard, host=node) if node else target.dashboard
        port = local_port if local_port else port_is_free(remote.port)
        forwards.append(Forward(port, remote, "dashboard"))
    if scheduler:
        if target.scheduler is None:
            raise UserError("the run has not published a scheduler address (info.json)")
        remote = replace(target.scheduler, host=node) if node else target.scheduler
        taken = {f.local_port for f in forwards}
        port = scheduler_local_port or port_is_free(remote.port)
        if port in taken:
            port = port_is_free(None)
        forwards.append(Forward(port, remote, "scheduler"))
    if not forwards:
        raise UserError(
            "the run has no dashboard (dashboard: false); use --scheduler to forward its "
            "scheduler port"
        )
    return TunnelPlan(
        destination=destination,
        jumps=jumps,
        forwards=tuple(forwards),
        options=(*DEFAULT_SSH_OPTIONS, *ssh_options),
        ssh=ssh,
        node=node or target.node,
    )


def prometheus_plan(
    via: Sequence[str],
    *,
    remote_port: int = PROMETHEUS_PORT,
    local_port: int | None = None,
    ssh: str = "ssh",
    ssh_options: Sequence[str] = (),
    port_is_free: Callable[[int | None], int] = free_local_port,
) -> TunnelPlan:
    """A tunnel to a Prometheus on the login node's loopback (``127.0.0.1:remote_port``).

    The login node (the last of ``via``) is the ssh destination, so ``127.0.0.1`` is
    resolved there: the Prometheus started as docs/metrics.md says, which listens
    on the login node's loopback only.

    Raises
    ------
    UserError
        No login node given.
    """
    hops = tuple(via)
    if not hops:
        raise UserError(
            "say which login node runs the Prometheus: --via LOGIN "
            f"(or set {VIA_ENV}=LOGIN, or tunnel_via in the profile)"
        )
    remote = Endpoint("127.0.0.1", remote_port, "http", "/")
    port = local_port if local_port else port_is_free(remote_port)
    return TunnelPlan(
        destination=hops[-1],
        jumps=hops[:-1],
        forwards=(Forward(port, remote, "prometheus"),),
        options=(*DEFAULT_SSH_OPTIONS, *ssh_options),
        ssh=ssh,
        node=hops[-1],
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` names the loopback of the machine it is resolved on."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _scheduler_node(target: RunTarget, node: str | None) -> str:
    """The host to ssh to for a loopback dashboard: ``--node``, else the run's node."""
    name = node or target.node or (target.scheduler.host if target.scheduler else "")
    if not name or is_loopback(name):
        raise UserError(
            "the dashboard listens on its node's loopback and the run does not say which "
            "node that is; name it with --node NODE"
        )
    return name


def dashboard_link(
    dashboard_address: str | None,
    *,
    via: str | None = None,
    profile: object | None = None,
    local_port: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """The dashboard link to show a user: through the tunnel when one is configured.

    Parameters
    ----------
    dashboard_address
        The scheduler's own dashboard URL (``http://10.1.0.5:8787/status``).
    via, profile, environ
        Where a tunnel configuration comes from (see :func:`resolve_via`).
    local_port
        The laptop port of the tunnel; default the remote port, which is what
        ``jobstrap tunnel`` picks whenever it is free on the laptop.

    Returns
    -------
    str or None
        ``http://localhost:<port>/status`` when a tunnel is configured, else
        ``dashboard_address`` unchanged (``None`` stays ``None``).
    """
    if not dashboard_address or not resolve_via(via, profile=profile, environ=environ):
        return dashboard_address
    endpoint = parse_endpoint(dashboard_address, default_scheme="http")
    path = endpoint.path if endpoint.path not in ("", "/") else "/status"
    return f"http://localhost:{local_port or endpoint.port}{path}"
