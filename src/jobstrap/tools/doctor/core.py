"""``jobstrap doctor``: find what is wrong with a site before workers fail to arrive.

When Dask workers never show up, the cause (a wrong interface, a wrong ``python``, a
firewall, a version mismatch, a run directory the nodes cannot see) hides in a job
log. The doctor looks for each of them on purpose and says how to fix what it finds.

It runs in two phases:

1. on the login node: the batch commands, the profile, this Python and its Dask,
   the address a scheduler here would listen on, the partition's walltime limit and
   the run directory;
2. through a tiny probe job (:mod:`jobstrap.bootstrap.probe`) submitted with the profile's own
   settings, so it lands where workers would: the node's interfaces and the address
   a worker would choose, TCP both ways between that address and the scheduler-side
   address here, the versions there, a file written on each side and read on the
   other, and the CPU and memory limits the job really got.

Every result is a :class:`Check` (OK, WARN or FAIL, with a fix for everything that
is not OK). The evaluation functions are pure (facts in, checks out) so the rules
are unit-tested with recorded facts; :func:`run_doctor` gathers the facts. Every
wait has a deadline, and the probe job is cancelled on the way out whatever
happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobstrap.bootstrap.probe import (
    CLIENT_TOKEN_FILE,
    MAX_REPORT_BYTES,
    NODE_TOKEN_FILE,
    PROBE_FILE,
    TOKEN_ENV,
    package_versions,
    python_facts,
)
from jobstrap.config.units import format_memory, format_walltime_slurm, parse_walltime
from jobstrap.errors import BatchCommandError, ConfigError, NetworkError, UserError
from jobstrap.jobs.spec import JobSpec, Role, new_tag, scheduler_job
from jobstrap.states import JobState

if TYPE_CHECKING:
    from jobstrap.batchctl.control import BatchControl
    from jobstrap.config.profile import Profile
    from jobstrap.systems import JobRecord

__all__ = [
    "Check",
    "DoctorReport",
    "Partition",
    "ProbeListener",
    "Status",
    "batch_commands",
    "check_batch_commands",
    "check_partition",
    "diagnose_job_failure",
    "diagnose_pending",
    "evaluate_probe",
    "format_report",
    "parse_pbs_queue",
    "parse_slurm_partitions",
    "partition_argv",
    "probe_job",
    "run_doctor",
]

#: The probe's own walltime: it needs seconds, but a queue with a short minimum
#: walltime must still accept it.
PROBE_WALLTIME = 300

_FIX_RUN_ROOT = (
    "set run_root (or $JOBSTRAP_RUN_ROOT) to a directory on a file system that the login "
    "and compute nodes share, e.g. under $HOME or the site's project/scratch file system"
)
_FIX_PYTHON = (
    "set `python:` in the profile to the interpreter path that exists on the compute "
    "nodes (check with `srun -N1 which python3`), or make it available with "
    "`prologue:` (e.g. `module load python` and `source ~/venv/bin/activate`)"
)


class Status(str, Enum):
    """The verdict of one check."""

    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Check:
    """One line of the doctor's table.

    Attributes
    ----------
    name
        Short name (``node python``, ``shared file system``).
    status
        OK, WARN or FAIL.
    detail
        What was found.
    fix
        What to do about it (empty for OK).
    """

    name: str
    status: Status
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "status": str(self.status),
            "detail": self.detail,
            "fix": self.fix,
        }


def ok(name: str, detail: str) -> Check:
    return Check(name, Status.OK, detail)


def warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, Status.WARN, detail, fix)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, Status.FAIL, detail, fix)


@dataclass
class DoctorReport:
    """Everything the doctor found."""

    checks: list[Check] = field(default_factory=list)
    run_dir: str | None = None
    job_id: str | None = None
    node: str | None = None

    def add(self, *checks: Check) -> None:
        self.checks.extend(checks)

    @property
    def failed(self) -> bool:
        """Whether any check failed."""
        return any(c.status is Status.FAIL for c in self.checks)

    @property
    def exit_code(self) -> int:
        """1 when something is wrong, else 0 (warnings do not fail)."""
        return 1 if self.failed else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": not self.failed,
            "run_dir": self.run_dir,
            "job_id": self.job_id,
            "node": self.node,
            "checks": [c.to_json() for c in self.checks],
        }


def format_report(report: DoctorReport) -> str:
    """The table of checks, then one fix per line for everything not OK."""
    width = max([len(c.name) for c in report.checks] + [5])
    lines = [f"{'CHECK':<{width}}  STATUS  DETAIL"]
    for check in report.checks:
        lines.append(f"{check.name:<{width}}  {check.status!s:<6}  {check.detail}")
    fixes = [c for c in report.checks if c.status is not Status.OK and c.fix]
    if fixes:
        lines += ["", "How to fix:"]
        lines += [f"  {c.name} ({c.status}): {c.fix}" for c in fixes]
    failed = sum(c.status is Status.FAIL for c in report.checks)
    warned = sum(c.status is Status.WARN for c in report.checks)
    verdict = "something is wrong" if failed else "all good"
    lines += ["", f"{verdict}: {failed} failed, {warned} warnings, {len(report.checks)} checks"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------- login node


def batch_commands(system: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, optional) commands of a batch system."""
    return {
        "slurm": (("sbatch", "squeue", "scancel", "scontrol"), ("sacct", "sinfo")),
        "pbs": (("qsub", "qstat", "qdel"), ()),
    }.get(system, ((), ()))


