"""The run directory: one private directory per run or cluster.

The submitting side creates it (mode 0700) before anything is submitted; the job
writes its addresses, results and logs into it. Every file jobstrap writes here is
0600 and written atomically (temporary file in the same directory, then
:func:`os.replace`), so a reader on another node sees either the old content or the
new one, never half a file.

Layout (see ``docs/internals.md``)::

    <run_dir>/                 0700
      run.json                 what was submitted
      job.sh                   the rendered script
      tls/ca.pem tls/cert.pem tls/key.pem
      scheduler.json           distributed's scheduler file
      info.json                written by the scheduler rank
      logs/                    job stdout/stderr
      input.pkl                graph/function shipped by batch.submit
      result.pkl | error.pkl   written by the client rank
      progress.json            task progress
      exit_code                the app's exit code
      drain                    exists once the batch system asked the job to wind down

Reading trusts nothing it did not write: pickles and TLS files are only read from a
directory the current user owns, under a chain of directories nobody else can
rewrite (:func:`check_private`, the rule OpenSSH applies to ``authorized_keys``).
Otherwise another user of a shared, writable ``run_root`` could swap in a run
directory of their own and have their pickle loaded as ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jobstrap.errors import ConfigError, UserError

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "RunDir",
    "SchedulerInfo",
    "UnsafePathError",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_private",
    "default_run_root",
    "ensure_private_dir",
    "new_run_id",
    "read_json",
    "read_private_bytes",
]

#: Mode of every directory jobstrap creates for a run.
DIR_MODE = 0o700
#: Mode of every file jobstrap writes into a run directory.
FILE_MODE = 0o600

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class UnsafePathError(UserError):
    """A run directory or a file in it that someone other than us could have written."""


def _describe(mode: int) -> str:
    return f"mode {stat.S_IMODE(mode):04o}"


def _check_ancestors(start: Path, uid: int) -> None:
    """Every directory from ``start`` up to ``/``: owned by us or root, not writable
    by group or others unless sticky (so nobody else can rename what is inside)."""
    for directory in (start, *start.parents):
        info = os.stat(directory)
        if info.st_uid not in (uid, 0):
            raise UnsafePathError(
                f"{directory} is owned by uid {info.st_uid}, not by you or root, so its "
                "owner can replace the run directories under it; choose a run_root you own"
            )
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
            raise UnsafePathError(
                f"{directory} is writable by other users ({_describe(info.st_mode)}, no "
                f"sticky bit), so they can replace run directories under it; "
                f"run 'chmod go-w {directory}' or choose a run_root you own"
            )


def _check_own(path: Path, info: os.stat_result, uid: int) -> None:
    if info.st_uid != uid:
        raise UnsafePathError(
            f"{path} is owned by uid {info.st_uid}, not by you (uid {uid}): refusing to "
            "use it; another user may have planted it (choose a run_root you own)"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafePathError(
            f"{path} is writable by other users ({_describe(info.st_mode)}); "
            f"run 'chmod go-w {path}' or choose a run_root you own"
        )


def check_private(path: str | os.PathLike[str]) -> None:
    """Refuse a path of a run directory that someone else could have written.

    ``path`` (a run directory or a file in one) must be owned by the current user and
    not writable by group or others; each directory above it, up to ``/``, must be
    owned by the current user or root and not writable by group or others unless it
    has the sticky bit.

    Raises
    ------
    UnsafePathError
        Naming the path and the fix.
    FileNotFoundError
        If ``path`` does not exist.
    """
    real = Path(os.path.realpath(path))
    uid = os.geteuid()
    _check_own(real, os.stat(real), uid)
    _check_ancestors(real.parent, uid)


def read_private_bytes(path: str | os.PathLike[str]) -> bytes:
    """Read a file of a run directory after :func:`check_private` has vouched for it.

    The owner and mode are taken from the open file, so what is checked is what is read.

    Raises
    ------
    UnsafePathError
        If the file or a directory above it could have been written by another user.
    FileNotFoundError
        If the file does not exist.
    """
    with open(path, "rb") as handle:
        _check_own(Path(path), os.fstat(handle.fileno()), os.geteuid())
        _check_ancestors(Path(os.path.realpath(path)).parent, os.geteuid())
        return handle.read()


def default_run_root(configured: str | os.PathLike[str] | None = None) -> Path:
    """Return the parent directory for new run directories.

    Parameters
    ----------
    configured
        The profile's ``run_root``, if any.

    Returns
    -------
    Path
        ``$JOBSTRAP_RUN_ROOT`` if set, else ``configured``, else ``~/.jobstrap/runs``
        (home is the shared file system on nearly every site).
    """
    env = os.environ.get("JOBSTRAP_RUN_ROOT")
    if env:
        return Path(env).expanduser()
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".jobstrap" / "runs"


def new_run_id(prefix: str = "run") -> str:
    """Return a fresh run id that sorts by creation time, e.g. ``run-20260101T120000-3f9a1c``."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"{prefix}-{stamp}-{os.urandom(3).hex()}"


