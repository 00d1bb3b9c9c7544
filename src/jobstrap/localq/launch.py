"""``launch -n N -- COMMAND``: N ranks of a command as plain processes, without MPI."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Sequence

from jobstrap.localq.processes import kill_wait
from jobstrap.localq.spool import LocalQueueError


def cmd_launch(ntasks: int, argv: Sequence[str]) -> int:
    """Start ``ntasks`` copies of ``argv`` as ranks, like a minimal ``mpiexec``.

    The local backend's launcher when MPI is not installed: each copy gets its rank
    and the world size in the environment (``PMI_RANK``/``PMI_SIZE``, read by the
    bootstrap when mpi4py is absent, and ``JOBSTRAP_RANK``/``JOBSTRAP_WORLD_SIZE``).
    Signals are forwarded to every rank; when one rank fails the others are
    terminated, as ``mpiexec`` does. Returns the first non-zero exit code, else 0.
    """
    import subprocess

    if ntasks < 1:
        raise LocalQueueError(f"launch -n {ntasks}: need at least one task")
    if not argv:
        raise LocalQueueError("launch needs a command after --")
    processes = []
    for rank in range(ntasks):
        env = dict(os.environ)
        env.update(
            {
                "PMI_RANK": str(rank),
                "PMI_SIZE": str(ntasks),
                "JOBSTRAP_RANK": str(rank),
                "JOBSTRAP_WORLD_SIZE": str(ntasks),
            }
        )
        processes.append(subprocess.Popen(list(argv), env=env))

    def forward(signum: int, frame: object) -> None:
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, forward)
    first_failure = 0
    kill_at: float | None = None
    while any(p.poll() is None for p in processes):
        for process in processes:
            code = process.poll()
            if code not in (None, 0) and not first_failure:
                first_failure = code if code > 0 else 128 - code
                forward(signal.SIGTERM, None)
                kill_at = time.monotonic() + kill_wait()
        if kill_at is not None and time.monotonic() >= kill_at:
            forward(signal.SIGKILL, None)
        time.sleep(0.05)
    if not first_failure:
        for process in processes:
            if process.returncode:
                code = process.returncode
                return code if code > 0 else 128 - code
    return first_failure
