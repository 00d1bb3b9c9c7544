"""The probe job and the doctor's end of it: the job spec, the TCP listener the probe
reports to, and the call back that proves the node is reachable from here.

The report carries a token that only the probe job's environment knows; anything
else is answered ``bad token`` and ignored.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from jobstrap.bootstrap.probe import MAX_REPORT_BYTES, TOKEN_ENV
from jobstrap.jobs.spec import JobSpec, Role, scheduler_job

if TYPE_CHECKING:
    from jobstrap.config.profile import Profile

__all__ = [
    "PROBE_WALLTIME",
    "ProbeListener",
    "call_back",
    "probe_job",
]


#: The probe's own walltime: it needs seconds, but a queue with a short minimum
#: walltime must still accept it.
PROBE_WALLTIME = 300


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
    if profile.gpus_on_a_node:
        command += ["--gpus", str(profile.gpus_on_a_node)]
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
        # The GPUs a worker job asks for (the scheduler job it is built from has none).
        gpus=profile.gpus,
        gpus_per_job=min(profile.gpus_per_job, profile.gpus_on_a_node),
        gpu_type=profile.gpu_type,
        memory_per=profile.memory_unit,
        mem_per_gpu=profile.mem_per_gpu,
        gpu_bind=profile.gpu_bind,
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
