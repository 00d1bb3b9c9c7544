"""SSH tunnels to a run's dashboard (and scheduler) from a laptop.

The scheduler of a run lives on a compute node behind a login node; a browser on a
laptop reaches it only through ``ssh -L``. This module has two halves:

* a pure *plan* (:class:`TunnelPlan`): where to forward what, and the exact ``ssh``
  argv that does it. It is built from a run's ``info.json`` (:func:`plan_for`) and
  tested by its output alone;
* a *keeper* (:class:`TunnelKeeper`): runs that argv, waits until the local port
  answers, and when ``ssh`` exits (network blip, laptop suspend, killed) starts it
  again with exponential backoff.

SSH is used only for the tunnel, with the user's own ``~/.ssh/config``, keys and
agent; nothing is ever submitted through it. Forwarded ports listen on the laptop's
loopback only, so nobody else on a café network reaches the dashboard.

:func:`dashboard_link` is what a cluster object shows as its ``dashboard_link`` when
a tunnel is configured (``JOBSTRAP_TUNNEL_VIA`` or the profile's ``tunnel_via``).
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import ipaddress
import json
import os
import shlex
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from jobstrap.errors import UserError

__all__ = [
    "DEFAULT_SSH_OPTIONS",
    "Backoff",
    "Endpoint",
    "Forward",
    "RunTarget",
    "TunnelKeeper",
    "TunnelPlan",
    "dashboard_link",
    "find_target",
    "free_local_port",
    "parse_endpoint",
    "plan_for",
    "remote_target",
    "remote_target_argv",
    "resolve_via",
    "target_from_info",
]

#: The environment variable naming the login node(s) tunnels go through.
VIA_ENV = "JOBSTRAP_TUNNEL_VIA"

#: Options every tunnel gets. ``ExitOnForwardFailure`` makes ssh exit (so the keeper
#: notices and retries) instead of living on without the forward; the keep-alives
#: make a dead connection exit within ~45 s instead of hanging until TCP gives up.
DEFAULT_SSH_OPTIONS: tuple[str, ...] = (
    "ExitOnForwardFailure=yes",
    "ServerAliveInterval=15",
    "ServerAliveCountMax=3",
)

#: ssh's own words for failures that retrying cannot fix; the keeper gives up on them
#: when the tunnel never came up at all.
_FATAL_SSH_ERRORS = (
    "permission denied",
    "could not resolve hostname",
    "host key verification failed",
    "no such identity",
    "bad configuration option",
    "too many authentication failures",
)


# ------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Endpoint:
    """A host and port on the cluster side, as the login node can reach it.

    Attributes
    ----------
    host
        Address or host name, resolved by the login node's sshd.
    port
        TCP port.
    scheme
        ``http``, ``tls`` or ``tcp`` (only for display).
    path
        URL path of a web page (``/status``), empty otherwise.
    """

    host: str
    port: int
    scheme: str = "tcp"
    path: str = ""


def parse_endpoint(address: str, *, default_scheme: str = "tcp") -> Endpoint:
    """Parse ``"tls://10.1.0.1:8786"``, ``"http://node1:8787/status"`` or ``"node1:8787"``.

    Raises
    ------
    UserError
        When there is no port or the port is not a number 1-65535.
    """
    text = address.strip()
    if "://" not in text:
        text = f"{default_scheme}://{text}"
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or ""
    if not host or port is None or not 0 < port < 65536:
        raise UserError(f"{address!r} is not an address with a port (e.g. node1:8787)")
    return Endpoint(host=host, port=port, scheme=parts.scheme, path=parts.path)


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host in ("", "*")


@dataclass(frozen=True)
class RunTarget:
    """What a tunnel can reach of one run.

    Attributes
    ----------
    dashboard
        The dashboard's endpoint, or ``None`` when the run has no dashboard.
    scheduler
        The scheduler's comm endpoint, or ``None`` when unknown.
    node
        Host name of the scheduler's node (for messages).
    run_dir
        The run directory, when the target came from one (its ``tls/`` is what a
        laptop client needs).
    """

    dashboard: Endpoint | None
    scheduler: Endpoint | None
    node: str = ""
    run_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain data, for ``jobstrap tunnel --target-json`` (the remote lookup)."""
        return {
            "dashboard": asdict(self.dashboard) if self.dashboard else None,
            "scheduler": asdict(self.scheduler) if self.scheduler else None,
            "node": self.node,
            "run_dir": self.run_dir,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunTarget:
        """Inverse of :meth:`to_json`; raises :class:`ValueError` on malformed data."""
        try:
            dashboard = Endpoint(**data["dashboard"]) if data.get("dashboard") else None
            scheduler = Endpoint(**data["scheduler"]) if data.get("scheduler") else None
            return cls(
                dashboard=dashboard,
                scheduler=scheduler,
                node=str(data.get("node") or ""),
                run_dir=data.get("run_dir"),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"malformed tunnel target: {error}") from None


def target_from_info(info: Mapping[str, Any], run_dir: str | None = None) -> RunTarget:
    """Build a :class:`RunTarget` from the JSON object of a run's ``info.json``.

    A dashboard listening on every interface (``0.0.0.0``) is reached through the
    node's host name; otherwise through the address it advertises, which is the one
    the scheduler chose and certainly listens on.
    """
    node = str(info.get("host") or "")
    dashboard: Endpoint | None = None
    if info.get("dashboard_address"):
        dashboard = parse_endpoint(str(info["dashboard_address"]), default_scheme="http")
        if _is_wildcard(dashboard.host):
            if not node:
                raise UserError("info.json: the dashboard listens on every interface but no host")
            dashboard = replace(dashboard, host=node)
        if not dashboard.path or dashboard.path == "/":
            dashboard = replace(dashboard, path="/status")
    scheduler: Endpoint | None = None
    if info.get("scheduler_address"):
        scheduler = parse_endpoint(str(info["scheduler_address"]))
        if _is_wildcard(scheduler.host) and node:
            scheduler = replace(scheduler, host=node)
    return RunTarget(dashboard=dashboard, scheduler=scheduler, node=node, run_dir=run_dir)


def _record_run_dir(record: object) -> str:
    """The run directory of a registry record (an object or a mapping)."""
    value = (
        record.get("run_dir") if isinstance(record, Mapping) else getattr(record, "run_dir", None)
    )
    if not value:
        raise UserError(f"the saved run {record!r} has no run directory")
    return str(value)


def _info_from_run_dir(run_dir: str) -> RunTarget:
    from jobstrap.store.rundir import RunDir

    info_file = Path(run_dir) / "info.json"
    try:
        info = RunDir.open(run_dir).read_json("info.json")
    except FileNotFoundError:
        raise UserError(
            f"{info_file} does not exist (yet): the scheduler has not started; "
            "check the run with `jobstrap status`"
        ) from None
    except ValueError as error:
        raise UserError(f"{info_file}: {error}") from None
    if not isinstance(info, dict):
        raise UserError(f"{info_file}: expected a JSON object")
    return target_from_info(info, run_dir=run_dir)


def find_target(reference: str) -> RunTarget:
    """Find what to tunnel to from a run id, cluster name, run directory or address.

    Parameters
    ----------
    reference
        In order of interpretation: an existing run directory; a run id or cluster
        name in the registry (unique prefixes accepted); an address such as
        ``node1:8787`` or ``http://10.1.0.5:8787/status`` (the dashboard).

    Raises
    ------
    UserError
        When nothing matches, or the run has not published its addresses yet.
    """
    if Path(reference).expanduser().is_dir():
        return _info_from_run_dir(str(Path(reference).expanduser()))
    looks_like_address = "://" in reference or (
        ":" in reference and reference.rsplit(":", 1)[1].isdigit()
    )
    if looks_like_address:
        return RunTarget(dashboard=parse_endpoint(reference, default_scheme="http"), scheduler=None)
    try:
        # Imported by name: the registry is a client-side module this one must not
        # require at import time (the probe and bootstrap import jobstrap without it).
        registry = importlib.import_module("jobstrap.store.registry")
    except ImportError:  # pragma: no cover - the registry ships with jobstrap
        raise UserError(f"no run directory {reference!r} and no run registry") from None
    try:
        record = registry.load(reference)
    except (KeyError, FileNotFoundError, LookupError) as error:
        raise UserError(f"no saved run or cluster {reference!r} ({error})") from None
    return _info_from_run_dir(_record_run_dir(record))


def remote_target_argv(
    reference: str,
    via: Sequence[str],
    *,
    remote_jobstrap: str = "jobstrap",
    ssh: str = "ssh",
    ssh_options: Sequence[str] = (),
) -> list[str]:
    """The ssh argv that asks the login node for a run's addresses.

    On a laptop the registry and run directories are not at hand; the login node
    has them. ``remote_jobstrap`` is a shell command on the login node (it may be
    ``module load python && jobstrap``); the reference is quoted.
    """
    hops = tuple(via)
    if not hops:
        raise UserError("looking a run up on the login node needs --via LOGIN")
    argv = [ssh, "-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]
    for option in ssh_options:
        argv += ["-o", option]
    if hops[:-1]:
        argv += ["-J", ",".join(hops[:-1])]
    remote = f"{remote_jobstrap} tunnel --target-json {shlex.quote(reference)}"
    return [*argv, "--", hops[-1], remote]


def remote_target(
    reference: str,
    via: Sequence[str],
    *,
    remote_jobstrap: str = "jobstrap",
    ssh: str = "ssh",
    ssh_options: Sequence[str] = (),
    timeout: float = 60.0,
) -> RunTarget:
    """Look a run up on the login node over ssh (see :func:`remote_target_argv`).

    Raises
    ------
    UserError
        ssh failed, timed out, or the login node did not know the run (its words).
    """
    argv = remote_target_argv(
        reference, via, remote_jobstrap=remote_jobstrap, ssh=ssh, ssh_options=ssh_options
    )
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise UserError(
            f"asking {via[-1]} for {reference!r} timed out after {timeout:.0f} s"
        ) from None
    except OSError as error:
        raise UserError(f"cannot run {ssh!r}: {error.strerror}") from None
    if done.returncode != 0:
        words = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise UserError(f"{via[-1]} does not know {reference!r}: {words}")
    try:
        return RunTarget.from_json(json.loads(done.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError) as error:
        raise UserError(f"{via[-1]} answered something unexpected: {error}") from None


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
        ``dashboard`` or ``scheduler``.
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
    if not hops:
        raise UserError(
            "say which login node the tunnel goes through: --via LOGIN "
            f"(or set {VIA_ENV}=LOGIN, or tunnel_via in the profile)"
        )
    forwards: list[Forward] = []
    if target.dashboard is not None:
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
        destination=hops[-1],
        jumps=hops[:-1],
        forwards=tuple(forwards),
        options=(*DEFAULT_SSH_OPTIONS, *ssh_options),
        ssh=ssh,
        node=node or target.node,
    )


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


# -------------------------------------------------------------------------------- keeper


@dataclass
class Backoff:
    """Exponential backoff between reconnects: ``initial`` doubling up to ``maximum``.

    A tunnel that stayed up at least ``stable_after`` seconds resets the delay, so a
    laptop waking from suspend reconnects fast while a broken login node is not
    hammered.
    """

    initial: float = 1.0
    maximum: float = 30.0
    stable_after: float = 30.0
    _current: float = field(default=0.0, init=False, repr=False)

    def next_delay(self, uptime: float) -> float:
        """The delay before the next attempt, given how long the last one lasted."""
        if uptime >= self.stable_after or self._current == 0.0:
            self._current = self.initial
        else:
            self._current = min(self.maximum, self._current * 2)
        return self._current


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class TunnelKeeper:
    """Keeps one ssh tunnel up: start, wait for the ports, restart with backoff.

    Parameters
    ----------
    plan
        The plan, or a callable returning a fresh plan for every attempt (a run
        whose scheduler restarted publishes new addresses; the keeper follows).
        When the callable fails, the previous plan is reused.
    backoff
        Delays between attempts.
    report
        Called with one human line per event (``tunnel up``, ``ssh exited ...``).
    ready_timeout
        Seconds to wait for the forwarded ports to answer after ssh starts; ssh
        that takes longer (a password prompt) is left running and checked again.
    give_up_after
        Stop after this many consecutive attempts that never came up (``None``:
        never). Failures ssh calls permanent (authentication, unknown host) stop
        the keeper at once when the tunnel has never been up.
    """

    def __init__(
        self,
        plan: TunnelPlan | Callable[[], TunnelPlan],
        *,
        backoff: Backoff | None = None,
        report: Callable[[str], None] | None = None,
        ready_timeout: float = 20.0,
        give_up_after: int | None = None,
    ) -> None:
        self._factory: Callable[[], TunnelPlan] = plan if callable(plan) else (lambda: plan)
        self._plan: TunnelPlan | None = None if callable(plan) else plan
        self.backoff = backoff or Backoff()
        self._report = report or (lambda line: None)
        self.ready_timeout = ready_timeout
        self.give_up_after = give_up_after
        self._stop = threading.Event()
        self._up = threading.Event()
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self.starts = 0
        self.error: str | None = None

    # -- observation ----------------------------------------------------------------------

    @property
    def plan(self) -> TunnelPlan | None:
        """The plan of the current (or last) attempt."""
        return self._plan

    @property
    def pid(self) -> int | None:
        """Process id of the running ssh, if any."""
        with self._lock:
            return self._process.pid if self._process and self._process.poll() is None else None

    def is_up(self) -> bool:
        """Whether the tunnel's ports answered since ssh last started."""
        return self._up.is_set()

    def wait_up(self, timeout: float) -> bool:
        """Wait until the tunnel is up; False on timeout or when the keeper stopped."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._up.wait(min(0.2, max(0.0, deadline - time.monotonic()))):
                return True
            if self._stop.is_set() or (self._thread is not None and not self._thread.is_alive()):
                return False
        return self._up.is_set()

    # -- control --------------------------------------------------------------------------

    def start(self) -> TunnelKeeper:
        """Run the keeper in a daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run_in_thread, name="jobstrap-tunnel", daemon=True
            )
            self._thread.start()
        return self

    def _run_in_thread(self) -> None:
        # A thread has nobody to raise to: the reason stays in ``error`` and the
        # keeper counts as stopped (``wait_up`` returns False).
        try:
            self.run()
        except UserError as error:
            self.error = str(error)
            self._report(f"tunnel given up: {error}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the keeper and its ssh; waits for the thread if one runs."""
        self._stop.set()
        self._terminate()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> TunnelKeeper:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run(self) -> None:
        """Keep the tunnel up until :meth:`stop` (blocking).

        Raises
        ------
        UserError
            When ssh fails in a way retrying cannot fix, or after ``give_up_after``
            attempts that never came up (the message quotes ssh).
        """
        failures = 0
        ever_up = False
        try:
            while not self._stop.is_set():
                plan = self._next_plan()
                started = time.monotonic()
                came_up, code, stderr_tail = self._attempt(plan)
                uptime = time.monotonic() - started
                ever_up = ever_up or came_up
                failures = 0 if came_up else failures + 1
                if self._stop.is_set():
                    break
                last = stderr_tail[-1] if stderr_tail else "no message"
                self._report(f"ssh exited (code {code}) after {uptime:.0f} s: {last}")
                fatal = not ever_up and any(
                    p in line.lower() for line in stderr_tail for p in _FATAL_SSH_ERRORS
                )
                if fatal or (self.give_up_after is not None and failures >= self.give_up_after):
                    self.error = f"ssh to {plan.destination} failed: {last}"
                    raise UserError(f"{self.error} (command: {plan.command()})")
                delay = self.backoff.next_delay(uptime)
                self._report(f"reconnecting in {delay:.0f} s")
                self._stop.wait(delay)
        finally:
            self._terminate()
            self._up.clear()

    # -- internals ------------------------------------------------------------------------

    def _next_plan(self) -> TunnelPlan:
        try:
            self._plan = self._factory()
        except Exception as error:  # any lookup failure: keep the last plan
            if self._plan is None:
                raise
            self._report(f"could not refresh the run's addresses ({error}); reusing them")
        assert self._plan is not None
        return self._plan

    def _attempt(self, plan: TunnelPlan) -> tuple[bool, int | None, list[str]]:
        """Run ssh once; return (came up, exit code, last stderr lines)."""
        self._up.clear()
        tail: deque[str] = deque(maxlen=20)
        try:
            process = subprocess.Popen(
                plan.argv(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
            )
        except OSError as error:
            raise UserError(f"cannot run {plan.ssh!r}: {error.strerror}") from None
        with self._lock:
            self._process = process
        self.starts += 1
        reader = threading.Thread(
            target=_drain, args=(process.stderr, tail, self._report), daemon=True
        )
        reader.start()
        self._report(f"ssh started (pid {process.pid}): {plan.command()}")
        came_up = False
        deadline = time.monotonic() + self.ready_timeout
        while process.poll() is None and not self._stop.is_set():
            if not came_up and all(port_open(p, timeout=0.3) for p in plan.local_ports):
                came_up = True
                self._up.set()
                self._report(f"tunnel up: {plan.dashboard_url or plan.scheduler_address}")
            elif not came_up and time.monotonic() > deadline:
                # Slow logins (2FA prompts) are not failures; just say so once.
                self._report("ssh is running but the forwarded ports do not answer yet")
                deadline = float("inf")
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.2 if not came_up else 0.5)
        self._up.clear()
        self._terminate()
        reader.join(timeout=2)
        return came_up, process.returncode, list(tail)

    def _terminate(self) -> None:
        with self._lock:
            process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _drain(stream: TextIO | None, tail: deque[str], report: Callable[[str], None]) -> None:
    """Read ssh's stderr line by line: keep the tail, pass each line on."""
    if stream is None:
        return
    for line in _lines(stream):
        tail.append(line)
        report(f"ssh: {line}")


def _lines(stream: TextIO) -> Iterator[str]:
    with contextlib.suppress(ValueError, OSError):  # closed under us at shutdown
        for raw in stream:
            line = raw.rstrip()
            if line:
                yield line
