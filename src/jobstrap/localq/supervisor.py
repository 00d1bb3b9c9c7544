"""The per-job supervisor (``_supervise ID``): runs the tasks and enforces the walltime.

It starts every array task as its own process group (its own session, so a job never
receives the terminal's signals), records each state change in the spool, and ends a
task the way Slurm does: the ``--signal`` warning first, ``SIGTERM`` at the walltime,
``SIGKILL`` after a grace (``$JOBSTRAP_LOCAL_KILL_WAIT`` seconds) -> ``TIMEOUT``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobstrap.localq.processes import kill_wait, process_start_time, signal_task, task_processes
from jobstrap.localq.spool import (
    MARKER,
    MARKER_SPOOL,
    TERMINAL,
    LocalQueueError,
    cancel_marker,
    job_directory,
    private_dir,
    read_state,
    spool_dir,
    task_key,
    updating,
)

_POLL = 0.1  # seconds between supervisor checks: cheap (a few syscalls), keeps cancel snappy


@dataclass
class _Running:
    task: str
    process: Any  # subprocess.Popen[bytes]
    start: float
    ending: str = ""  #: TIMEOUT or CANCELLED once we decided to end it
    warned: bool = False
    kill_at: float | None = None
    leader_done: bool = False
    final: tuple[str, int | None, str] | None = None


class _Supervisor:
    """Runs one job's tasks, enforces the walltime, records every state change."""

    def __init__(self, spool: Path, job_id: str) -> None:
        self.spool = spool
        self.job_id = job_id
        self.job_dir = job_directory(spool, job_id)
        state = read_state(spool, job_id)
        if state is None:
            raise LocalQueueError(f"invalid job id {job_id}")
        self.state = state
        self.walltime = float(state["walltime"])
        warning = state["signal"]
        self.signal: tuple[int, int] | None = (warning[0], warning[1]) if warning else None
        self.limit = state.get("array_limit") or len(state["tasks"])
        self.pending = [t for t, rec in state["tasks"].items() if rec["state"] == "PENDING"]
        self.running: dict[str, _Running] = {}
        self.terminated = False

    def _update(self, task: str, **changes: Any) -> None:
        with updating(self.spool, self.job_id) as state:
            state["tasks"][task].update(changes)
            self.state = state

    def _cancelled(self, task: str) -> bool:
        return self.terminated or cancel_marker(self.spool, self.job_id, task).exists()

    def run(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        with updating(self.spool, self.job_id) as state:
            started = process_start_time(os.getpid())
            state["supervisor"] = {"pid": os.getpid(), "create_time": started}
        while self.pending or self.running:
            if self.terminated:
                for task in self.pending:
                    self._update(task, state="CANCELLED", reason="Cancelled", end=time.time())
                self.pending = []
            while self.pending and len(self.running) < self.limit:
                self._start(self.pending.pop(0))
            for run in list(self.running.values()):
                self._check(run)
            time.sleep(_POLL)

    def _on_signal(self, signum: int, frame: object) -> None:
        # Killing the supervisor politely is cancelling its job.
        self.terminated = True

    def _start(self, task: str) -> None:
        import subprocess

        with updating(self.spool, self.job_id) as state:
            self.state = state
            record = state["tasks"][task]
            if record["state"] != "PENDING":
                return  # cancelled while it waited
            # Claimed under the lock: from now on cancel signals it instead of dropping it.
            # A start time goes with the claim so that no reader sees a RUNNING task
            # without its elapsed and remaining time (the launch below refines it).
            record.update(state="RUNNING", reason="Starting", start=time.time())
        key = task_key(self.job_id, task)
        env = dict(os.environ)
        env.update(
            {
                "JOBSTRAP_JOB_ID": self.job_id,
                "JOBSTRAP_ARRAY_JOB_ID": self.job_id if self.state["array"] else "",
                "JOBSTRAP_ARRAY_TASK_ID": task,
                "JOBSTRAP_NTASKS": str(self.state["ntasks"]),
                "JOBSTRAP_SUBMIT_DIR": self.state["cwd"],
                MARKER: key,
                MARKER_SPOOL: str(self.spool),
            }
        )
        try:
            for path in {record["output"], record["error"]}:
                private_dir(Path(path).parent)
            stdout = open(record["output"], "wb")  # noqa: SIM115
            same = record["error"] == record["output"]
            stderr = stdout if same else open(record["error"], "wb")  # noqa: SIM115
        except OSError as error:
            self._update(
                task, state="FAILED", reason=f"OutputError: {error}", exit_code=1, end=time.time()
            )
            return
        try:
            process = subprocess.Popen(
                [self.state["script"]],
                cwd=self.state["cwd"],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=env,
                start_new_session=True,  # its own process group: the unit cancel/TERM hits
                close_fds=True,
            )
        except OSError as error:
            self._update(
                task, state="FAILED", reason=f"LaunchError: {error}", exit_code=1, end=time.time()
            )
            return
        finally:
            stdout.close()
            if stderr is not stdout:
                stderr.close()
        now = time.time()
        self.running[task] = _Running(task, process, now)
        self._update(
            task,
            state="RUNNING",
            reason="None",
            pid=process.pid,
            create_time=process_start_time(process.pid),
            start=now,
        )

    def _end(self, run: _Running, why: str, signum: int) -> None:
        key = task_key(self.job_id, run.task)
        run.ending = run.ending or why
        signal_task(self.spool, key, run.process.pid, signum, sweep=True)
        if run.kill_at is None:
            run.kill_at = time.monotonic() + kill_wait()

    def _check(self, run: _Running) -> None:
        key = task_key(self.job_id, run.task)
        elapsed = time.time() - run.start
        if not run.ending and self._cancelled(run.task):
            self._end(run, "CANCELLED", signal.SIGTERM)
        if self.signal and not run.warned and elapsed >= self.walltime - self.signal[1]:
            run.warned = True
            signal_task(self.spool, key, run.process.pid, self.signal[0], sweep=False)
        if elapsed >= self.walltime and not run.ending:
            self._end(run, "TIMEOUT", signal.SIGTERM)
        overdue = run.kill_at is not None and time.monotonic() >= run.kill_at
        if not run.leader_done:
            code = run.process.poll()
            if code is None:
                if overdue:
                    signal_task(self.spool, key, run.process.pid, signal.SIGKILL, sweep=True)
                return
            run.leader_done = True
            exit_code = code if code >= 0 else 128 - code
            if run.ending:
                run.final = (run.ending, exit_code, _REASONS[run.ending])
            elif exit_code == 0:
                run.final = ("COMPLETED", 0, "None")
            else:
                run.final = ("FAILED", exit_code, "NonZeroExitCode")
        # Like a batch system ending a job's cgroup: what the script left behind goes too.
        if task_processes(self.spool, key, run.process.pid):
            if run.kill_at is None:
                signal_task(self.spool, key, run.process.pid, signal.SIGTERM, sweep=True)
                run.kill_at = time.monotonic() + kill_wait()
                self._update(run.task, reason="Completing")
            elif overdue:
                signal_task(self.spool, key, run.process.pid, signal.SIGKILL, sweep=True)
            return
        assert run.final is not None
        state, exit_code, reason = run.final
        self._update(run.task, state=state, exit_code=exit_code, reason=reason, end=time.time())
        del self.running[run.task]


_REASONS = {"TIMEOUT": "TimeLimit", "CANCELLED": "Cancelled"}


def cmd_supervise(job_id: str) -> None:
    """Run job ``job_id`` to its end (the detached supervisor's main)."""
    spool = spool_dir()
    try:
        _Supervisor(spool, job_id).run()
    except Exception as error:
        # Nothing may stay RUNNING behind a supervisor that gave up.
        with contextlib.suppress(LocalQueueError), updating(spool, job_id) as state:
            for record in state["tasks"].values():
                if record["state"] not in TERMINAL:
                    record.update(state="FAILED", reason=f"SupervisorError: {error}")
        raise
