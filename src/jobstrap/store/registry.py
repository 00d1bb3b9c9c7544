"""Saved runs and clusters: one private JSON file each, found again by any process.

Every submission (an app, a graph, a cluster, a probe) leaves a record here, so a
later ``jobstrap status``, ``cancel`` or ``logs``, from another shell or after the
submitting process died, knows which jobs belong to it, where its run directory and
logs are and which batch system to ask.

Records live in ``$JOBSTRAP_STATE_DIR/runs/`` or ``$XDG_STATE_HOME/jobstrap/runs/``
(``~/.local/state/jobstrap/runs/``): the directory is 0700, every file 0600 and
written atomically (temporary file + rename), and :func:`update` holds a lock file so
two processes changing one record never lose each other's change.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from jobstrap.errors import UserError
from jobstrap.store.rundir import atomic_write_json, ensure_private_dir

__all__ = [
    "KINDS",
    "DamagedRecordError",
    "JobKey",
    "RunRecord",
    "list",
    "load",
    "modify",
    "registry_dir",
    "remove",
    "save",
    "state_dir",
    "update",
]

KINDS = ("app", "graph", "cluster", "probe")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_builtin_list = list

#: The type each field of a record file must have (``created`` may be an int too).
_SHAPE: dict[str, type | tuple[type, ...]] = {
    "run_id": str,
    "kind": str,
    "system": str,
    "controller": str,
    "run_dir": str,
    "job_ids": _builtin_list,
    "tags": _builtin_list,
    "profile": dict,
    "logs": dict,
    "created": (int, float),
    "updated": (int, float),
    "owner_pid": int,
    "owner_host": str,
    "status": str,
    "extra": dict,
}
_REQUIRED = ("run_id", "kind", "system", "run_dir")


class DamagedRecordError(UserError):
    """A registry file that is not a run record (hand-edited, truncated, foreign)."""


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """jobstrap's private state directory (not created here).

    ``$JOBSTRAP_STATE_DIR``, else ``$XDG_STATE_HOME/jobstrap``, else
    ``~/.local/state/jobstrap``.
    """
    env = os.environ if environ is None else environ
    if env.get("JOBSTRAP_STATE_DIR"):
        return Path(env["JOBSTRAP_STATE_DIR"]).expanduser()
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base).expanduser() / "jobstrap"


def registry_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The directory holding one ``<run_id>.json`` per run (not created here)."""
    return state_dir(environ) / "runs"


@dataclass(frozen=True)
class JobKey:
    """What names one job across every saved run: never its id alone.

    A job id is unique only within one batch system and one controller's lifetime
    (a local spool and Slurm both hand out ``5``; a Slurm cluster restarted with an
    empty state hands out ``5`` again). Every lookup that spans runs is keyed by this.

    Attributes
    ----------
    system
        The batch system's name.
    controller
        The controller that numbered the job (Slurm cluster, PBS server, local spool);
        "" in records written before it was saved.
    job_id
        The id that controller gave.
    submitted
        When the run was submitted (epoch seconds): a later run reusing the id after a
        controller restart has another key.
    """

    system: str
    controller: str
    job_id: str
    submitted: float


