"""Where a run's scheduler and dashboard listen: the tunnel's targets.

A :class:`RunTarget` is read from a run's ``info.json`` (by run directory, saved run
or cluster name), here or, through ``ssh``, on the login node (:func:`remote_target`).
"""

from __future__ import annotations

import importlib
import ipaddress
import json
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jobstrap.errors import UserError

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
    engine
        The run's engine, as its head says (``scheduler.json``'s ``type``).
    """

    dashboard: Endpoint | None
    scheduler: Endpoint | None
    node: str = ""
    run_dir: str | None = None
    engine: str = "dask"

    def to_json(self) -> dict[str, Any]:
        """Plain data, for ``jobstrap tunnel --target-json`` (the remote lookup)."""
        return {
            "dashboard": asdict(self.dashboard) if self.dashboard else None,
            "scheduler": asdict(self.scheduler) if self.scheduler else None,
            "node": self.node,
            "run_dir": self.run_dir,
            "engine": self.engine,
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
                engine=str(data.get("engine") or "dask"),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"malformed tunnel target: {error}") from None


def target_from_info(
    info: Mapping[str, Any], run_dir: str | None = None, engine: str = "dask"
) -> RunTarget:
    """Build a :class:`RunTarget` from the JSON object of a run's ``info.json``.

    A dashboard listening on every interface (``0.0.0.0``) is reached through the
    node's host name; one on the node's loopback (the default, ``127.0.0.1``) keeps
    that address, which the plan reaches by ssh to the node itself; otherwise through
    the address it advertises, which is the one the scheduler chose and listens on.
    """
    node = str(info.get("host") or "")
    dashboard: Endpoint | None = None
    if info.get("dashboard_address"):
        dashboard = parse_endpoint(str(info["dashboard_address"]), default_scheme="http")
        if _is_wildcard(dashboard.host):
            if not node:
                raise UserError("info.json: the dashboard listens on every interface but no host")
            dashboard = replace(dashboard, host=node)
        if engine == "dask" and (not dashboard.path or dashboard.path == "/"):
            dashboard = replace(dashboard, path="/status")
    scheduler: Endpoint | None = None
    if info.get("scheduler_address"):
        scheduler = parse_endpoint(str(info["scheduler_address"]))
        if _is_wildcard(scheduler.host) and node:
            scheduler = replace(scheduler, host=node)
    return RunTarget(
        dashboard=dashboard, scheduler=scheduler, node=node, run_dir=run_dir, engine=engine
    )


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
    engine = "dask"
    try:
        head = RunDir.open(run_dir).read_json("scheduler.json")
    except (FileNotFoundError, ValueError):
        head = None
    if isinstance(head, dict) and head.get("type") == "ray":
        engine = "ray"
    return target_from_info(info, run_dir=run_dir, engine=engine)


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
    extra = record.extra
    if extra.get("in_process"):
        # A one-node graph computed in the job's own process starts no scheduler:
        # "has not started" would have the user wait for nothing.
        raise UserError(
            f"run {reference!r} computes in its job's own process "
            f"({extra.get('placement') or 'one node'}): it has no scheduler or dashboard "
            "to tunnel to; follow it with `jobstrap status` and `jobstrap logs`"
        )
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
    reference: str, via: Sequence[str], *, timeout: float = 60.0, **ssh_settings: Any
) -> RunTarget:
    """Look a run up on the login node over ssh.

    ``ssh_settings`` are :func:`remote_target_argv`'s keywords (``remote_jobstrap``,
    ``ssh``, ``ssh_options``), forwarded as they are.

    Raises
    ------
    UserError
        ssh failed, timed out, or the login node did not know the run (its words).
    """
    argv = remote_target_argv(reference, via, **ssh_settings)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise UserError(
            f"asking {via[-1]} for {reference!r} timed out after {timeout:.0f} s"
        ) from None
    except OSError as error:
        raise UserError(f"cannot run {argv[0]!r}: {error.strerror}") from None
    if done.returncode != 0:
        words = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise UserError(f"{via[-1]} does not know {reference!r}: {words}")
    try:
        return RunTarget.from_json(json.loads(done.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError) as error:
        raise UserError(f"{via[-1]} answered something unexpected: {error}") from None
