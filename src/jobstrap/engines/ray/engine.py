"""Ray as the bootstrap's engine (:class:`jobstrap.bootstrap.engine.Engine`).

Layout (batch mode only, see ``docs/ray.md``): one rank per allocated node; rank 0
starts the Ray head on its node and runs the app there as Ray's driver
(``--client-on-scheduler-rank``); every other rank starts one Ray worker node
once the head's address reaches it through the bootstrap's rendezvous (MPI
broadcast or ``info.json``). The app starts once every node is alive in the GCS
(or ``--start-after-workers`` of them), within ``death_timeout``.

Each node: ``ray start --block`` in its own process group
(:class:`~jobstrap.engines.ray.node.RayNode`), with the job's share of the node
and ports and a directory of the run's own (:mod:`~jobstrap.engines.ray.plan`),
the run's token and, with protocol ``tls``, a certificate for its address
(:mod:`~jobstrap.engines.ray.credentials`).

Nothing of Ray is imported in this process before the run's Ray settings are in
its environment: Ray reads them once, when it loads.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobstrap.bootstrap.messages import logger, say
from jobstrap.engines.ray import credentials, plan
from jobstrap.engines.ray.node import RayNode, RayStartError
from jobstrap.errors import UserError

if TYPE_CHECKING:
    from jobstrap.bootstrap.options import Options
    from jobstrap.engines.ray.link import RayLink
    from jobstrap.store.rundir import RunDir

__all__ = ["RayEngine", "RayHead", "RaySecurity", "serve_node"]

#: Environment variables of a node that the app's driver on the head's node needs.
_DRIVER_VARIABLES = (
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN_PATH",
    "RAY_USE_TLS",
    "RAY_TLS_SERVER_CERT",
    "RAY_TLS_SERVER_KEY",
    "RAY_TLS_CA_CERT",
    "RAY_USAGE_STATS_ENABLED",
)


@dataclass(frozen=True)
class RaySecurity:
    """The run's security choice, as the engine gets it: where and whether TLS."""

    run_dir: str
    tls: bool


def _rank_memory(options: Options) -> int | None:
    return options.memory_limit if isinstance(options.memory_limit, int) else None


def _log_file(options: Options, role: str) -> Path:
    rank = os.environ.get("JOBSTRAP_RANK") or os.environ.get("PMI_RANK") or ""
    rank = rank or os.environ.get("SLURM_PROCID") or os.environ.get("PMIX_RANK") or ""
    name = f"ray-{role}-{socket.gethostname()}" + (f"-{rank}" if rank else "") + ".log"
    return Path(options.run_dir) / "logs" / name


def _node(
    options: Options,
    run_secrets: credentials.RunSecrets,
    node_ip: str,
    *,
    address: str | None,
) -> RayNode:
    """Plan one node (resources, ports, directory, secrets) and return it unstarted."""
    temp_dir = plan.make_temp_dir(os.environ)
    try:
        token_file, tls = credentials.write_node_files(temp_dir, run_secrets, node_ip)
        resources = plan.node_resources(rank_limit=_rank_memory(options), environ=os.environ)
        head = address is None
        client_server = head and _has_ray_client()
        free = plan.free_ports(3 if client_server else 2)
        ports = plan.NodePorts(
            dashboard=(head and options.dashboard_port) or free[0],
            dashboard_agent_listen=free[1],
            client_server=free[2] if client_server else None,
        )
        argv = plan.start_argv(
            head=head,
            node_ip=node_ip,
            temp_dir=temp_dir,
            resources=resources,
            ports=ports,
            address=address,
            dashboard_host=_dashboard_host(options, node_ip) if head else None,
        )
        env = plan.node_env(os.environ, token_file=token_file, tls=tls)
    except BaseException:
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    logger.debug(
        "ray node on %s: %d CPU, %d GPU, %d B memory, %d B object store, dir %s",
        node_ip,
        resources.num_cpus,
        resources.num_gpus,
        resources.memory,
        resources.object_store_memory,
        temp_dir,
    )
    return RayNode(argv, env, temp_dir, _log_file(options, "head" if head else "node"))


def _dashboard_host(options: Options, node_ip: str) -> str | None:
    """Where the head's dashboard listens: the node's loopback (a tunnel reaches it),
    its address with ``--dashboard-bind interface``, or nowhere."""
    if not options.dashboard:
        return None
    return node_ip if options.dashboard_bind == "interface" else "127.0.0.1"