@dataclass
class RunRecord:
    """What was submitted for one run or cluster, and how to find it again.

    Attributes
    ----------
    run_id
        The run directory's name; also the record's file name.
    kind
        ``app``, ``graph``, ``cluster`` or ``probe``.
    system
        The batch system's name (``slurm``, ``pbs``, ``local``).
    controller
        The controller that numbered the jobs (Slurm's cluster name, the PBS server,
        the local spool); "" when unknown (records of older versions).
    run_dir
        Absolute path of the run directory.
    job_ids
        Every job and array task (``["123_0", "123_1"]``).
    tags
        The submissions' tags (job names end with them).
    profile
        ``{"name": <profile name>, "resolved": <every setting>}``.
    logs
        Per job id, its ``out`` and ``err`` file.
    created, updated
        Epoch seconds.
    owner_pid, owner_host
        The process that submitted.
    status
        ``submitting``, ``submitted``, ``failed`` (the submission was rejected),
        ``cancelled``, ``closed`` (a notebook cluster closed, which cancels every job it
        still had) or ``finished`` (the batch system has the truth about the jobs;
        this says what jobstrap did).
    extra
        Anything else a front end wants to keep (scheduler address, app path, ...).
    """

    run_id: str
    kind: str
    system: str
    run_dir: str
    job_ids: list[str] = field(default_factory=_builtin_list)
    tags: list[str] = field(default_factory=_builtin_list)
    profile: dict[str, Any] = field(default_factory=dict)
    logs: dict[str, dict[str, str]] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    owner_pid: int = field(default_factory=os.getpid)
    owner_host: str = field(default_factory=socket.gethostname)
    status: str = "submitted"
    extra: dict[str, Any] = field(default_factory=dict)
    controller: str = ""

    def __post_init__(self) -> None:
        if not _RUN_ID.match(self.run_id):
            raise UserError(f"run id {self.run_id!r}: use letters, digits, '.', '_' or '-'")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}")

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to disk."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunRecord:
        """Read a record; unknown keys (from a newer jobstrap) go to ``extra``.

        Raises
        ------
        ValueError
            If ``data`` is not an object with the fields of a record, each of its type.
        """
        _check_shape(data)
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        extra = dict(values.pop("extra", None) or {})
        extra.update({k: v for k, v in data.items() if k not in known})
        return cls(**values, extra=extra)

    @property
    def cancel_requested(self) -> bool:
        """True once jobstrap asked the batch system to cancel the run.

        The one record of that fact: ``jobstrap cancel`` and ``JobFuture.cancel`` set
        :attr:`status` to ``cancelled`` (the CLI also keeps when, in ``extra``), and a
        notebook cluster's close sets ``closed``, so that any process can tell a job
        leaving after a cancel from one still at work.
        """
        return self.status in ("cancelled", "closed")

    def job_key(self, job_id: str) -> JobKey:
        """The key of this run's job ``job_id`` (see :class:`JobKey`)."""
        return JobKey(self.system, self.controller, job_id, self.created)

    def job_keys(self) -> _builtin_list[JobKey]:
        """The keys of every job of the run, in the order of :attr:`job_ids`."""
        return [self.job_key(job_id) for job_id in self.job_ids]

    def log_paths(self, job_id: str) -> tuple[str, str]:
        """The ``(stdout, stderr)`` files of ``job_id``."""
        paths = self.logs.get(job_id)
        if paths:
            return paths["out"], paths["err"]
        log_dir = os.path.join(self.run_dir, "logs")
        return os.path.join(log_dir, f"{job_id}.out"), os.path.join(log_dir, f"{job_id}.err")


def _check_shape(data: object) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"expected a JSON object, found {type(data).__name__}")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    for key, kind in _SHAPE.items():
        value = data.get(key)
        if key in data and (isinstance(value, bool) or not isinstance(value, kind)):
            raise ValueError(f"{key} is {type(value).__name__}, not {_type_name(kind)}")
    for key in ("job_ids", "tags"):
        if not all(isinstance(item, str) for item in data.get(key, ())):
            raise ValueError(f"{key} must be a list of strings")
    for job_id, paths in data.get("logs", {}).items():
        if not (
            isinstance(paths, dict)
            and isinstance(paths.get("out"), str)
            and isinstance(paths.get("err"), str)
        ):
            raise ValueError(f"logs of {job_id} must have 'out' and 'err' paths")


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _path(run_id: str, directory: Path) -> Path:
    return directory / f"{run_id}.json"