def check_batch_commands(system: str, which: Callable[[str], str | None] = shutil.which) -> Check:
    """Are the batch system's commands on PATH?"""
    required, optional = batch_commands(system)
    if not required:
        return ok("batch commands", f"{system}: none needed")
    missing = [c for c in required if which(c) is None]
    if missing:
        return fail(
            "batch commands",
            f"not on PATH: {', '.join(missing)}",
            f"run the doctor on a {system} login node, or load the module that provides "
            f"{missing[0]} (e.g. `module load {system}`)",
        )
    found = which(required[0]) or ""
    missing_optional = [c for c in optional if which(c) is None]
    if missing_optional:
        return warn(
            "batch commands",
            f"{', '.join(required)} found; {', '.join(missing_optional)} not on PATH",
            f"without {missing_optional[0]} jobstrap cannot read the final state of ended jobs",
        )
    return ok("batch commands", f"{', '.join(required + optional)} in {os.path.dirname(found)}")


def check_client_python(versions: Mapping[str, str | None]) -> Check:
    """This Python and the packages a client needs."""
    facts = python_facts()
    missing = [p for p in ("dask", "distributed") if not versions.get(p)]
    detail = f"{facts['executable']} {facts['version']}"
    if missing:
        return fail(
            "client python",
            f"{detail}; {', '.join(missing)} not installed",
            "pip install dask distributed (the same versions as on the compute nodes)",
        )
    return ok(
        "client python",
        f"{detail}, dask {versions['dask']}, distributed {versions['distributed']}",
    )


def check_profile_python(python: str) -> Check:
    """Is the profile's ``python`` a path this host knows? (The probe checks the nodes.)"""
    if not os.path.isabs(python):
        return ok("profile python", f"{python} (found through PATH on the nodes)")
    if os.access(python, os.X_OK):
        return ok("profile python", f"{python} exists here")
    return warn(
        "profile python",
        f"{python} does not exist on this host",
        "fine if it exists only on the compute nodes; the probe job checks there",
    )


def check_scheduler_address(preference: Sequence[str]) -> tuple[Check, str | None]:
    """The address a scheduler on this host would listen on (``scheduler_interface``)."""
    from jobstrap.net.network import choose_interface

    wanted = ",".join(preference)
    try:
        iface = choose_interface(list(preference))
    except NetworkError as error:
        return (
            fail(
                "scheduler address",
                str(error),
                "set scheduler_interface to an interface this login node has (or auto)",
            ),
            None,
        )
    return ok("scheduler address", f"{iface.address} on {iface.name} ({wanted})"), iface.address


@dataclass(frozen=True)
class Partition:
    """What the doctor needs of one partition (Slurm) or queue (PBS)."""

    name: str
    max_time: int | None  #: seconds; None: unlimited
    default: bool = False
    state: str = "UP"
    total_nodes: int | None = None


def _parse_limit(text: str) -> int | None:
    text = text.strip()
    if text.upper() in ("UNLIMITED", "INFINITE", "NONE", "") or text.startswith("("):
        return None
    try:
        return parse_walltime(text, "MaxTime")
    except ConfigError:
        return None


def parse_slurm_partitions(text: str) -> dict[str, Partition]:
    """Parse ``scontrol show partition --oneliner`` (or the multi-line form)."""
    partitions: dict[str, Partition] = {}
    for block in re.split(r"\n\s*\n|\n(?=PartitionName=)", text.strip()):
        values = dict(re.findall(r"(\w+)=(\S*)", block))
        name = values.get("PartitionName")
        if not name:
            continue
        nodes = values.get("TotalNodes", "")
        partitions[name] = Partition(
            name=name,
            max_time=_parse_limit(values.get("MaxTime", "UNLIMITED")),
            default=values.get("Default", "NO").upper() == "YES",
            state=values.get("State", "UP").upper(),
            total_nodes=int(nodes) if nodes.isdigit() else None,
        )
    return partitions


def parse_sinfo_partitions(text: str) -> dict[str, Partition]:
    """Parse ``sinfo -h -o "%P %l %a %D"`` (the fallback when scontrol is missing)."""
    partitions: dict[str, Partition] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        name = parts[0].rstrip("*")
        partitions[name] = Partition(
            name=name,
            max_time=_parse_limit(parts[1]),
            default=parts[0].endswith("*"),
            state=parts[2].upper() if len(parts) > 2 else "UP",
            total_nodes=int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else None,
        )
    return partitions


