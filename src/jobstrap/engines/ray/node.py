"""One Ray node of a run as one process group: started, watched, torn down.

``ray start --block`` runs in a session of its own, so the node's every process
(GCS, raylet, agents, workers, the reaper Ray starts with ``--block``) is in one
process group that this run, and only this run, ends. Never ``ray stop``: it
matches process names and kills every Ray cluster on the host, other users'
included. Teardown is SIGTERM to ``ray start`` (which ends its children: all gone
in ~3.6 s), then SIGKILL to the group for whatever is left, then the node's
directory goes. Ray's own output (banners, shutdown noise) goes to a log file,
never to the job's output; a failure is told in one line with the log's last
words.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["TERM_GRACE", "RayNode", "RayStartError"]

#: Seconds between SIGTERM to ``ray start`` and SIGKILL to the node's group.
TERM_GRACE = 8.0


class RayStartError(RuntimeError):
    """The node did not come up; the message is one line."""


class RayNode:
    """``ray start --block`` for one node, in its own process group.

    Parameters
    ----------
    argv, env
        The command and its environment (see :mod:`jobstrap.engines.ray.plan`).
    temp_dir
        The node's private directory (removed at :meth:`stop`).
    log_file
        Where Ray's output goes.
    """

    def __init__(
        self, argv: Sequence[str], env: Mapping[str, str], temp_dir: str, log_file: Path
    ) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.temp_dir = temp_dir
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None
        self._stopped = False

    def start(self) -> None:
        """Start the node (returns at once; see :meth:`wait_for_address`)."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the node's own group: what stop() ends
                close_fds=True,
                preexec_fn=_end_with_parent,
            )

    @property
    def pid(self) -> int | None:
        """``ray start``'s pid (its process group's id), once started."""
        return self.process.pid if self.process is not None else None

    def exit_code(self) -> int | None:
        """``ray start``'s exit code if it ended, else None."""
        return None if self.process is None else self.process.poll()

    def wait_for_address(self, timeout: float) -> str:
        """The head's GCS address once it serves (head nodes only).

        ``ray start`` writes it to ``ray_current_cluster`` in the node's directory
        once the GCS answers; the directory is the run's own, so the address is.

        Raises
        ------
        RayStartError
            ``ray start`` ended, or did not get that far within ``timeout``.
        """
        marker = Path(self.temp_dir) / "ray_current_cluster"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                address = marker.read_text(encoding="utf-8").strip()
                if address:
                    return address
            code = self.exit_code()
            if code is not None:
                raise RayStartError(f"ray start ended with exit code {code}: {self.last_words()}")
            time.sleep(0.05)
        raise RayStartError(
            f"the Ray head did not serve within {timeout:.0f} s: {self.last_words()}"
        )

    def last_words(self, limit: int = 300) -> str:
        """The last meaningful line of Ray's log, for a one-line reason."""
        try:
            with open(self.log_file, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 16384))
                lines = handle.read().decode(errors="replace").splitlines()
        except OSError:
            return f"(no log at {self.log_file})"
        for line in reversed(lines):
            text = line.strip()
            if text and not text.startswith(("^", "~", "File ")):
                text = text if len(text) <= limit else text[: limit - 3] + "..."
                return f"{text} (log: {self.log_file})"
        return f"(log: {self.log_file})"

    def stop(self, grace: float = TERM_GRACE) -> None:
        """End every process of the node, then remove its directory (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        process = self.process
        if process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(grace)
            kill_group(process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _end_with_parent() -> None:
    """In the child: SIGTERM when the rank that started it dies (Linux's PDEATHSIG).

    A rank killed outright (an app that crashed the interpreter, SIGKILL) cannot
    tear its node down; left alone, a head would keep its worker nodes (and so the
    job) alive until the walltime. ``ray start --block`` ends its node on SIGTERM.
    """
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def kill_group(pgid: int, wait: float = 5.0) -> bool:
    """SIGKILL what is left of process group ``pgid``; True once it is empty."""
    deadline = time.monotonic() + wait
    while True:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
