"""``submit``: queue a job script in the spool and start its detached supervisor."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jobstrap.localq.directives import Directives, parse_directives, split_option
from jobstrap.localq.processes import process_start_time
from jobstrap.localq.spool import (
    MARKER,
    MARKER_SPOOL,
    LocalQueueError,
    job_directory,
    next_id,
    private_dir,
    spool_dir,
    task_key,
    updating,
    write_state,
)


def _expand(pattern: str, job_id: str, task: str, name: str) -> str:
    replacements = {
        "%j": task_key(job_id, task),
        "%A": job_id,
        "%a": task or "0",
        "%x": name,
        "%%": "%",
    }
    return re.sub(r"%[jAax%]", lambda m: replacements[m.group(0)], pattern)


def cmd_submit(options: Sequence[str], script: str) -> str:
    """Queue ``script`` and start its supervisor; returns the new job id."""
    path = Path(script)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise LocalQueueError(f"cannot read script {script}: {error.strerror}") from None
    directives = Directives()
    for key, value in parse_directives(text):
        directives.apply(key, value)
    for option in options:
        directives.apply(*split_option(option))
    name = directives.job_name or path.name
    tasks = [str(i) for i in directives.array] if directives.array is not None else [""]

    spool = private_dir(spool_dir())
    private_dir(spool / "jobs")
    job_id = next_id(spool)
    job_dir = job_directory(spool, job_id)
    copy = job_dir / "script"
    copy.write_bytes(path.read_bytes())
    os.chmod(copy, 0o700)
    cwd = os.getcwd()
    outputs = {}
    for task in tasks:
        out = directives.output or f"jobstrap-{'%A_%a' if task else '%j'}.out"
        out_path = os.path.join(cwd, _expand(out, job_id, task, name))
        err_path = (
            os.path.join(cwd, _expand(directives.error, job_id, task, name))
            if directives.error
            else out_path
        )
        outputs[task] = (out_path, err_path)
    state: dict[str, Any] = {
        "id": job_id,
        "name": name,
        "script": str(copy),
        "script_path": str(path.resolve()),
        "cwd": cwd,
        "submitted": time.time(),
        "walltime": directives.time,
        "ntasks": directives.ntasks,
        "array": directives.array is not None,
        "array_limit": directives.array_limit,
        "signal": list(directives.signal) if directives.signal else None,
        "supervisor": {"pid": None, "create_time": None},
        "tasks": {
            task: {
                "state": "PENDING",
                "reason": "None",
                "exit_code": None,
                "pid": None,
                "create_time": None,
                "start": None,
                "end": None,
                "output": outputs[task][0],
                "error": outputs[task][1],
            }
            for task in tasks
        },
    }
    write_state(spool, state)
    _start_supervisor(spool, job_id)
    return job_id


def _start_supervisor(spool: Path, job_id: str) -> None:
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in (MARKER, MARKER_SPOOL)}
    # A job that submits a job must not make the new one part of itself: the marker
    # is dropped, and the supervisor sits in a session of its own.
    env["JOBSTRAP_LOCAL_SPOOL"] = str(spool)
    log = open(job_directory(spool, job_id) / "supervisor.log", "ab")  # noqa: SIM115
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "jobstrap.localq", "_supervise", job_id],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    finally:
        log.close()
    created = process_start_time(process.pid)
    with updating(spool, job_id) as state:
        if not state["supervisor"].get("pid"):
            state["supervisor"] = {"pid": process.pid, "create_time": created}