def parse_pbs_queue(text: str) -> dict[str, Partition]:
    """Parse ``qstat -Qf QUEUE``: ``resources_max.walltime``, ``enabled``, ``started``."""
    partitions: dict[str, Partition] = {}
    name = ""
    values: dict[str, str] = {}

    def flush() -> None:
        if name:
            running = (
                values.get("enabled", "True") == "True" and values.get("started", "True") == "True"
            )
            partitions[name] = Partition(
                name=name,
                max_time=_parse_limit(values.get("resources_max.walltime", "")),
                state="UP" if running else "DOWN",
            )

    for line in text.splitlines():
        match = re.match(r"^Queue:\s*(\S+)", line)
        if match:
            flush()
            name, values = match.group(1), {}
            continue
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    flush()
    return partitions


def partition_argv(system: str, queue: str | None) -> list[list[str]]:
    """Commands that describe the partitions, best first (the next is the fallback)."""
    if system == "slurm":
        return [
            ["scontrol", "show", "partition", "--oneliner"],
            ["sinfo", "-h", "-o", "%P %l %a %D"],
        ]
    if system == "pbs" and queue:
        return [["qstat", "-Qf", queue]]
    return []


def parse_partitions(system: str, argv: Sequence[str], text: str) -> dict[str, Partition]:
    """Parse the output of one of :func:`partition_argv`'s commands."""
    if argv[0] == "scontrol":
        return parse_slurm_partitions(text)
    if argv[0] == "sinfo":
        return parse_sinfo_partitions(text)
    return parse_pbs_queue(text)


def check_partition(
    queue: str | None, walltime: int, nodes: int, partitions: Mapping[str, Partition]
) -> Check:
    """Does the profile's walltime (and node count) fit the partition?"""
    word = "partition (queue)"
    if queue is None:
        default = next((p for p in partitions.values() if p.default), None)
        if default is None:
            return ok("partition", "site default (its limits were not checked)")
        partition = default
    elif queue not in partitions:
        known = ", ".join(sorted(partitions)) or "none listed"
        return fail(
            "partition",
            f"{queue!r} does not exist (known: {known})",
            f"set `queue:` to one of: {known}",
        )
    else:
        partition = partitions[queue]
    asked = format_walltime_slurm(walltime)
    if partition.state not in ("UP", "OPEN"):
        return fail(
            "partition",
            f"{partition.name} is {partition.state}: jobs will not start",
            f"use another {word} (`queue:`), or ask the admins when {partition.name} is back",
        )
    if partition.total_nodes is not None and nodes > partition.total_nodes:
        return fail(
            "partition",
            f"{nodes} nodes per job but {partition.name} has {partition.total_nodes}",
            f"set `nodes:` to at most {partition.total_nodes}",
        )
    if partition.max_time is None:
        return ok("partition", f"{partition.name}: walltime {asked}, no limit")
    limit = format_walltime_slurm(partition.max_time)
    if walltime > partition.max_time:
        return fail(
            "partition",
            f"walltime {asked} exceeds {partition.name}'s limit {limit}",
            f"set `walltime:` to at most {limit}, or use a {word} with a longer limit",
        )
    return ok("partition", f"{partition.name}: walltime {asked} within its limit {limit}")


# --------------------------------------------------------------------------- probe


def probe_job(
    profile: Profile,
    run_dir: str,
    tag: str,
    *,
    connect: str,
    token: str,
    walltime: int = PROBE_WALLTIME,
) -> JobSpec:
    """The probe job: one task, the profile's per-node resources, a short walltime.

    It asks for what a worker job asks for per node (cores, memory, queue, account,
    prologue, python), so it lands where workers would and its cgroup limits are
    the ones workers would get.
    """
    command = [
        profile.python, "-m", "jobstrap.bootstrap.probe", run_dir,
        "--connect", connect,
        "--interface", ",".join(profile.interface),
        "--cpus", str(profile.cores),
    ]  # fmt: skip
    if profile.memory is not None:
        command += ["--memory", str(profile.memory)]
    base = scheduler_job(profile, run_dir, tag, name=f"{profile.job_name}-doctor")
    return replace(
        base,
        role=Role.PROBE,
        command=tuple(command),
        nodes=1,
        tasks_per_node=1,
        cpus_per_task=profile.cores,
        memory=profile.memory,
        walltime=min(profile.walltime, walltime),
        launcher="none",
        # The token goes into the job's environment, never onto its command line,
        # where any user of the node could read it.
        env=(*base.env, (TOKEN_ENV, token)),
    )