def _require_ray() -> None:
    """A one-line error where this node's Python has no Ray (before anything starts)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise UserError(
            f"ray: not installed for {sys.executable}; install it on every node "
            "(pip install 'jobstrap[ray]') or set the profile's python"
        )


#: What Ray's dashboard imports before it starts (``ray.dashboard.optional_deps``):
#: ``ray[default]``'s packages, which plain ``ray`` lacks. Looked up, not imported
#: through Ray's own check: Ray must not load before the run's settings are set.
_DASHBOARD_MODULES = ("aiohttp", "aiohttp_cors", "grpc", "opencensus", "opentelemetry", "pydantic")


def _require_ray_dashboard() -> None:
    """A one-line error naming ``dashboard`` where this Python cannot run Ray's dashboard.

    Ray itself fails later with "Cannot include dashboard with missing packages",
    naming neither the setting nor the missing package.
    """
    import importlib.util

    missing = [name for name in _DASHBOARD_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(
            f"dashboard: Ray's dashboard needs {', '.join(missing)} for {sys.executable} "
            "(pip install 'jobstrap[ray-dashboard]' there), or set dashboard: false"
        )


def _has_ray_client() -> bool:
    # Ray refuses a client-server port without its gRPC extra, and with it listens
    # on the fixed 10001 unless given another.
    import importlib.util

    return importlib.util.find_spec("grpc") is not None


def _routable(host: str, options: Options) -> str:
    """Ray replaces a loopback node address by its own pick: choose one ourselves."""
    if not ipaddress.ip_address(host).is_loopback:
        return host
    from jobstrap.errors import NetworkError
    from jobstrap.net.network import choose_address

    try:
        return choose_address(options.effective_scheduler_interface, allow_loopback=False)
    except NetworkError as error:
        raise UserError(f"ray: Ray nodes need a non-loopback address: {error}") from None


class RayHead:
    """The run's Ray head node (:class:`jobstrap.bootstrap.engine.Head`)."""

    def __init__(self, node: RayNode, address: str, node_ip: str, run_dir: str) -> None:
        self.node = node
        self._address = address
        self.node_ip = node_ip
        self.run_dir = run_dir
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._code: int | None = None

    @property
    def address(self) -> str:
        """The GCS address (``ip:port``): what nodes and the app's driver join."""
        return self._address

    @property
    def dashboard_address(self) -> str | None:
        """``http://HOST:PORT/`` of Ray's dashboard, or None when it was not started."""
        argv = self.node.argv
        if "--dashboard-host" not in argv:
            return None
        host = argv[argv.index("--dashboard-host") + 1]
        return f"http://{host}:{argv[argv.index('--dashboard-port') + 1]}/"

    @property
    def client_address(self) -> str | None:
        """``ray://ip:port`` of the head's Ray Client server, or None (not started)."""
        argv = self.node.argv
        flag = "--ray-client-server-port"
        if flag not in argv:
            return None
        return f"ray://{self.node_ip}:{argv[argv.index(flag) + 1]}"

    def identity(self) -> dict[str, Any]:
        """What ``scheduler.json`` says of the head."""
        return {
            "type": "ray",
            "address": self._address,
            "client_address": self.client_address,
            "node_ip": self.node_ip,
            "pid": self.node.pid,
            "temp_dir": self.node.temp_dir,
        }

    def watch_client(self, *, death_timeout: float, first_contact_timeout: float) -> None:
        """The app runs in the head's process: nothing to watch."""

    def finish(self, code: int, reason: str | None = None) -> None:
        """Tear the head's node down (first call wins); the CA's key goes with it."""
        with self._lock:
            if self._code is not None:
                return
            self._code = code
        if reason:
            say(reason)
        credentials.forget_ca_key(self.run_dir)
        self.node.stop()
        self._done.set()

    def wait(self) -> int:
        """Block until :meth:`finish`; return its code."""
        self._done.wait()
        assert self._code is not None
        return self._code


