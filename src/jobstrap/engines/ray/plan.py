"""What one Ray node of a run is started with: resources, ports, directory, argv, env.

Pure functions over what the node tells (CPU binding, GPUs, memory limits, free
ports), so each rule is tested without Ray. Two rules matter most on shared nodes:

* **the job's share, never the node's**: Ray sizes a node from the whole machine
  unless told (two nodes on a 24 GiB host each claimed 32 GiB and a 14 GiB object
  store); every node gets ``--num-cpus``, ``--num-gpus``, ``--memory`` and
  ``--object-store-memory`` from the job's binding, GPUs and memory share;
* **nothing fixed that a second run would collide with**: Ray's defaults are fixed
  ports (GCS 6379, dashboard 8265, agent 52365, client server 10001, workers
  10002-19999) and ``/tmp/ray``. Every port here is 0 (the server binds a free
  one itself) or, where Ray refuses 0, a port found free on this node for this
  run; the directory is private to the run (0700) and short enough for Ray's
  Unix sockets.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from jobstrap.bootstrap.gpus import gpu_allocation
from jobstrap.errors import UserError

__all__ = [
    "OBJECT_STORE_FRACTION",
    "OBJECT_STORE_MINIMUM",
    "TEMP_DIR_MAX_LENGTH",
    "NodePorts",
    "NodeResources",
    "TLSPaths",
    "cgroup_memory_limit",
    "free_ports",
    "job_cpus",
    "job_gpus",
    "make_temp_dir",
    "memory_share",
    "node_env",
    "node_resources",
    "ranks_on_node",
    "split_memory",
    "start_argv",
    "temp_dir_candidates",
    "temp_dir_parent",
]

#: The longest ``--temp-dir`` Ray accepts: its socket paths
#: (``<dir>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store``) must fit
#: ``AF_UNIX``'s 107 bytes; measured with Ray 2.60: 43 characters.
TEMP_DIR_MAX_LENGTH = 43
#: Ray's own default share of a node's memory for the object store.
OBJECT_STORE_FRACTION = 0.3
#: Ray refuses a smaller object store (``OBJECT_STORE_MINIMUM_MEMORY_BYTES``).
OBJECT_STORE_MINIMUM = 75 * 2**20
#: What ``mkdtemp`` adds to the parent: ``/ray-`` and 8 random characters.
_TEMP_NAME_LENGTH = len("/ray-") + 8


# ----------------------------------------------------------------------- resources


@dataclass(frozen=True)
class NodeResources:
    """What one Ray node may use: the job's share of its host."""

    num_cpus: int
    num_gpus: int
    memory: int
    object_store_memory: int


def job_cpus(affinity: Sequence[int] | None = None) -> int:
    """CPUs this rank is bound to (the batch system's binding or cgroup cpuset)."""
    if affinity is None:
        try:
            affinity = sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            return os.cpu_count() or 1
    return max(1, len(affinity))


def job_gpus(environ: Mapping[str, str]) -> int:
    """GPUs allocated to this job on this node, from the launcher's environment.

    Read as Dask's GPU workers read them (:func:`jobstrap.bootstrap.gpus.gpu_allocation`):
    ``CUDA_VISIBLE_DEVICES`` wins, else Slurm's ``SLURM_STEP_GPUS`` / ``SLURM_JOB_GPUS``.
    Nothing set: no GPU, never the node's (Ray would count every GPU of the machine).
    """
    return len(gpu_allocation(environ).devices)


