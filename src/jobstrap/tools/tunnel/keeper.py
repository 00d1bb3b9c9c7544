"""The reconnecting half of a tunnel: run ``ssh``, wait for the ports, restart it.

:class:`TunnelKeeper` runs a :class:`~.plans.TunnelPlan`'s argv and, when ``ssh``
exits, starts it again on the shared :class:`~jobstrap.backoff.Backoff` schedule.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TextIO

from jobstrap.backoff import Backoff
from jobstrap.errors import UserError
from jobstrap.tools.tunnel.plans import TunnelPlan

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


# -------------------------------------------------------------------------------- keeper


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
