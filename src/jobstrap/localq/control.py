"""``status``, ``cancel``, ``signal`` and ``find``: the commands on queued jobs.

Each reads the spool; a job whose supervisor died is reconciled first (see
``reconcile``), so no task stays ``RUNNING`` with nobody watching it.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from jobstrap.localq.directives import signal_number
from jobstrap.localq.processes import is_alive, kill_wait, signal_task, task_processes
from jobstrap.localq.spool import (
    TERMINAL,
    LocalQueueError,
    cancel_marker,
    read_state,
    spool_dir,
    task_key,
    updating,
)

#: A submitted job whose supervisor never recorded itself within this long is MISSING.
_START_GRACE = 60.0


def _split_id(text: str) -> tuple[str, str | None]:
    match = re.fullmatch(r"(\d+)(?:_(\d+))?", text.strip())
    if not match:
        raise LocalQueueError(f"invalid job id {text!r}")
    return match[1], match[2]


def _reconcile(spool: Path, job_id: str) -> dict[str, Any] | None:
    """The job's state, with the supervisor's death (if any) accounted for."""
    state = read_state(spool, job_id)
    if state is None or all(t["state"] in TERMINAL for t in state["tasks"].values()):
        return state
    supervisor = state["supervisor"]
    if is_alive(supervisor.get("pid"), supervisor.get("create_time")):
        return state
    if not supervisor.get("pid") and time.time() - state["submitted"] < _START_GRACE:
        return state  # submitted a moment ago; the supervisor is still starting
    with updating(spool, job_id) as state:
        supervisor = state["supervisor"]
        if is_alive(supervisor.get("pid"), supervisor.get("create_time")):
            return state
        for task, record in state["tasks"].items():
            if record["state"] in TERMINAL:
                continue
            key = task_key(job_id, task)
            if task_processes(spool, key, record.get("pid")):
                # Nobody enforces its walltime any more: end it rather than leak it.
                signal_task(spool, key, record.get("pid"), signal.SIGKILL, sweep=True)
                record.update(state="FAILED", reason="SupervisorLost", end=time.time())
            else:
                record.update(state="MISSING", reason="SupervisorLost", end=time.time())
    return state


def _select(spool: Path, ids: Sequence[str]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(job id, task, state)`` for each task the ids name; unknown ids are skipped."""
    seen: set[tuple[str, str]] = set()
    for text in ids:
        for part in text.split(","):
            if not part.strip():
                continue
            job_id, task = _split_id(part)
            state = _reconcile(spool, job_id)
            if state is None:
                continue
            tasks = list(state["tasks"]) if task is None else [task]
            for name in tasks:
                if name in state["tasks"] and (job_id, name) not in seen:
                    seen.add((job_id, name))
                    yield job_id, name, state


def cmd_status(ids: Sequence[str]) -> list[str]:
    """One ``ID|STATE|EXIT|REASON|NAME|ELAPSED|LEFT`` line per task (times in seconds,
    the last two empty until the task starts); unknown ids print nothing."""
    lines = []
    now = time.time()
    for job_id, task, state in _select(spool_dir(), ids):
        record = state["tasks"][task]
        code = "" if record["exit_code"] is None else str(record["exit_code"])
        reason = str(record["reason"]).replace("|", "/").replace("\n", " ")
        elapsed = left = ""
        if record.get("start") is not None:
            ran = (record.get("end") or now) - record["start"]
            elapsed = str(int(ran))
            if record["state"] == "RUNNING":
                left = str(max(0, int(float(state["walltime"]) - ran)))
        lines.append(
            f"{task_key(job_id, task)}|{record['state']}|{code}|{reason}|{state['name']}"
            f"|{elapsed}|{left}"
        )
    return lines


def cmd_cancel(ids: Sequence[str]) -> None:
    """Cancel jobs or array tasks: pending ones at once, running ones by SIGTERM then SIGKILL."""
    spool = spool_dir()
    for job_id, task, _ in list(_select(spool, ids)):
        key = task_key(job_id, task)
        with updating(spool, job_id) as state:
            record = state["tasks"][task]
            if record["state"] in TERMINAL:
                continue
            if record["state"] == "PENDING":
                # The supervisor re-reads the state under this lock before starting a task.
                record.update(state="CANCELLED", reason="Cancelled", end=time.time())
                continue
            supervisor = state["supervisor"]
            supervised = is_alive(supervisor.get("pid"), supervisor.get("create_time"))
            pgid = record.get("pid")
        cancel_marker(spool, job_id, task).touch()
        # Signal at once so cancel is prompt; a live supervisor escalates and records it.
        signal_task(spool, key, pgid, signal.SIGTERM, sweep=True)
        if supervised:
            continue
        deadline = time.monotonic() + min(kill_wait(), 5.0)
        while time.monotonic() < deadline and task_processes(spool, key, pgid):
            time.sleep(0.1)
        signal_task(spool, key, pgid, signal.SIGKILL, sweep=True)
        with updating(spool, job_id) as state:
            state["tasks"][task].update(state="CANCELLED", reason="Cancelled", end=time.time())


def cmd_signal(signal_name: str, ids: Sequence[str]) -> None:
    """Send a signal to every process of running jobs or tasks."""
    spool = spool_dir()
    signum = signal_number(signal_name)
    for job_id, task, state in list(_select(spool, ids)):
        record = state["tasks"][task]
        if record["state"] == "RUNNING":
            signal_task(spool, task_key(job_id, task), record.get("pid"), signum, sweep=True)


def cmd_find(name: str, uid: int | None = None) -> list[str]:
    """Ids of jobs named ``name`` that are still pending or running (of user ``uid``)."""
    spool = spool_dir()
    found = []
    jobs = spool / "jobs"
    if not jobs.is_dir():
        return []
    for entry in sorted(jobs.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1):
        if not entry.name.isdigit():
            continue
        if uid is not None and entry.stat().st_uid != uid:
            continue  # a shared spool: another user's job is never ours
        state = read_state(spool, entry.name)
        if state is None or state["name"] != name:
            continue
        state = _reconcile(spool, entry.name)
        if state and any(t["state"] not in TERMINAL for t in state["tasks"].values()):
            found.append(entry.name)
    return found