def ensure_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and missing parents) as 0700 directories; return it.

    An existing directory is accepted as it is (it may be a shared parent such as
    ``~/.jobstrap``); only directories created here get their mode forced.
    """
    target = Path(path)
    missing: list[Path] = []
    probe = target
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process won the race
            _mkdir_private(directory)
    if not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a directory")
    return target


def _mkdir_private(path: Path) -> None:
    os.mkdir(path, DIR_MODE)
    # mkdir's mode is masked by the umask, so it can only be *stricter* than 0700;
    # a directory that is still empty can be fixed up without exposing anything.
    if stat.S_IMODE(os.stat(path).st_mode) != DIR_MODE:
        os.chmod(path, DIR_MODE)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically as a 0600 file.

    The bytes go to a temporary file created 0600 in the same directory (never a
    world-readable moment), are flushed to disk, then renamed over ``path``.

    Returns
    -------
    Path
        The path written.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically as a 0600 file."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically as a 0600 file."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file; raises :class:`FileNotFoundError` or :class:`ValueError`."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@dataclass(frozen=True)
class SchedulerInfo:
    """What the scheduler rank publishes in ``info.json``.

    Attributes
    ----------
    scheduler_address
        e.g. ``"tls://10.1.0.1:41234"``.
    dashboard_address
        Where the dashboard listens: ``"http://127.0.0.1:8787/status"`` (the loopback
        of ``host``, the default) or the scheduler's address with ``dashboard_bind:
        interface``; ``None`` when the dashboard is off.
    host
        Host name of the scheduler's node.
    job_id
        ``SLURM_JOB_ID`` / ``PBS_JOBID`` of the job running the scheduler, if any.
    started
        Epoch seconds when the scheduler started.
    pid
        Process id of the scheduler.
    launch
        An id shared by every rank of one launch (job, step and restart count);
        lets ranks tell this launch's file from a stale one left by a requeued job.
    """

    scheduler_address: str
    dashboard_address: str | None
    host: str
    job_id: str | None
    started: float
    pid: int
    launch: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object written to ``info.json``."""
        data = asdict(self)
        extra = data.pop("extra")
        data.update(extra)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SchedulerInfo:
        """Build from the JSON object read from ``info.json``; unknown keys go to ``extra``."""
        known = {
            "scheduler_address",
            "dashboard_address",
            "host",
            "job_id",
            "started",
            "pid",
            "launch",
        }
        try:
            return cls(
                scheduler_address=str(data["scheduler_address"]),
                dashboard_address=data.get("dashboard_address"),
                host=str(data.get("host", "")),
                job_id=data.get("job_id"),
                started=float(data.get("started", 0.0)),
                pid=int(data.get("pid", 0)),
                launch=data.get("launch"),
                extra={k: v for k, v in data.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"malformed info.json: {error}") from error


@dataclass(frozen=True)
class RunDir:
    """One run directory; every path of the layout is a property.

    ``RunDir`` is path-like, so it can be passed wherever a path is expected.
    """

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)

    # ----------------------------------------------------------------- creation
    @classmethod
    def create(cls, parent: str | os.PathLike[str], run_id: str) -> RunDir:
        """Create a new run directory ``parent/run_id`` (0700) with its ``logs/``.

        Raises
        ------
        ConfigError
            If ``run_id`` is not a plain name (letters, digits, ``._-``).
        FileExistsError
            If the directory already exists: run directories are never reused.
        """
        if not _RUN_ID.match(run_id) or run_id in {".", ".."}:
            raise ConfigError(
                "run_id", run_id, "must be letters, digits, '.', '_' or '-' (max 128)"
            )
        ensure_private_dir(parent)
        run = cls(Path(parent) / run_id)
        _mkdir_private(run.path)
        _mkdir_private(run.logs_dir)
        check_private(run.path)  # fail before submitting, not when reading the result
        return run

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RunDir:
        """Return the existing run directory at ``path``.

        Raises
        ------
        FileNotFoundError
            If ``path`` is not a directory.
        UnsafePathError
            If another user owns it or could have replaced it (:func:`check_private`).
        """
        run = cls(Path(path))
        if not run.path.is_dir():
            raise FileNotFoundError(f"run directory {run.path} does not exist")
        check_private(run.path)
        return run

    # -------------------------------------------------------------------- paths
    @property
    def run_id(self) -> str:
        """The directory's name."""
        return self.path.name

    @property
    def run_json(self) -> Path:
        """``run.json``: what was submitted."""
        return self.path / "run.json"

    @property
    def job_script(self) -> Path:
        """``job.sh``: the rendered script that was submitted."""
        return self.path / "job.sh"

    @property
    def tls_dir(self) -> Path:
        """``tls/``: the run's CA, certificate and key."""
        return self.path / "tls"

    @property
    def ca_file(self) -> Path:
        """``tls/ca.pem``."""
        return self.tls_dir / "ca.pem"

    @property
    def cert_file(self) -> Path:
        """``tls/cert.pem``."""
        return self.tls_dir / "cert.pem"

    @property
    def key_file(self) -> Path:
        """``tls/key.pem``."""
        return self.tls_dir / "key.pem"

    @property
    def scheduler_file(self) -> Path:
        """``scheduler.json``: distributed's scheduler file."""
        return self.path / "scheduler.json"

    @property
    def info_file(self) -> Path:
        """``info.json``: the scheduler's addresses, host, job id, start time, pid."""
        return self.path / "info.json"

    @property
    def logs_dir(self) -> Path:
        """``logs/``: job stdout and stderr."""
        return self.path / "logs"

    @property
    def input_file(self) -> Path:
        """``input.pkl``: what ``batch.submit`` shipped."""
        return self.path / "input.pkl"

    @property
    def result_file(self) -> Path:
        """``result.pkl``: the client rank's result."""
        return self.path / "result.pkl"

    @property
    def error_file(self) -> Path:
        """``error.pkl``: the client rank's exception."""
        return self.path / "error.pkl"

    @property
    def progress_file(self) -> Path:
        """``progress.json``: task progress reported by the client rank."""
        return self.path / "progress.json"

    @property
    def exit_code_file(self) -> Path:
        """``exit_code``: the app's exit code."""
        return self.path / "exit_code"

    @property
    def drain_file(self) -> Path:
        """``drain``: exists once the batch system asked the job to wind down."""
        return self.path / "drain"

    # ------------------------------------------------------------------ helpers
    def write_json(self, name: str | os.PathLike[str], data: Any) -> Path:
        """Atomically write ``data`` as JSON to ``name`` (relative to the run dir), 0600."""
        return atomic_write_json(self.path / name, data)

    def read_json(self, name: str | os.PathLike[str]) -> Any:
        """Read the JSON file ``name`` (relative to the run dir)."""
        return read_json(self.path / name)

    def write_info(self, info: SchedulerInfo) -> Path:
        """Atomically write ``info.json`` (0600)."""
        return atomic_write_json(self.info_file, info.to_json())

    def read_info(self) -> SchedulerInfo:
        """Read ``info.json``.

        Raises
        ------
        FileNotFoundError
            If the scheduler has not written it (yet).
        ValueError
            If it is not valid JSON with a ``scheduler_address``.
        UnsafePathError
            If another user could have written it (its address is where we connect).
        """
        data = json.loads(read_private_bytes(self.info_file).decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{self.info_file}: expected a JSON object")
        return SchedulerInfo.from_json(data)

    def write_exit_code(self, code: int) -> Path:
        """Atomically write the app's exit code (one line, 0600)."""
        return atomic_write_text(self.exit_code_file, f"{int(code)}\n")

    def read_exit_code(self) -> int | None:
        """Return the app's exit code, or ``None`` if it has not been written."""
        try:
            return int(self.exit_code_file.read_text(encoding="utf-8").strip())
        except FileNotFoundError:
            return None