def ranks_on_node(environ: Mapping[str, str]) -> int:
    """How many ranks of this launch share this node (their memory is split)."""
    # Slurm: "2(x3),1" lists tasks per node; this node's entry is SLURM_LOCALID's
    # peers, which Slurm also gives directly for the step.
    for name in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE"):
        value = environ.get(name, "")
        head = value.split(",")[0].split("(")[0].strip()
        if head.isdigit() and int(head) > 0:
            return int(head)
    # The local queue starts every rank on this host.
    for name in ("JOBSTRAP_WORLD_SIZE", "PMI_SIZE"):
        value = environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def cgroup_memory_limit(
    proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup"
) -> int | None:
    """This process's cgroup memory limit in bytes (v2 ``memory.max``, v1), or None."""
    try:
        with open(proc_cgroup, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    candidates: list[str] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        path = path.lstrip("/")
        if controllers == "":
            candidates.append(os.path.join(root, path, "memory.max"))
            candidates.append(os.path.join(root, "unified", path, "memory.max"))
        elif "memory" in controllers.split(","):
            candidates.append(os.path.join(root, "memory", path, "memory.limit_in_bytes"))
    limits = []
    for candidate in candidates:
        with contextlib.suppress(OSError, ValueError):
            with open(candidate, encoding="utf-8") as handle:
                text = handle.read().strip()
            # v1 says "no limit" with a huge number, v2 with "max".
            if text != "max" and int(text) < 2**60:
                limits.append(int(text))
    return min(limits) if limits else None


def memory_share(
    *,
    rank_limit: int | None,
    cgroup_limit: int | None,
    environ: Mapping[str, str],
    available: int,
) -> int:
    """Bytes this rank's Ray node may use: the job's memory share, never the node's.

    ``rank_limit`` is the submitter's share per rank (the profile's memory over the
    ranks of a node, ``--memory-limit``). The job's limit on this node (cgroup,
    ``SLURM_MEM_PER_NODE``) split among its ranks caps it; only when nothing says
    what the job may use is the node's available memory split instead.
    """
    ranks = ranks_on_node(environ)
    caps = []
    if rank_limit is not None:
        caps.append(rank_limit)
    if cgroup_limit is not None:
        caps.append(cgroup_limit // ranks)
    slurm = environ.get("SLURM_MEM_PER_NODE", "")
    if slurm.isdigit() and int(slurm) > 0:
        caps.append(int(slurm) * 2**20 // ranks)
    if not caps:
        caps.append(available // ranks)
    return max(1, min(caps))


def split_memory(share: int, shm_free: int | None, ranks: int = 1) -> tuple[int, int]:
    """``(memory, object_store_memory)`` that together fit ``share``.

    The object store takes Ray's usual 30 %, no more than this rank's part of the
    free ``/dev/shm`` (it lives there; Ray would fall back to a slow disk file), and
    at least Ray's minimum.
    """
    store = int(share * OBJECT_STORE_FRACTION)
    if shm_free is not None:
        store = min(store, int(shm_free * 0.9) // max(1, ranks))
    store = max(OBJECT_STORE_MINIMUM, store)
    memory = max(OBJECT_STORE_MINIMUM, share - store)
    return memory, store


def node_resources(
    *,
    rank_limit: int | None,
    environ: Mapping[str, str],
    affinity: Sequence[int] | None = None,
) -> NodeResources:
    """This node's :class:`NodeResources`, read from the node (binding, cgroup, shm)."""
    import psutil

    shm_free: int | None = None
    with contextlib.suppress(OSError):
        stat = os.statvfs("/dev/shm")
        shm_free = stat.f_bavail * stat.f_frsize
    share = memory_share(
        rank_limit=rank_limit,
        cgroup_limit=cgroup_memory_limit(),
        environ=environ,
        available=int(psutil.virtual_memory().available),
    )
    memory, store = split_memory(share, shm_free, ranks_on_node(environ))
    return NodeResources(job_cpus(affinity), job_gpus(environ), memory, store)


# ---------------------------------------------------------------------------- ports


@dataclass(frozen=True)
class NodePorts:
    """The ports of one Ray node; 0 means the server binds a free one itself."""

    #: Ray refuses 0 for these: found free on this node for this run.
    dashboard: int
    dashboard_agent_listen: int
    #: The head's Ray Client server (``ray://``), or None where Ray lacks it.
    client_server: int | None = None


def free_ports(count: int, host: str = "") -> list[int]:
    """``count`` distinct ports free on this node now (held together, then released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


# ------------------------------------------------------------------------ directory


def _usable(path: str) -> bool:
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def temp_dir_parent(environ: Mapping[str, str], usable: Callable[[str], bool] = _usable) -> str:
    """Where the run's node-local directory goes: ``$TMPDIR`` if short enough, else /tmp.

    A job's ``TMPDIR`` is often per job (and cleaned with it) but long; Ray's
    socket paths must stay under ``AF_UNIX``'s limit (:data:`TEMP_DIR_MAX_LENGTH`).
    ``usable`` says whether a directory exists and is writable (the doctor judges
    what a probe job saw on a node with it).
    """
    for parent in temp_dir_candidates(environ):
        if len(parent.rstrip("/")) + _TEMP_NAME_LENGTH > TEMP_DIR_MAX_LENGTH:
            continue
        if usable(parent):
            return parent.rstrip("/") or "/"
    raise UserError(
        "ray: no writable directory short enough for Ray's sockets ($TMPDIR, /tmp); "
        f"set TMPDIR to one of at most {TEMP_DIR_MAX_LENGTH - _TEMP_NAME_LENGTH} characters"
    )


def temp_dir_candidates(environ: Mapping[str, str]) -> list[str]:
    """The parents :func:`temp_dir_parent` considers, in order of preference."""
    return [p for p in (environ.get("TMPDIR", ""), "/tmp", "/dev/shm") if p]


def make_temp_dir(environ: Mapping[str, str]) -> str:
    """A fresh private (0700) directory for one Ray node of this run."""
    path = tempfile.mkdtemp(prefix="ray-", dir=temp_dir_parent(environ))
    os.chmod(path, 0o700)  # mkdtemp makes it 0700; said again because it is the point
    return path


# ---------------------------------------------------------------------- argv, env


@dataclass(frozen=True)
class TLSPaths:
    """A node's TLS files (its own certificate for its address, the run's Ray CA)."""

    ca: str
    cert: str
    key: str


def start_argv(
    *,
    head: bool,
    node_ip: str,
    temp_dir: str,
    resources: NodeResources,
    ports: NodePorts,
    address: str | None = None,
    python: str = sys.executable,
    dashboard_host: str | None = None,
) -> list[str]:
    """``ray start ... --block`` for one node of the run.

    ``dashboard_host`` (a head's): start Ray's dashboard there, on ``ports.dashboard``
    (it checks the run's token: ``RAY_AUTH_MODE=token``); None: no dashboard.

    ``--block`` keeps one process as the node's parent (it reaps Ray's processes
    when it ends: all gone 3.6 s after SIGTERM, where killing the group of a
    detached ``ray start`` left ``gcs_server`` hanging for minutes).
    """
    if head == (address is not None):
        raise ValueError("a head has no address to join; a worker node needs one")
    argv = [python, "-m", "ray.scripts.scripts", "start", "--block"]
    argv += ["--head", "--port", "0"] if head else ["--address", str(address)]
    argv += [
        "--node-ip-address", node_ip,
        "--temp-dir", temp_dir,
        "--num-cpus", str(resources.num_cpus),
        "--num-gpus", str(resources.num_gpus),
        "--memory", str(resources.memory),
        "--object-store-memory", str(resources.object_store_memory),
        # 0: each server binds a free port itself, so two runs never race for one.
        "--node-manager-port", "0",
        "--object-manager-port", "0",
        "--min-worker-port", "0",
        "--max-worker-port", "0",
        "--metrics-export-port", "0",
        "--dashboard-agent-grpc-port", "0",
        "--runtime-env-agent-port", "0",
        "--dashboard-agent-listen-port", str(ports.dashboard_agent_listen),
        "--disable-usage-stats",
        "--log-style", "record",
        "--log-color", "false",
    ]  # fmt: skip
    if head:
        if dashboard_host is None:
            argv += ["--include-dashboard", "false"]
        else:
            argv += ["--include-dashboard", "true", "--dashboard-host", dashboard_host]
        argv += ["--dashboard-port", str(ports.dashboard)]
        if ports.client_server is not None:
            argv += ["--ray-client-server-port", str(ports.client_server)]
    return argv


def node_env(base: Mapping[str, str], *, token_file: str, tls: TLSPaths | None) -> dict[str, str]:
    """The environment of a Ray node (and of the app's driver): token, TLS, quiet.

    Token mode is set explicitly: left unset, a token in ``~/.ray`` from another
    use of Ray switches it on or off behind the run's back. The token is read from
    the node's private copy, never from ``$HOME``.
    """
    env = {k: v for k, v in base.items() if not k.startswith(("RAY_TLS_", "RAY_AUTH_"))}
    env.update(
        {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": token_file,
            # Teardown without a 30 s drain per node (the run is ending anyway).
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
    )
    env.pop("RAY_ADDRESS", None)  # a node is told its head; the driver gets it apart
    if tls is None:
        env["RAY_USE_TLS"] = "0"
    else:
        env.update(
            {
                "RAY_USE_TLS": "1",
                "RAY_TLS_SERVER_CERT": tls.cert,
                "RAY_TLS_SERVER_KEY": tls.key,
                "RAY_TLS_CA_CERT": tls.ca,
            }
        )
    return env