class ProbeListener:
    """The doctor's end of the probe: a TCP port on the scheduler-side address.

    Accepts one JSON line ``{"token": ..., "report": {...}}`` carrying the right
    token and answers ``ok``; anything else gets ``bad token`` and is ignored.
    """

    def __init__(self, address: str, token: str, *, io_timeout: float = 10.0) -> None:
        self.token = token
        self.io_timeout = io_timeout
        self.report: dict[str, Any] | None = None
        self.peer: str | None = None
        self.received = threading.Event()
        self.started = time.monotonic()
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.bind((address, 0))
        self._sock.listen(8)
        self.address = address
        self.port = int(self._sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, name="doctor-listener", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        """``host:port`` for the probe's ``--connect``."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"

    def _serve(self) -> None:
        while not self.received.is_set():
            try:
                conn, peer = self._sock.accept()
            except OSError:
                return  # closed
            with conn:
                conn.settimeout(self.io_timeout)
                try:
                    line = conn.makefile("rb").readline(MAX_REPORT_BYTES)
                    message = json.loads(line)
                    good = isinstance(message, dict) and secrets.compare_digest(
                        str(message.get("token", "")), self.token
                    )
                    if not good or not isinstance(message.get("report"), dict):
                        conn.sendall(b"bad token\n")
                        continue
                    conn.sendall(b"ok\n")
                except (OSError, ValueError):
                    continue
            self.report = message["report"]
            self.peer = str(peer[0])
            self.received.set()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


def call_back(address: str, port: int, token: str, timeout: float = 10.0) -> str | None:
    """Connect to the probe's listener like a scheduler to a worker; None when it worked."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(token.encode() + b"\n")
            answer = sock.makefile("rb").readline(64).decode(errors="replace").strip()
    except OSError as error:
        return f"{type(error).__name__}: {error.strerror or error}"
    return None if answer == "ok" else f"the probe answered {answer!r}"


def _version_key(version: str | None) -> tuple[str, ...]:
    return tuple((version or "").split("."))


def evaluate_probe(
    report: Mapping[str, Any],
    *,
    client_versions: Mapping[str, str | None],
    client_python: str,
    client_token: str,
    node_token_here: str | None,
    callback_error: str | None,
    scheduler_address: str,
    cores: int,
    memory: int | None,
    interfaces_requested: Sequence[str],
    via_network: bool,
) -> list[Check]:
    """Turn the probe's facts into checks (pure; every rule is a unit test).

    Parameters
    ----------
    report
        The probe's report (over TCP, else ``probe.json``).
    client_versions, client_python
        This side's package versions and Python version.
    client_token
        What the doctor wrote into ``doctor-client.token``.
    node_token_here
        What this side reads from ``doctor-node.token`` (None: not there).
    callback_error
        None when the doctor reached the probe's listener, else why not (also None
        when there was nothing to call).
    scheduler_address
        The doctor's listening address (``host:port``).
    cores, memory
        What the profile asks for per node.
    interfaces_requested
        The profile's ``interface``.
    via_network
        Whether the report arrived over TCP.
    """
    node = str(report.get("host") or "the node")
    checks: list[Check] = []

    # Interfaces and the worker's address.
    usable = [
        f"{i['name']} {i['ipv4'][0]}"
        for i in report.get("interfaces", [])
        if i.get("ipv4") and i.get("is_up") and i.get("kind") != "loopback"
    ]
    names = ", ".join(usable)
    chosen = report.get("chosen") or {}
    requested = ",".join(interfaces_requested)
    if chosen.get("ok"):
        checks.append(
            ok("worker address", f"{chosen['address']} on {chosen['interface']} ({requested})")
        )
    else:
        checks.append(
            fail(
                "worker address",
                str(chosen.get("error") or f"no usable interface for {requested}"),
                f"set `interface:` to interfaces {node} has (there: {names or 'none'}) in "
                "order of preference, or `auto`",
            )
        )

    # Reachability, both ways.
    connect = report.get("connect") or {}
    if via_network or connect.get("ok"):
        source = connect.get("source")
        frm = f" from {source}" if source else ""
        checks.append(ok("node -> scheduler", f"{node} reached {scheduler_address}{frm}"))
    else:
        error = connect.get("error") or "no attempt recorded"
        checks.append(
            fail(
                "node -> scheduler",
                f"{node} cannot reach {scheduler_address}: {error}",
                "workers could not reach a scheduler here: set scheduler_interface to an "
                "interface of this login node that the compute nodes can reach, open the "
                "firewall for the ephemeral port range, or run the scheduler in a job "
                "(scheduler: job)",
            )
        )
    listen = report.get("listen") or {}
    if via_network and chosen.get("ok"):
        where = f"{listen.get('address')}:{listen.get('port')}" if listen.get("port") else ""
        if listen.get("error"):
            checks.append(
                fail(
                    "scheduler -> node",
                    str(listen["error"]),
                    "the node cannot listen on the chosen address; set `interface:`",
                )
            )
        elif callback_error is None:
            checks.append(ok("scheduler -> node", f"reached {node} at {where}"))
        else:
            checks.append(
                fail(
                    "scheduler -> node",
                    f"cannot reach {node} at {where}: {callback_error}",
                    "the scheduler could not reach workers at that address: choose an "
                    "`interface:` this login node can route to, or run the scheduler in a "
                    "job (scheduler: job)",
                )
            )

    # Versions.
    checks.append(_check_versions(report, node, client_versions, client_python))

    # Shared file system, both ways.
    checks.append(_check_shared_fs(report, node, client_token, node_token_here))

    # Resources the job really got.
    checks.extend(_check_resources(report, node, cores, memory))
    return checks


def _check_versions(
    report: Mapping[str, Any],
    node: str,
    client_versions: Mapping[str, str | None],
    client_python: str,
) -> Check:
    python = (report.get("python") or {}).get("version", "")
    packages = report.get("packages") or {}
    problems: list[str] = []
    warnings: list[str] = []
    if _version_key(python)[:2] != _version_key(client_python)[:2]:
        problems.append(f"python {python} (here {client_python})")
    elif python != client_python:
        warnings.append(f"python {python} (here {client_python})")
    for name in ("dask", "distributed"):
        if packages.get(name) != client_versions.get(name):
            problems.append(f"{name} {packages.get(name)} (here {client_versions.get(name)})")
    for name in ("jobstrap", "cloudpickle", "msgpack", "toolz", "tornado"):
        theirs, ours = packages.get(name), client_versions.get(name)
        if ours and theirs != ours:
            warnings.append(f"{name} {theirs} (here {ours})")
    executable = (report.get("python") or {}).get("executable", "")
    summary = (
        f"{executable} {python}, dask {packages.get('dask')}, "
        f"distributed {packages.get('distributed')}"
    )
    fix = (
        "install the same versions on both sides (pip install dask==X distributed==X), "
        "ideally one environment on the shared file system used by both"
    )
    if problems:
        return fail("versions", f"{node} differs: {'; '.join(problems)}", fix)
    if warnings:
        return warn("versions", f"{node} differs: {'; '.join(warnings)}", fix)
    return ok("versions", f"{node} matches: {summary}")


def _check_shared_fs(
    report: Mapping[str, Any], node: str, client_token: str, node_token_here: str | None
) -> Check:
    facts = report.get("shared_fs") or {}
    run_dir = facts.get("run_dir", "the run directory")
    if not facts.get("run_dir_exists"):
        return fail(
            "shared file system",
            f"the run directory {run_dir} does not exist on {node}",
            _FIX_RUN_ROOT,
        )
    if facts.get("client_token") != client_token:
        seen = facts.get("client_error") or "a different file"
        return fail(
            "shared file system",
            f"{node} cannot read what this host wrote in {run_dir} ({seen})",
            _FIX_RUN_ROOT,
        )
    if facts.get("node_error"):
        return fail(
            "shared file system",
            f"{node} cannot write into {run_dir}: {facts['node_error']}",
            "make run_root writable by you on the compute nodes; " + _FIX_RUN_ROOT,
        )
    if node_token_here is None or node_token_here != facts.get("node_token"):
        return fail(
            "shared file system",
            f"what {node} wrote in {run_dir} is not visible here",
            _FIX_RUN_ROOT,
        )
    return ok("shared file system", f"{run_dir} is shared with {node} (read and written both ways)")


def _check_resources(
    report: Mapping[str, Any], node: str, cores: int, memory: int | None
) -> list[Check]:
    cgroup = report.get("cgroup") or {}
    cpus = report.get("cpus") or {}
    checks: list[Check] = []
    affinity = int(cpus.get("affinity") or 0)
    quota = cgroup.get("cpu_quota")
    usable = min([affinity] + ([quota] if quota else []))
    shown = f"{usable:g}" if isinstance(usable, float) else str(usable)
    if usable and usable < cores:
        checks.append(
            warn(
                "cpu",
                f"the job may use {shown} CPUs on {node} but asked for {cores}",
                f"workers would run {cores} threads on {shown} CPUs: lower `cores:`, or check "
                "the site's rules for --cpus-per-task",
            )
        )
    else:
        checks.append(ok("cpu", f"{shown} CPUs usable on {node} (asked for {cores})"))
    limit = cgroup.get("memory_limit")
    if memory is None:
        checks.append(ok("memory", f"no memory requested; limit {_bytes(limit)}"))
    elif limit is None:
        checks.append(
            warn(
                "memory",
                f"no memory limit enforced on {node} (asked for {format_memory(memory)})",
                "nothing stops a worker that outgrows its memory_limit except Dask itself "
                "and the kernel's OOM killer; fine if the site does not confine jobs",
            )
        )
    elif limit < memory * 0.95:
        checks.append(
            fail(
                "memory",
                f"the job is limited to {format_memory(limit)} on {node} but asked for "
                f"{format_memory(memory)}",
                "workers would be killed before reaching their memory_limit: lower "
                "`memory:` to what the site grants, or check its memory rules",
            )
        )
    else:
        checks.append(
            ok(
                "memory",
                f"limit {format_memory(limit)} on {node} (asked for {format_memory(memory)})",
            )
        )
    return checks


def _bytes(value: int | None) -> str:
    return "none" if value is None else format_memory(value)


def diagnose_job_failure(
    record: JobRecord | None, stderr_tail: str, python: str, *, log_found: bool
) -> Check:
    """Why did the probe job end without reporting? Read its state and stderr."""
    node = (record.nodes if record else "") or "the node"
    state = record.state if record else JobState.UNKNOWN
    code = record.exit_code if record else None
    text = stderr_tail.lower()
    where = f"job {record.job_id}" if record else "the probe job"
    reason = f" ({record.reason})" if record and record.reason not in ("", "None") else ""
    exe = os.path.basename(python)
    if (
        code == 127
        or "command not found" in text
        or ("no such file or directory" in text and exe.lower() in text)
    ):
        return fail("node python", f"python not found on {node}: {python}", _FIX_PYTHON)
    if "no module named" in text and "jobstrap" in text:
        return fail(
            "node python",
            f"jobstrap is not installed for {python} on {node}",
            f"install jobstrap into that environment ({python} -m pip install jobstrap), or "
            "point `python:` at an environment on the shared file system that has it",
        )
    if "no module named" in text:
        missing = re.search(r"no module named '?([\w.]+)", text)
        name = missing.group(1) if missing else "a module"
        return fail(
            "node python",
            f"{python} on {node} lacks {name}",
            f"{python} -m pip install {name} (the same version as here)",
        )
    if not log_found:
        return fail(
            "probe job",
            f"{where} on {node} ended {state}{reason} without writing its log here: the "
            "run directory is probably not on a file system shared with the nodes",
            _FIX_RUN_ROOT,
        )
    tail = stderr_tail.strip().splitlines()[-1] if stderr_tail.strip() else "no stderr"
    extra = {
        JobState.OUT_OF_MEMORY: "raise `memory:`",
        JobState.TIMEOUT: "the queue killed it at its walltime; raise `walltime:`",
        JobState.NODE_FAIL: "the node failed; run the doctor again",
        JobState.CANCELLED: "it was cancelled by someone else, or by the site's policy",
    }.get(state, "read the job's stderr in the run directory's logs/")
    return fail("probe job", f"{where} on {node} ended {state} (exit {code}): {tail}", extra)


def diagnose_pending(record: JobRecord | None, waited: float) -> Check:
    """The probe job never started within the deadline: say why, in the queue's words.

    A FAIL, because the nodes were not checked; the fix says whether a setting or
    just a busy queue is to blame.
    """
    reason = record.reason if record else ""
    where = f"job {record.job_id}" if record else "the probe job"
    detail = f"{where} still {record.state if record else 'PENDING'} after {waited:.0f} s"
    if reason:
        detail += f" (reason: {reason})"
    lowered = reason.lower()
    if "time" in lowered and "limit" in lowered:
        fix = "the walltime exceeds a partition or QOS limit: lower `walltime:`"
    elif lowered.startswith(("assoc", "qos")) or "account" in lowered:
        fix = "an account or QOS limit holds it: check `account:` and `qos:` with the site"
    elif "reqnodenotavail" in lowered or "partitiondown" in lowered or "nodedown" in lowered:
        fix = "the partition's nodes are unavailable: use another `queue:`"
    else:
        fix = (
            "the queue is busy (nothing wrong with the profile as far as seen): run the "
            "doctor again with a longer --timeout, or a queue meant for short tests"
        )
    # Not a verdict on the site, but nothing on the nodes was checked: say so loudly.
    return fail("probe job", detail, fix)


# ------------------------------------------------------------------------- driver


def _read_tail(path: Path, lines: int = 20) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return None


def _read_text_retrying(path: Path, seconds: float) -> str | None:
    """Read a small file another node wrote; NFS may show it a moment late."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return path.read_text().strip()
        except OSError:
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.5)


def _save_record(
    profile_name: str, profile: Profile, run_dir: str, job_ids: list[str], tag: str
) -> None:
    """Leave a registry record so `jobstrap status`/`cancel` know the probe job."""
    from jobstrap.store import registry

    run_id = os.path.basename(run_dir)
    try:
        # A second probe of the same run adds its job to the record.
        earlier = registry.load(run_id)
        job_ids, tags = [*earlier.job_ids, *job_ids], [*earlier.tags, tag]
    except UserError:
        tags = [tag]
    record = registry.RunRecord(
        run_id=run_id,
        kind="probe",
        system=profile.system,
        run_dir=run_dir,
        job_ids=job_ids,
        tags=tags,
        profile={"name": profile_name, "resolved": profile.to_dict()},
    )
    registry.save(record)


def run_doctor(
    profile_name: str | None = None,
    overrides: Mapping[str, object] | None = None,
    *,
    timeout: float = 300.0,
    report_timeout: float = 90.0,
    keep: bool = False,
    probe: bool = True,
    echo: Callable[[str], None] = lambda line: None,
    batchctl: BatchControl | None = None,
) -> DoctorReport:
    """Diagnose a site: login-node checks, then a probe job on a compute node.

    Parameters
    ----------
    profile_name, overrides
        The profile to check (as for :func:`jobstrap.config.profile.load_profile`).
    timeout
        Seconds to wait for the probe job to start.
    report_timeout
        Seconds to wait for the probe's report once the job runs.
    keep
        Keep the probe's run directory even when everything passed.
    probe
        Submit the probe job (False: login-node checks only).
    echo
        Progress lines (submitted, waiting, ...).
    batchctl
        The batchctl to submit through (default: the process's for the system).

    Returns
    -------
    DoctorReport
    """
    from jobstrap.config.profile import load_profile

    report = DoctorReport()
    name = profile_name or os.environ.get("JOBSTRAP_PROFILE") or "default"
    try:
        profile = load_profile(profile_name, overrides)
    except ConfigError as error:
        report.add(
            fail(
                "profile",
                str(error),
                "fix the setting named in the message "
                "(`jobstrap config show --resolved` lists every value and its source)",
            )
        )
        return report
    report.add(
        ok(
            "profile",
            f"{name}: system {profile.system}, queue {profile.queue or 'default'}, "
            f"{profile.cores} cores, memory {_bytes(profile.memory)}, "
            f"walltime {format_walltime_slurm(profile.walltime)}",
        )
    )
    commands = check_batch_commands(profile.system)
    report.add(commands)
    versions = package_versions()
    report.add(check_client_python(versions))
    report.add(check_profile_python(profile.python))
    address_check, address = check_scheduler_address(profile.scheduler_interface)
    report.add(address_check)

    from jobstrap.batchctl.control import BatchControl

    gw = batchctl or BatchControl.for_system(profile.system)
    if commands.status is not Status.FAIL:
        report.add(_partition_check(gw, profile))

    from jobstrap.store.rundir import RunDir, default_run_root, new_run_id

    root = default_run_root(profile.run_root)
    try:
        run = RunDir.create(root, new_run_id("doctor"))
    except OSError as error:
        report.add(
            fail(
                "run directory", f"cannot create a run directory in {root}: {error}", _FIX_RUN_ROOT
            )
        )
        return report
    report.add(ok("run directory", f"created {run.path}"))
    if not probe or commands.status is Status.FAIL or address is None:
        # The directory only proved that one can be made; nothing is in it.
        shutil.rmtree(run.path, ignore_errors=True)
        return report
    report.run_dir = str(run.path)

    prober = _Prober(gw, profile, name, run.path, address, versions, echo, timeout,
                     report_timeout)  # fmt: skip
    outcome = prober.run()
    report.job_id, report.node = outcome.job_id, outcome.node
    if outcome.log_missing and profile.system == "slurm":
        # Slurm fails a job whose log file it cannot open, before anything runs. A
        # second probe without log files runs anyway and tells what the node sees.
        echo("the probe job could not write its log; probing again without log files")
        second = prober.run(detached=True)
        if second.reported:
            first = outcome.checks[0]
            outcome.checks = [
                fail("probe job", first.detail, first.fix),
                *(
                    replace(c, name="probe job (no logs)") if c.name == "probe job" else c
                    for c in second.checks
                ),
            ]
    report.add(*outcome.checks)
    if not report.failed and not keep:
        shutil.rmtree(run.path, ignore_errors=True)
        with contextlib.suppress(Exception):
            from jobstrap.store import registry

            registry.remove(run.run_id)
        report.run_dir = None
    return report


def _partition_check(gw: BatchControl, profile: Profile) -> Check:
    argvs = partition_argv(profile.system, profile.queue)
    if not argvs:
        return ok("partition", f"{profile.system}: no partition limits to check")
    last_error = ""
    for argv in argvs:
        try:
            result = gw.run(argv, timeout=30)
        except BatchCommandError as error:
            last_error = str(error)
            continue
        partitions = parse_partitions(profile.system, argv, result.stdout)
        if partitions or profile.queue is None:
            return check_partition(profile.queue, profile.walltime, profile.nodes, partitions)
    return warn(
        "partition",
        f"could not read the partition limits: {last_error or 'no output'}",
        "check `queue:` and `walltime:` against the site's documentation",
    )


def _wait_for_probe(
    gw: BatchControl,
    job_id: str,
    listener: ProbeListener,
    timeout: float,
    report_timeout: float,
    echo: Callable[[str], None],
    poll_interval: float,
) -> JobRecord | None:
    """Wait for the report, the job's end, or a deadline; return the last job record."""
    watcher = gw.watcher
    watcher.configure(poll_interval=min(poll_interval, 2))
    watcher.track([job_id])
    started = time.monotonic()
    running_since: float | None = None
    last_state: JobState | None = None
    record: JobRecord | None = None
    while not listener.received.wait(0.5):
        now = time.monotonic()
        with contextlib.suppress(KeyError):
            record = watcher.record(job_id)
        state = record.state if record else None
        if state is not last_state and state is not None:
            shown = record.reason if record and record.reason not in ("", "None") else ""
            reason = f" ({shown})" if shown else ""
            echo(f"probe job {job_id}: {state}{reason}")
            last_state = state
        if state is JobState.RUNNING and running_since is None:
            running_since = now
        if state is not None and state.is_terminal:
            # The report may still be in flight from a probe that just exited.
            listener.received.wait(2)
            break
        if running_since is None and now - started > timeout:
            break
        if running_since is not None and now - running_since > report_timeout:
            break
    if listener.received.is_set():
        with contextlib.suppress(KeyError):
            record = watcher.record(job_id)
        return record
    if record is not None and record.state.is_terminal:
        # sacct may need a moment for the exit code; one direct look is cheap.
        with contextlib.suppress(BatchCommandError):
            record = gw.status([job_id]).get(job_id, record)
    return record


@dataclass
class _Outcome:
    checks: list[Check]
    job_id: str | None = None
    node: str | None = None
    reported: bool = False  #: the probe's facts arrived (over TCP or probe.json)
    log_missing: bool = False  #: the job ended without a report and without its log


@dataclass
class _Prober:
    """Submits one probe job, waits for it, and turns what came back into checks."""

    gw: BatchControl
    profile: Profile
    profile_name: str
    run_dir: Path
    address: str
    versions: Mapping[str, str | None]
    echo: Callable[[str], None]
    timeout: float
    report_timeout: float

    def run(self, *, detached: bool = False) -> _Outcome:
        """One probe; ``detached`` sends its output nowhere (for unshared run dirs)."""
        from jobstrap.store.rundir import atomic_write_text

        token = secrets.token_hex(16)
        client_token = secrets.token_hex(16)
        atomic_write_text(self.run_dir / CLIENT_TOKEN_FILE, client_token + "\n")
        listener = ProbeListener(self.address, token)
        job_ids: list[str] = []
        try:
            spec = probe_job(
                self.profile, str(self.run_dir), new_tag(), connect=listener.endpoint, token=token
            )
            if detached:
                spec = replace(
                    spec,
                    extra_directives=(*spec.extra_directives, "--output=/dev/null",
                                      "--error=/dev/null"),
                )  # fmt: skip
            try:
                submission = self.gw.submit(spec, None, template=self.profile.template)
            except BatchCommandError as error:
                fix = "the batch system's words above say which setting to change"
                return _Outcome([fail("probe job", f"submission rejected: {error}", fix)])
            job_ids = submission.job_ids
            job_id = job_ids[0]
            with contextlib.suppress(Exception):  # the registry is a convenience here
                _save_record(self.profile_name, self.profile, str(self.run_dir), job_ids,
                             submission.tag)  # fmt: skip
            self.echo(
                f"submitted probe job {job_id}; waiting up to {self.timeout:.0f} s for it to start"
            )
            record = _wait_for_probe(self.gw, job_id, listener, self.timeout,
                                     self.report_timeout, self.echo,
                                     self.profile.poll_interval)  # fmt: skip
            outcome = self._evaluate(listener, record, token, client_token, job_id)
            outcome.job_id = job_id
            outcome.node = (record.nodes if record else None) or (listener.report or {}).get("host")
            return outcome
        finally:
            listener.close()
            _cancel_unfinished(self.gw, job_ids)

    def _evaluate(
        self,
        listener: ProbeListener,
        record: JobRecord | None,
        token: str,
        client_token: str,
        job_id: str,
    ) -> _Outcome:
        facts = listener.report
        via_network = facts is not None
        callback_error: str | None = None
        if facts is not None:
            # The report went out before the probe knew its connection worked; what the
            # listener saw is the proof, and the peer is the node's source address.
            facts = {**facts, "connect": {"ok": True, "source": listener.peer}}
            listen = facts.get("listen") or {}
            if listen.get("port"):
                callback_error = call_back(str(listen["address"]), int(listen["port"]), token)
        else:
            with contextlib.suppress(OSError, ValueError):
                loaded = json.loads((self.run_dir / PROBE_FILE).read_text())
                facts = loaded if isinstance(loaded, dict) else None
        if facts is None:
            return self._no_report(record, job_id, listener)
        node = str(facts.get("host") or "the node")
        checks = [ok("probe job", f"job {job_id} ran on {node}")]
        node_token = _read_text_retrying(self.run_dir / NODE_TOKEN_FILE, 10 if via_network else 0)
        checks += evaluate_probe(
            facts,
            client_versions=self.versions,
            client_python=python_facts()["version"],
            client_token=client_token,
            node_token_here=node_token,
            callback_error=callback_error,
            scheduler_address=listener.endpoint,
            cores=self.profile.cores,
            memory=self.profile.memory,
            interfaces_requested=self.profile.interface,
            via_network=via_network,
        )
        return _Outcome(checks, reported=True)

    def _no_report(
        self, record: JobRecord | None, job_id: str, listener: ProbeListener
    ) -> _Outcome:
        if record is None or not record.state.is_terminal:
            if record is not None and record.state is JobState.RUNNING:
                detail = (
                    f"job {job_id} runs on {record.nodes or 'a node'} but sent no report and "
                    "wrote no probe.json"
                )
                fix = (
                    "read its logs in the run directory (kept); the node may hang on the "
                    "network or the file system"
                )
                return _Outcome([fail("probe job", detail, fix)])
            return _Outcome([diagnose_pending(record, time.monotonic() - listener.started)])
        tail = _read_tail(self.run_dir / "logs" / f"{job_id}.err")
        check = diagnose_job_failure(
            record, tail or "", self.profile.python, log_found=tail is not None
        )
        return _Outcome([check], log_missing=tail is None and check.name == "probe job")


def _cancel_unfinished(gw: BatchControl, job_ids: Sequence[str]) -> None:
    """Cancel the probe job unless it is known to have ended; never raises."""
    if not job_ids:
        return
    with contextlib.suppress(Exception):
        records = gw.watcher.records(job_ids)
        if records and all(r.state.is_terminal for r in records.values()):
            gw.watcher.untrack(job_ids)
            return
    with contextlib.suppress(Exception):
        gw.cancel(job_ids)
    with contextlib.suppress(Exception):
        gw.watcher.untrack(job_ids)