def save(record: RunRecord, *, directory: Path | None = None) -> Path:
    """Write ``record`` (creating the registry directory 0700 if needed); return its file."""
    where = ensure_private_dir(directory or registry_dir())
    record.updated = time.time()
    return atomic_write_json(_path(record.run_id, where), record.to_json())


def _read(path: Path) -> RunRecord:
    """Read one record file; a damaged one is a one-line :class:`DamagedRecordError`."""
    try:
        with open(path, encoding="utf-8") as handle:
            return RunRecord.from_json(json.load(handle))
    except (ValueError, TypeError, UserError) as error:  # JSON, UTF-8, shape, run id
        problem = " ".join(str(error).split())
        raise DamagedRecordError(
            f"{path}: not a readable run record ({problem}); fix or delete the file"
        ) from None


def load(run_id: str, *, directory: Path | None = None) -> RunRecord:
    """The record of ``run_id``; a unique prefix of it is enough.

    Raises
    ------
    UserError
        No run matches, or the prefix matches several (they are listed).
    """
    where = directory or registry_dir()
    exact = _path(run_id, where)
    if _RUN_ID.match(run_id) and exact.is_file():
        return _read(exact)
    matches = sorted(p.stem for p in where.glob("*.json") if p.stem.startswith(run_id))
    if len(matches) == 1:
        return _read(_path(matches[0], where))
    if not matches:
        raise UserError(f"no run {run_id!r} in {where} (jobstrap status lists the runs)")
    shown = ", ".join(matches[:5]) + (" ..." if len(matches) > 5 else "")
    raise UserError(f"run {run_id!r} is ambiguous: {shown}")


def list(
    *, directory: Path | None = None, report: Callable[[str], None] | None = None
) -> _builtin_list[RunRecord]:
    """Every saved record, oldest first.

    A file that cannot be read or is not a record is skipped, so one damaged file
    does not stop ``status`` or ``cancel --all`` for every other run; ``report`` gets
    one line naming it (default: printed on stderr).
    """
    where = directory or registry_dir()
    records: _builtin_list[RunRecord] = []
    for path in sorted(where.glob("*.json")) if where.is_dir() else ():
        try:
            records.append(_read(path))
        except DamagedRecordError as error:
            (report or _to_stderr)(f"skipped {error}")
        except OSError as error:
            (report or _to_stderr)(f"skipped {path}: {error.strerror}")
    return sorted(records, key=lambda r: (r.created, r.run_id))


def _to_stderr(line: str) -> None:
    print(f"jobstrap: {line}", file=sys.stderr)


@contextlib.contextmanager
def _locked(run_id: str, where: Path) -> Iterator[None]:
    ensure_private_dir(where)
    fd = os.open(where / f".{run_id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def modify(
    run_id: str, change: Callable[[RunRecord], RunRecord], *, directory: Path | None = None
) -> RunRecord:
    """Apply ``change`` to a saved record under a lock (read, change, write); return it.

    Use it for read-modify-write changes (appending job ids as a cluster scales) that
    must not lose another process's change made at the same time.
    """
    where = directory or registry_dir()
    current = load(run_id, directory=where)
    with _locked(current.run_id, where):
        current = _read(_path(current.run_id, where))  # re-read under the lock
        new = change(current)
        save(new, directory=where)
    return new


def update(run_id: str, *, directory: Path | None = None, **changes: Any) -> RunRecord:
    """Set fields of a saved record under a lock; return the new record.

    ``run_id`` may be a unique prefix. Unknown field names raise ``TypeError``.
    """
    return modify(run_id, lambda record: replace(record, **changes), directory=directory)


def remove(run_id: str, *, directory: Path | None = None) -> None:
    """Delete a record (the run directory and jobs are left alone)."""
    where = directory or registry_dir()
    record = load(run_id, directory=where)
    with contextlib.suppress(FileNotFoundError):
        _path(record.run_id, where).unlink()
    with contextlib.suppress(FileNotFoundError):
        (where / f".{record.run_id}.lock").unlink()
