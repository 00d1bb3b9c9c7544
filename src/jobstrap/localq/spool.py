"""The spool: the directory of job records every localq command reads and writes.

Layout (under ``$JOBSTRAP_LOCAL_SPOOL`` or ``~/.jobstrap/local``, private 0700)::

    <spool>/lock  next_id
    <spool>/jobs/<id>/state.json   the job and its tasks (atomic rewrites under jobs/<id>/lock)
    <spool>/jobs/<id>/script       the script as submitted
    <spool>/jobs/<id>/cancel       exists once the job was cancelled
    <spool>/jobs/<id>/supervisor.log

Records are rewritten atomically under a per-job ``flock``, so the supervisor and the
commands (status, cancel) never see a half-written state.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Environment variable that marks every process of a task (see ``jobstrap.localq.cli``).
MARKER = "JOBSTRAP_LOCALQ_JOB"
MARKER_SPOOL = "JOBSTRAP_LOCALQ_SPOOL"

TERMINAL = {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "MISSING"}


class LocalQueueError(Exception):
    """A user error in a localq command: printed on one line, exit code 1."""


def spool_dir(environ: dict[str, str] | None = None) -> Path:
    """The spool directory: ``$JOBSTRAP_LOCAL_SPOOL`` or ``~/.jobstrap/local``."""
    env = os.environ if environ is None else environ
    configured = env.get("JOBSTRAP_LOCAL_SPOOL")
    return Path(configured).expanduser() if configured else Path.home() / ".jobstrap" / "local"


def private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents, each private (0700); returns ``path``."""
    # Parents we create are private too; an existing parent (~) is left alone.
    for directory in reversed([path, *path.parents]):
        if not directory.exists():
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, 0o700)
                os.chmod(directory, 0o700)  # mkdir's mode is masked by the umask
    return path


def atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` at once (a private temporary file, then a rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def job_directory(spool: Path, job_id: str) -> Path:
    """The directory of job ``job_id`` in the spool."""
    return spool / "jobs" / job_id


def next_id(spool: Path) -> str:
    """Allocate the next job id and create its (private) job directory."""
    with locked(spool / "lock"):
        counter = spool / "next_id"
        try:
            value = int(counter.read_text(encoding="ascii").strip() or "1")
        except FileNotFoundError:
            value = 1
        # A job directory left by an older counter (the file was deleted) is never reused.
        while job_directory(spool, str(value)).exists():
            value += 1
        atomic_write(counter, f"{value + 1}\n")
        private_dir(job_directory(spool, str(value)))
    return str(value)


def read_state(spool: Path, job_id: str) -> dict[str, Any] | None:
    """The job's record, or None for an unknown id or an unreadable record."""
    try:
        data = json.loads((job_directory(spool, job_id) / "state.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_state(spool: Path, state: dict[str, Any]) -> None:
    """Write the job's record atomically (callers hold the job's lock)."""
    text = json.dumps(state, indent=1, sort_keys=True) + "\n"
    atomic_write(job_directory(spool, str(state["id"])) / "state.json", text)


@contextlib.contextmanager
def updating(spool: Path, job_id: str) -> Iterator[dict[str, Any]]:
    """Read-modify-write a job's state under its lock."""
    with locked(job_directory(spool, job_id) / "lock"):
        state = read_state(spool, job_id)
        if state is None:
            raise LocalQueueError(f"invalid job id {job_id}")
        yield state
        write_state(spool, state)


def cancel_marker(spool: Path, job_id: str, task: str) -> Path:
    """The file whose existence tells the supervisor that ``task`` was cancelled."""
    return job_directory(spool, job_id) / ("cancel" + (f"_{task}" if task else ""))


def task_key(job_id: str, task: str) -> str:
    """A task's id as the commands print it: ``ID`` or ``ID_TASK`` for an array task."""
    return job_id if task == "" else f"{job_id}_{task}"
