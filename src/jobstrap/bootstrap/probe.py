"""What ``jobstrap doctor``'s probe job runs on a compute node.

``python -m jobstrap.bootstrap.probe RUN_DIR --connect HOST:PORT [--interface ib0,eth0] ...``
collects the facts that decide whether Dask workers can work on this node, and
reports them twice, because either path may be the broken one:

* over TCP to the doctor listening on the login node (``--connect``), which is also
  the reachability test (a worker must reach the scheduler the same way), then it
  waits briefly for the doctor to connect back to the address a worker here would
  advertise (the scheduler must reach workers too);
* as ``RUN_DIR/probe.json`` on the shared file system.

The facts: host name, interfaces and the address :mod:`jobstrap.net.network` would
choose for the profile's ``interface``, the Python and package versions (read from
package metadata, nothing heavy is imported), a token the doctor wrote into the run
directory (read back here) and one written here (read back there), and the CPU and
memory limits the job really got (cgroup v1 or v2, CPU affinity, Slurm's variables).

The report is authenticated by a token the doctor puts in ``JOBSTRAP_PROBE_TOKEN``
(in the job's environment, not its command line, so other users cannot read it).
Every network operation has a timeout; the probe never runs longer than about
``--timeout`` plus ``--callback-wait`` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "CLIENT_TOKEN_FILE",
    "NODE_TOKEN_FILE",
    "PACKAGES",
    "PROBE_FILE",
    "TOKEN_ENV",
    "cgroup_limits",
    "collect",
    "gpu_facts",
    "main",
    "package_versions",
    "ray_facts",
]

#: Written by the doctor before submitting; read back by the probe.
CLIENT_TOKEN_FILE = "doctor-client.token"
#: Written by the probe; read back by the doctor.
NODE_TOKEN_FILE = "doctor-node.token"
#: The probe's report on the shared file system.
PROBE_FILE = "probe.json"
#: Environment variable carrying the report token.
TOKEN_ENV = "JOBSTRAP_PROBE_TOKEN"
#: Packages whose versions must match between client, scheduler and workers.
PACKAGES = ("dask", "distributed", "jobstrap", "cloudpickle", "msgpack", "toolz", "tornado")
#: Largest report accepted over TCP (it is a few KiB).
MAX_REPORT_BYTES = 1 << 20
#: cgroup "no limit" values are huge (v1: page-rounded 2**63-1); anything beyond is none.
_UNLIMITED = 1 << 60


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    """Installed versions from package metadata (``None`` when not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def python_facts() -> dict[str, str]:
    """The running interpreter: path, version, implementation."""
    return {
        "executable": sys.executable,
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
    }


# ------------------------------------------------------------------------- cgroups


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _limit_value(text: str | None) -> int | None:
    if text is None or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value <= 0 or value >= _UNLIMITED else value


def _ancestors(base: Path, relative: str) -> list[Path]:
    """``base/relative`` and every parent up to ``base``: limits are hierarchical."""
    parts = [p for p in relative.split("/") if p]
    return [base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _min_limit(paths: Sequence[Path], name: str) -> int | None:
    values = [v for v in (_limit_value(_read(p / name)) for p in paths) if v is not None]
    return min(values) if values else None


def _v2_cpu(paths: Sequence[Path]) -> float | None:
    quotas: list[float] = []
    for path in paths:
        text = _read(path / "cpu.max")
        if not text:
            continue
        quota, _, period = text.partition(" ")
        if quota != "max" and period.isdigit() and int(period) > 0:
            quotas.append(int(quota) / int(period))
    return min(quotas) if quotas else None


def _v1_cpu(paths: Sequence[Path]) -> float | None:
    quotas: list[float] = []
    for path in paths:
        quota = _read(path / "cpu.cfs_quota_us")
        period = _read(path / "cpu.cfs_period_us")
        # A quota of -1 means none; only positive numbers are limits.
        if not (quota and period and quota.isdigit() and period.isdigit()):
            continue
        if int(quota) > 0 < int(period):
            quotas.append(int(quota) / int(period))
    return min(quotas) if quotas else None


def cgroup_limits(
    proc_cgroup: str | None = None, root: Path = Path("/sys/fs/cgroup")
) -> dict[str, Any]:
    """The memory and CPU limits of this process's cgroup (v1 or v2).

    Parameters
    ----------
    proc_cgroup
        The text of ``/proc/self/cgroup`` (read when ``None``).
    root
        Where the cgroup file systems are mounted.

    Returns
    -------
    dict
        ``version`` (1, 2 or None), ``memory_limit`` (bytes or None: unlimited),
        ``cpu_quota`` (CPUs' worth of time or None), ``path``.
    """
    text = proc_cgroup if proc_cgroup is not None else (_read(Path("/proc/self/cgroup")) or "")
    entries: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) == 3:
            for controller in fields[1].split(",") if fields[1] else [""]:
                entries[controller] = fields[2]
    result: dict[str, Any] = {"version": None, "memory_limit": None, "cpu_quota": None, "path": ""}
    if "memory" in entries or "cpu" in entries:
        result["version"] = 1
        memory_path = entries.get("memory", "")
        result["path"] = memory_path
        result["memory_limit"] = _min_limit(
            _ancestors(root / "memory", memory_path), "memory.limit_in_bytes"
        )
        cpu_path = entries.get("cpu", "")
        for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
            if (root / mount).is_dir():
                result["cpu_quota"] = _v1_cpu(_ancestors(root / mount, cpu_path))
                break
    elif "" in entries and (root / "cgroup.controllers").exists():
        result["version"] = 2
        path = entries[""]
        result["path"] = path
        paths = _ancestors(root, path)
        result["memory_limit"] = _min_limit(paths, "memory.max")
        result["cpu_quota"] = _v2_cpu(paths)
    return result


def cpu_facts() -> dict[str, Any]:
    """CPUs this process may run on, the node's count, and Slurm's view."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        affinity = os.cpu_count() or 0
    slurm = {
        key: os.environ[key]
        for key in ("SLURM_CPUS_ON_NODE", "SLURM_CPUS_PER_TASK", "SLURM_MEM_PER_NODE")
        if key in os.environ
    }
    return {"affinity": affinity, "node_cpus": os.cpu_count() or 0, "slurm": slurm}


# ----------------------------------------------------------------------- network


def interface_facts() -> list[dict[str, Any]]:
    """Every interface of this node (names, addresses, state), or one error entry."""
    from jobstrap.net.network import list_interfaces

    return [
        {
            "name": i.name,
            "ipv4": list(i.ipv4),
            "is_up": i.is_up,
            "kind": i.kind,
            "mtu": i.mtu,
            "describe": i.describe(),
        }
        for i in list_interfaces()
    ]


def choose(interface: str, peer: str | None) -> dict[str, Any]:
    """The interface and address a worker here would use, or the error saying why not."""
    from jobstrap.errors import NetworkError
    from jobstrap.net.network import choose_interface

    try:
        chosen = choose_interface(interface, peer=peer)
    except NetworkError as error:
        return {"ok": False, "error": str(error), "interface": None, "address": None}
    return {"ok": True, "error": None, "interface": chosen.name, "address": chosen.address}


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class _Callback:
    """A listener on the worker's address; the doctor connecting proves it reachable."""

    def __init__(self, address: str, token: str) -> None:
        self.token = token
        self.received = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((address, 0))
        self.sock.listen(4)
        self.port = int(self.sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self.received.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn:
                conn.settimeout(5)
                try:
                    line = conn.makefile("rb").readline(256).decode(errors="replace").strip()
                    if secrets.compare_digest(line, self.token):
                        conn.sendall(b"ok\n")
                        self.received.set()
                except OSError:
                    continue

    def close(self) -> None:
        self.sock.close()


def send_report(
    address: str, token: str, report: Mapping[str, Any], timeout: float
) -> dict[str, Any]:
    """Connect to the doctor, send the report, read its answer; the outcome as data."""
    host, port = _split_address(address)
    started = time.monotonic()
    outcome: dict[str, Any] = {"target": address, "ok": False, "error": None, "source": None}
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            outcome["source"] = sock.getsockname()[0]
            payload = json.dumps({"token": token, "report": report}).encode() + b"\n"
            sock.sendall(payload)
            answer = sock.makefile("rb").readline(64).decode(errors="replace").strip()
            outcome["ok"] = answer == "ok"
            if answer != "ok":
                outcome["error"] = f"the doctor answered {answer!r}"
    except OSError as error:
        outcome["error"] = f"{type(error).__name__}: {error.strerror or error}"
    outcome["seconds"] = round(time.monotonic() - started, 3)
    return outcome


# ------------------------------------------------------------------------ files


def shared_fs_facts(run_dir: Path) -> dict[str, Any]:
    """Read the doctor's token from the run directory and write ours into it."""
    facts: dict[str, Any] = {
        "run_dir": str(run_dir),
        "run_dir_exists": run_dir.is_dir(),
        "client_token": None,
        "client_error": None,
        "node_token": None,
        "node_error": None,
    }
    try:
        facts["client_token"] = (run_dir / CLIENT_TOKEN_FILE).read_text().strip()
    except OSError as error:
        facts["client_error"] = f"{type(error).__name__}: {error.strerror or error}"
    token = secrets.token_hex(16)
    try:
        from jobstrap.store.rundir import atomic_write_text

        atomic_write_text(run_dir / NODE_TOKEN_FILE, token + "\n")
        facts["node_token"] = token
    except OSError as error:
        facts["node_error"] = f"{type(error).__name__}: {error.strerror or error}"
    return facts


# ------------------------------------------------------------------------- GPUs


def _device_access(path: str) -> str:
    """``usable`` (opened, or refused by the driver), ``denied`` (fenced off) or ``absent``."""
    import errno

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return "absent"
    except OSError as error:
        # A device cgroup refuses with EPERM; a device node without a driver behind
        # it (or a busy one) with ENXIO/ENODEV/EBUSY: the job may use it.
        return "denied" if error.errno in (errno.EPERM, errno.EACCES) else "usable"
    os.close(fd)
    return "usable"


def gpu_facts(requested: int, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The GPUs the job sees (from its allocation), the per-worker split, device access."""
    from jobstrap.bootstrap.gpus import gpu_allocation, gpu_workers

    allocation = gpu_allocation(os.environ if environ is None else environ)
    workers = gpu_workers(allocation)
    files = sorted(str(p) for p in Path("/dev").glob("nvidia[0-9]*"))
    return {
        "requested": requested,
        "devices": list(allocation.devices),
        "ids": list(allocation.ids),
        "source": allocation.source,
        "workers": [",".join(w.visible) for w in workers],
        "device_files": {path: _device_access(path) for path in files},
    }


# ------------------------------------------------------------------------- main


def collect(
    run_dir: Path,
    *,
    interface: str,
    peer: str | None,
    cpus: int | None,
    memory: int | None,
    gpus: int = 0,
) -> dict[str, Any]:
    """Every fact the probe reports (before any network exchange)."""
    return {
        "version": 1,
        "host": socket.gethostname(),
        "job_id": os.environ.get("JOBSTRAP_JOB_ID") or os.environ.get("SLURM_JOB_ID"),
        "started": time.time(),
        "python": python_facts(),
        "packages": package_versions(),
        "interfaces": interface_facts(),
        "interface_request": interface,
        "chosen": choose(interface, peer),
        "shared_fs": shared_fs_facts(run_dir),
        "cgroup": cgroup_limits(),
        "cpus": cpu_facts(),
        "request": {"cpus": cpus, "memory": memory, "gpus": gpus},
        "gpus": gpu_facts(gpus),
        "ray": ray_facts(),
    }


def ray_facts(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What the Ray engine needs of a node: Ray, and a short writable temp directory."""
    env = os.environ if environ is None else environ
    parents = [p for p in (env.get("TMPDIR", ""), "/tmp", "/dev/shm") if p]
    return {
        "version": package_versions(("ray",))["ray"],
        "tmpdir": env.get("TMPDIR", ""),
        "writable": {p: os.path.isdir(p) and os.access(p, os.W_OK | os.X_OK) for p in parents},
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobstrap.bootstrap.probe",
        description="jobstrap doctor's probe (runs in a job)",
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--connect", metavar="HOST:PORT", help="the doctor's listener")
    parser.add_argument("--interface", default="auto", help="the profile's worker interfaces")
    parser.add_argument("--cpus", type=int, help="CPUs the job asked for")
    parser.add_argument("--memory", type=int, help="bytes of memory the job asked for")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per node the job asked for")
    parser.add_argument("--timeout", type=float, default=10.0, help="network timeout (s)")
    parser.add_argument(
        "--callback-wait", type=float, default=20.0, help="seconds to wait for the doctor to call"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the probe; always exits 0 once it could report (findings are data)."""
    args = _parser().parse_args(argv)
    token = os.environ.get(TOKEN_ENV, "")
    report = collect(
        args.run_dir,
        interface=args.interface,
        peer=args.connect,
        cpus=args.cpus,
        memory=args.memory,
        gpus=args.gpus,
    )
    callback: _Callback | None = None
    if report["chosen"]["ok"] and token:
        try:
            callback = _Callback(report["chosen"]["address"], token)
            report["listen"] = {"address": report["chosen"]["address"], "port": callback.port}
        except OSError as error:
            report["listen"] = {"error": f"cannot listen on {report['chosen']['address']}: {error}"}
    if args.connect:
        report["connect"] = send_report(args.connect, token, report, args.timeout)
        if report["connect"]["ok"] and callback is not None:
            report["callback_received"] = callback.received.wait(args.callback_wait)
    if callback is not None:
        callback.close()
    report["finished"] = time.time()
    if args.run_dir.is_dir():
        try:
            from jobstrap.store.rundir import atomic_write_json

            atomic_write_json(args.run_dir / PROBE_FILE, report)
        except OSError as error:
            print(f"jobstrap probe: cannot write {PROBE_FILE}: {error}", file=sys.stderr)
    # The job log gets the report too: the last resort when neither path works.
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