class RayEngine:
    """The bootstrap's Ray engine."""

    name = "ray"

    def __init__(self) -> None:
        self._head: RayHead | None = None

    def load(self, *, forks_workers: bool = False) -> None:
        """Nothing to import yet: Ray must load after the run's settings are set."""

    def security(self, options: Options, run: RunDir) -> RaySecurity:
        """TLS with protocol ``tls``; the token is used either way."""
        return RaySecurity(str(run.path), options.protocol == "tls")

    def start_head(
        self, options: Options, host: str, security: Any, *, idle_timeout: float | None
    ) -> RayHead:
        """Start the run's Ray head on ``host``; return it once its GCS serves."""
        if options.mode != "mpi" or not options.client_on_scheduler_rank:
            raise UserError(
                "ray: only batch mode with the app on the head's rank is supported "
                "(--mode mpi --client-on-scheduler-rank; jobstrap submit --engine ray)"
            )
        assert isinstance(security, RaySecurity)
        _require_ray()
        if options.dashboard:
            _require_ray_dashboard()
        node_ip = _routable(host, options)
        run_secrets = credentials.head_secrets(security.run_dir, tls=security.tls)
        node = _node(options, run_secrets, node_ip, address=None)
        started = time.monotonic()
        node.start()
        try:
            address = node.wait_for_address(timeout=max(60.0, options.death_timeout))
        except RayStartError as error:
            node.stop()
            credentials.forget_ca_key(security.run_dir)
            raise OSError(f"the Ray head on {node_ip}: {error}") from None
        logger.info("Ray head at %s in %.1f s", address, time.monotonic() - started)
        # This process is the app's: its driver (and the link's GCS client) take
        # the head node's token and certificate, read once when Ray loads.
        os.environ.update({k: node.env[k] for k in _DRIVER_VARIABLES if k in node.env})
        self._head = RayHead(node, address, node_ip, security.run_dir)
        return self._head

    def serve_workers(
        self,
        options: Options,
        address: str,
        host: str,
        security: Any,
        names: Sequence[str],
        *,
        max_memory_kills: int | None = None,
        environments: Sequence[Mapping[str, str]] = (),
        resources: Mapping[str, float] | None = None,
    ) -> int:
        """Run this rank's Ray worker node until the run ends (one node per rank).

        ``environments`` and ``resources`` (Dask's one worker per GPU) do not apply: a
        Ray node offers the job's GPUs itself (``--num-gpus`` from the allocation).
        """
        if options.mode != "mpi":
            say("ray: worker jobs are not supported; run the app with jobstrap submit --engine ray")
            return 2
        assert isinstance(security, RaySecurity)
        return serve_node(options, address, host, security)

    def tell_app(self, options: Options, run: RunDir, address: str) -> None:
        """``RAY_ADDRESS``: a plain ``ray.init()`` or ``ray.init(address="auto")`` joins."""
        # "auto" alone would pick any cluster on the host (another run's included).
        os.environ["RAY_ADDRESS"] = address

    def connect(self, address: str, security: Any, *, death_timeout: float) -> RayLink:
        """The app's :class:`~jobstrap.engines.ray.link.RayLink` (polls the GCS)."""
        from jobstrap.engines.ray.link import RayLink

        head = self._head

        def hard_exit() -> None:
            if head is not None:
                head.finish(1)

        def all_joined() -> None:
            if head is not None:  # no node needs a certificate any more
                credentials.forget_ca_key(head.run_dir)

        return RayLink(
            address, death_timeout=death_timeout, on_hard_exit=hard_exit, on_all_joined=all_joined
        )

    def close_app_clients(self) -> None:
        """Disconnect the app's driver before its cluster goes (no shutdown noise)."""
        ray = sys.modules.get("ray")
        if ray is None:
            return
        with contextlib.suppress(Exception):
            if ray.is_initialized():
                ray.shutdown()


def serve_node(options: Options, address: str, host: str, security: RaySecurity) -> int:
    """One Ray worker node for the head at ``address``, until the run ends.

    The run ends for this node when the app's exit code appears in the run
    directory (0), on the batch system's signals (0), when the head's GCS has not
    answered for ``death_timeout`` (1), or when the node itself ends (1).
    """
    from jobstrap.bootstrap.signals import BATCH_SIGNALS, SignalPolicy

    try:
        _require_ray()
        run_secrets = credentials.RunSecrets.read(security.run_dir, tls=security.tls)
        node = _node(options, run_secrets, _routable(host, options), address=address)
    except UserError as error:
        say(str(error))
        return 2
    stop = threading.Event()

    def on_signal(sig: Any) -> None:
        if sig == signal.SIGUSR1:
            # A warning ahead of the end (walltime): the app is told on its rank;
            # this node keeps serving its tasks until the end itself comes.
            logger.info("SIGUSR1: the batch system warns of the end of this job")
            return
        logger.info("%s: stopping this Ray node", getattr(sig, "name", sig))
        stop.set()

    policy = SignalPolicy(on_signal, signals=BATCH_SIGNALS, counted=())
    policy.install()
    exit_file = Path(security.run_dir) / "exit_code"
    node.start()
    try:
        return _watch_node(node, address, exit_file, stop, options.death_timeout)
    finally:
        node.stop()
        policy.restore()


def _watch_node(
    node: RayNode, address: str, exit_file: Path, stop: threading.Event, death_timeout: float
) -> int:
    host, _, port = address.rpartition(":")
    last_answer = time.monotonic()
    next_probe = 0.0
    while not stop.wait(0.25):
        if exit_file.exists():
            return 0  # the app ended: the run is over for every node
        now = time.monotonic()
        if now >= next_probe:
            next_probe = now + 1.0
            if _reachable(host, int(port)):
                last_answer = now
            elif now - last_answer > death_timeout:
                say(
                    f"lost the Ray head at {address}: no answer for {death_timeout:.0f} s; "
                    "stopping this node"
                )
                return 1
        code = node.exit_code()
        if code is not None:
            if exit_file.exists():
                return 0
            how = f"exit code {code}: {node.last_words()}"
            if code < 0:
                how = f"killed by {signal.Signals(-code).name}; log: {node.log_file}"
            say(f"the Ray node on {socket.gethostname()} ended ({how})")
            return 1
    return 0


def _reachable(host: str, port: int) -> bool:
    """Whether the GCS accepts a connection (a closed port answers at once)."""
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return True
    except OSError:
        return False
