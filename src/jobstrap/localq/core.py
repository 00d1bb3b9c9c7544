"""The local queue: a small batch system whose "nodes" are this machine.

It is what ``system: local`` submits to, through the same batchctl and the same kind of
job script as Slurm or PBS, so a newcomer without a batch system runs exactly what a
cluster would. Commands (argv only; ``jobstrap.systems.local`` builds them)::

    python -m jobstrap.localq submit [--key=value ...] SCRIPT   -> prints the job id
    python -m jobstrap.localq status ID [ID ...]                -> ID|STATE|EXIT|REASON|NAME
    python -m jobstrap.localq cancel ID [ID ...]
    python -m jobstrap.localq signal --signal=SIG ID [ID ...]
    python -m jobstrap.localq find NAME                         -> ids of live jobs so named
    python -m jobstrap.localq limits                            -> MaxArraySize=1001
    python -m jobstrap.localq launch -n N -- COMMAND            -> N ranks, without MPI

``submit`` reads ``#JOBSTRAP --key=value`` directives from the script's header (the
first block of comment lines, as ``sbatch`` does); command-line options override them:

``--job-name``, ``--output``, ``--error`` (``%j`` job id, ``%A`` array id, ``%a`` task,
``%x`` name, ``%%``), ``--time`` (seconds or any walltime form), ``--ntasks``,
``--array=0-9[%limit]`` (or ``1,3,5``), ``--signal=[B:]SIG@SECONDS``.

Each job gets a numeric id from a counter file under a lock and a *supervisor*
(``python -m jobstrap.localq _supervise ID``) in a session of its own, detached from
the submitting process. The supervisor starts every array task as its own process
group (its own session, so a job never receives the terminal's signals), with
``JOBSTRAP_JOB_ID``, ``JOBSTRAP_ARRAY_JOB_ID``, ``JOBSTRAP_ARRAY_TASK_ID`` and
``JOBSTRAP_NTASKS`` set, and enforces the walltime the way Slurm does: the ``--signal``
warning first, ``SIGTERM`` at the walltime, ``SIGKILL`` after a grace
(``$JOBSTRAP_LOCAL_KILL_WAIT`` seconds, default 10) -> ``TIMEOUT``.

Every process a task starts also carries ``JOBSTRAP_LOCALQ_JOB=<id>[_<task>]`` in its
environment. That is the local stand-in for a cgroup: processes that left the task's
process group (``setsid``, daemons) are still found and ended with it.

The spool lives in ``$JOBSTRAP_LOCAL_SPOOL`` or ``~/.jobstrap/local`` (0700)::

    <spool>/lock  next_id
    <spool>/jobs/<id>/state.json   the job and its tasks (atomic rewrites under jobs/<id>/lock)
    <spool>/jobs/<id>/script       the script as submitted
    <spool>/jobs/<id>/cancel       exists once the job was cancelled
    <spool>/jobs/<id>/supervisor.log

If the supervisor dies (``kill -9``, a reboot), ``status`` notices (pid plus process
start time, so a reused pid is not mistaken for it): tasks whose processes are gone
become ``MISSING``; tasks still running are killed (nobody enforces their walltime
any more) and become ``FAILED``; both with reason ``SupervisorLost``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import secrets
import shlex
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_ARRAY_SIZE",
    "Directives",
    "main",
    "parse_directives",
    "spool_dir",
]

#: Largest array index + 1, as Slurm's ``MaxArraySize``.
MAX_ARRAY_SIZE = 1001
PREFIX = "#JOBSTRAP"
#: Environment variable that marks every process of a task (see the module docstring).
MARKER = "JOBSTRAP_LOCALQ_JOB"
MARKER_SPOOL = "JOBSTRAP_LOCALQ_SPOOL"

_TERMINAL = {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "MISSING"}
_POLL = 0.1  # seconds between supervisor checks: cheap (a few syscalls), keeps cancel snappy
#: A submitted job whose supervisor never recorded itself within this long is MISSING.
_START_GRACE = 60.0
_DEFAULT_WALLTIME = 3600
_OPTIONS = ("job-name", "output", "error", "time", "ntasks", "array", "signal")


class LocalQueueError(Exception):
    """A user error in a localq command: printed on one line, exit code 1."""


# --------------------------------------------------------------------------- spool


def spool_dir(environ: dict[str, str] | None = None) -> Path:
    """The spool directory: ``$JOBSTRAP_LOCAL_SPOOL`` or ``~/.jobstrap/local``."""
    env = os.environ if environ is None else environ
    configured = env.get("JOBSTRAP_LOCAL_SPOOL")
    return Path(configured).expanduser() if configured else Path.home() / ".jobstrap" / "local"


def _private_dir(path: Path) -> Path:
    # Parents we create are private too; an existing parent (~) is left alone.
    for directory in reversed([path, *path.parents]):
        if not directory.exists():
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, 0o700)
                os.chmod(directory, 0o700)  # mkdir's mode is masked by the umask
    return path


def _atomic_write(path: Path, text: str) -> None:
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
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _job_dir(spool: Path, job_id: str) -> Path:
    return spool / "jobs" / job_id


def _next_id(spool: Path) -> str:
    with _locked(spool / "lock"):
        counter = spool / "next_id"
        try:
            value = int(counter.read_text(encoding="ascii").strip() or "1")
        except FileNotFoundError:
            value = 1
        # A job directory left by an older counter (the file was deleted) is never reused.
        while _job_dir(spool, str(value)).exists():
            value += 1
        _atomic_write(counter, f"{value + 1}\n")
        _private_dir(_job_dir(spool, str(value)))
    return str(value)


def _read_state(spool: Path, job_id: str) -> dict[str, Any] | None:
    try:
        data = json.loads((_job_dir(spool, job_id) / "state.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_state(spool: Path, state: dict[str, Any]) -> None:
    text = json.dumps(state, indent=1, sort_keys=True) + "\n"
    _atomic_write(_job_dir(spool, str(state["id"])) / "state.json", text)


@contextlib.contextmanager
def _updating(spool: Path, job_id: str) -> Iterator[dict[str, Any]]:
    """Read-modify-write a job's state under its lock."""
    with _locked(_job_dir(spool, job_id) / "lock"):
        state = _read_state(spool, job_id)
        if state is None:
            raise LocalQueueError(f"invalid job id {job_id}")
        yield state
        _write_state(spool, state)


# ----------------------------------------------------------------------- directives


@dataclass
class Directives:
    """The options of one submission (script header, then the command line)."""

    job_name: str = ""
    output: str = ""
    error: str = ""
    time: int = _DEFAULT_WALLTIME
    ntasks: int = 1
    array: list[int] | None = None
    array_limit: int | None = None
    signal: tuple[int, int] | None = None  #: (signal number, seconds before the walltime)
    given: set[str] = field(default_factory=set)

    def apply(self, key: str, value: str) -> None:
        """Set one option from its ``--key=value`` text; raises on a bad value."""
        if key not in _OPTIONS:
            allowed = ", ".join(f"--{o}" for o in _OPTIONS)
            raise LocalQueueError(f"unknown option --{key} (the local queue knows {allowed})")
        self.given.add(key)
        if key == "job-name":
            self.job_name = value
        elif key == "output":
            self.output = value
        elif key == "error":
            self.error = value
        elif key == "time":
            self.time = _parse_time(value)
        elif key == "ntasks":
            if not value.isdigit() or int(value) < 1:
                raise LocalQueueError(f"--ntasks={value}: expected a whole number >= 1")
            self.ntasks = int(value)
        elif key == "array":
            self.array, self.array_limit = _parse_array(value)
        elif key == "signal":
            self.signal = _parse_signal(value)


def _parse_time(value: str) -> int:
    from jobstrap.config.units import parse_walltime
    from jobstrap.errors import ConfigError

    try:
        return parse_walltime(value, "--time")
    except ConfigError as error:
        raise LocalQueueError(str(error)) from None


def _parse_array(value: str) -> tuple[list[int], int | None]:
    spec, _, limit_text = value.partition("%")
    indices: set[int] = set()
    for part in filter(None, spec.split(",")):
        match = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part.strip())
        if not match:
            raise LocalQueueError(f"--array={value}: expected ranges like 0-9, 1,3,5 or 0-9%2")
        start = int(match[1])
        stop = int(match[2]) if match[2] else start
        step = int(match[3]) if match[3] else 1
        if stop < start or step < 1:
            raise LocalQueueError(f"--array={value}: empty range {part}")
        indices.update(range(start, stop + 1, step))
    if not indices:
        raise LocalQueueError(f"--array={value}: no tasks")
    if max(indices) >= MAX_ARRAY_SIZE:
        raise LocalQueueError(
            f"--array={value}: index {max(indices)} exceeds MaxArraySize={MAX_ARRAY_SIZE}"
        )
    limit = None
    if limit_text:
        if not limit_text.isdigit() or int(limit_text) < 1:
            raise LocalQueueError(f"--array={value}: the %limit must be a whole number >= 1")
        limit = int(limit_text)
    return sorted(indices), limit


def _signal_number(name: str) -> int:
    text = name.strip().upper()
    if text.isdigit():
        number = int(text)
        if number in {s.value for s in signal.Signals}:
            return number
    else:
        with contextlib.suppress(AttributeError):
            return int(getattr(signal, text if text.startswith("SIG") else "SIG" + text))
    raise LocalQueueError(f"unknown signal {name!r}")


def _parse_signal(value: str) -> tuple[int, int]:
    # Slurm's B: prefix (signal the batch shell only) is accepted; the whole group is
    # signalled either way, because locally the "steps" are the shell's own children.
    text = value.removeprefix("B:").removeprefix("R:")
    name, _, seconds = text.partition("@")
    if seconds and not seconds.isdigit():
        raise LocalQueueError(f"--signal={value}: expected SIG@SECONDS, e.g. USR1@60")
    return _signal_number(name), int(seconds) if seconds else 60


def parse_directives(script_text: str) -> list[tuple[str, str]]:
    """``(key, value)`` pairs from the script's ``#JOBSTRAP --key=value`` header.

    Like ``sbatch``, only the first block of comment lines counts: the first line that
    is neither blank nor a comment ends the header.
    """
    pairs: list[tuple[str, str]] = []
    for line in script_text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("#"):
            break
        if not stripped.startswith(PREFIX + " ") and stripped != PREFIX:
            continue
        for word in shlex.split(stripped[len(PREFIX) :], comments=False):
            pairs.append(_split_option(word))
    return pairs


def _split_option(word: str) -> tuple[str, str]:
    if not word.startswith("--") or "=" not in word:
        raise LocalQueueError(f"directive {word!r}: expected --key=value")
    key, _, value = word[2:].partition("=")
    return key, value


# ------------------------------------------------------------------------- processes


def _create_time(pid: int) -> float | None:
    """The process's start time, or None if it is gone (or a zombie)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(process.create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def _alive(pid: int | None, create_time: float | None) -> bool:
    if not pid:
        return False
    started = _create_time(pid)
    # A different start time means the pid was reused by an unrelated process.
    return started is not None and (create_time is None or abs(started - create_time) < 0.05)


def _task_processes(spool: Path, key: str, pgid: int | None) -> list[int]:
    """Live pids of a task: its process group plus every process carrying its marker.

    The marker is the local stand-in for a cgroup: it finds what left the group
    (``setsid``, daemons). Zombies do not count: they are dead, only not yet reaped
    (``killpg(pgid, 0)`` would still succeed on them).
    """
    import psutil

    found = []
    me = os.getpid()
    for process in psutil.process_iter():
        if process.pid == me:
            continue
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            if pgid and os.getpgid(process.pid) == pgid:
                found.append(process.pid)
                continue
            env = process.environ()
        except (psutil.Error, OSError):
            continue
        if env.get(MARKER) == key and env.get(MARKER_SPOOL) == str(spool):
            found.append(process.pid)
    return found


def _signal_task(spool: Path, key: str, pgid: int | None, signum: int, *, sweep: bool) -> None:
    """Send ``signum`` to the task's process group and, with ``sweep``, to all its processes."""
    if pgid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)
    if sweep:
        for pid in _task_processes(spool, key, pgid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)


def _task_key(job_id: str, task: str) -> str:
    return job_id if task == "" else f"{job_id}_{task}"


def _kill_wait() -> float:
    try:
        return max(0.0, float(os.environ.get("JOBSTRAP_LOCAL_KILL_WAIT", "10")))
    except ValueError:
        return 10.0


# ----------------------------------------------------------------------------- submit


def _expand(pattern: str, job_id: str, task: str, name: str) -> str:
    replacements = {
        "%j": _task_key(job_id, task),
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
        directives.apply(*_split_option(option))
    name = directives.job_name or path.name
    tasks = [str(i) for i in directives.array] if directives.array is not None else [""]

    spool = _private_dir(spool_dir())
    _private_dir(spool / "jobs")
    job_id = _next_id(spool)
    job_dir = _job_dir(spool, job_id)
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
    _write_state(spool, state)
    _start_supervisor(spool, job_id)
    return job_id


def _start_supervisor(spool: Path, job_id: str) -> None:
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in (MARKER, MARKER_SPOOL)}
    # A job that submits a job must not make the new one part of itself: the marker
    # is dropped, and the supervisor sits in a session of its own.
    env["JOBSTRAP_LOCAL_SPOOL"] = str(spool)
    log = open(_job_dir(spool, job_id) / "supervisor.log", "ab")  # noqa: SIM115
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
    created = _create_time(process.pid)
    with _updating(spool, job_id) as state:
        if not state["supervisor"].get("pid"):
            state["supervisor"] = {"pid": process.pid, "create_time": created}


# -------------------------------------------------------------------------- supervise


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
        self.job_dir = _job_dir(spool, job_id)
        state = _read_state(spool, job_id)
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
        with _updating(self.spool, self.job_id) as state:
            state["tasks"][task].update(changes)
            self.state = state

    def _cancelled(self, task: str) -> bool:
        return self.terminated or _cancel_marker(self.spool, self.job_id, task).exists()

    def run(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        with _updating(self.spool, self.job_id) as state:
            state["supervisor"] = {"pid": os.getpid(), "create_time": _create_time(os.getpid())}
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

        with _updating(self.spool, self.job_id) as state:
            self.state = state
            record = state["tasks"][task]
            if record["state"] != "PENDING":
                return  # cancelled while it waited
            # Claimed under the lock: from now on cancel signals it instead of dropping it.
            # A start time goes with the claim so that no reader sees a RUNNING task
            # without its elapsed and remaining time (the launch below refines it).
            record.update(state="RUNNING", reason="Starting", start=time.time())
        key = _task_key(self.job_id, task)
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
                _private_dir(Path(path).parent)
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
            create_time=_create_time(process.pid),
            start=now,
        )

    def _end(self, run: _Running, why: str, signum: int) -> None:
        key = _task_key(self.job_id, run.task)
        run.ending = run.ending or why
        _signal_task(self.spool, key, run.process.pid, signum, sweep=True)
        if run.kill_at is None:
            run.kill_at = time.monotonic() + _kill_wait()

    def _check(self, run: _Running) -> None:
        key = _task_key(self.job_id, run.task)
        elapsed = time.time() - run.start
        if not run.ending and self._cancelled(run.task):
            self._end(run, "CANCELLED", signal.SIGTERM)
        if self.signal and not run.warned and elapsed >= self.walltime - self.signal[1]:
            run.warned = True
            _signal_task(self.spool, key, run.process.pid, self.signal[0], sweep=False)
        if elapsed >= self.walltime and not run.ending:
            self._end(run, "TIMEOUT", signal.SIGTERM)
        overdue = run.kill_at is not None and time.monotonic() >= run.kill_at
        if not run.leader_done:
            code = run.process.poll()
            if code is None:
                if overdue:
                    _signal_task(self.spool, key, run.process.pid, signal.SIGKILL, sweep=True)
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
        if _task_processes(self.spool, key, run.process.pid):
            if run.kill_at is None:
                _signal_task(self.spool, key, run.process.pid, signal.SIGTERM, sweep=True)
                run.kill_at = time.monotonic() + _kill_wait()
                self._update(run.task, reason="Completing")
            elif overdue:
                _signal_task(self.spool, key, run.process.pid, signal.SIGKILL, sweep=True)
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
        with contextlib.suppress(LocalQueueError), _updating(spool, job_id) as state:
            for record in state["tasks"].values():
                if record["state"] not in _TERMINAL:
                    record.update(state="FAILED", reason=f"SupervisorError: {error}")
        raise


# ----------------------------------------------------------------- status and friends


def _split_id(text: str) -> tuple[str, str | None]:
    match = re.fullmatch(r"(\d+)(?:_(\d+))?", text.strip())
    if not match:
        raise LocalQueueError(f"invalid job id {text!r}")
    return match[1], match[2]


def _reconcile(spool: Path, job_id: str) -> dict[str, Any] | None:
    """The job's state, with the supervisor's death (if any) accounted for."""
    state = _read_state(spool, job_id)
    if state is None or all(t["state"] in _TERMINAL for t in state["tasks"].values()):
        return state
    supervisor = state["supervisor"]
    if _alive(supervisor.get("pid"), supervisor.get("create_time")):
        return state
    if not supervisor.get("pid") and time.time() - state["submitted"] < _START_GRACE:
        return state  # submitted a moment ago; the supervisor is still starting
    with _updating(spool, job_id) as state:
        supervisor = state["supervisor"]
        if _alive(supervisor.get("pid"), supervisor.get("create_time")):
            return state
        for task, record in state["tasks"].items():
            if record["state"] in _TERMINAL:
                continue
            key = _task_key(job_id, task)
            if _task_processes(spool, key, record.get("pid")):
                # Nobody enforces its walltime any more: end it rather than leak it.
                _signal_task(spool, key, record.get("pid"), signal.SIGKILL, sweep=True)
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
            f"{_task_key(job_id, task)}|{record['state']}|{code}|{reason}|{state['name']}"
            f"|{elapsed}|{left}"
        )
    return lines


def _cancel_marker(spool: Path, job_id: str, task: str) -> Path:
    return _job_dir(spool, job_id) / ("cancel" + (f"_{task}" if task else ""))


def cmd_cancel(ids: Sequence[str]) -> None:
    """Cancel jobs or array tasks: pending ones at once, running ones by SIGTERM then SIGKILL."""
    spool = spool_dir()
    for job_id, task, _ in list(_select(spool, ids)):
        key = _task_key(job_id, task)
        with _updating(spool, job_id) as state:
            record = state["tasks"][task]
            if record["state"] in _TERMINAL:
                continue
            if record["state"] == "PENDING":
                # The supervisor re-reads the state under this lock before starting a task.
                record.update(state="CANCELLED", reason="Cancelled", end=time.time())
                continue
            supervisor = state["supervisor"]
            supervised = _alive(supervisor.get("pid"), supervisor.get("create_time"))
            pgid = record.get("pid")
        _cancel_marker(spool, job_id, task).touch()
        # Signal at once so cancel is prompt; a live supervisor escalates and records it.
        _signal_task(spool, key, pgid, signal.SIGTERM, sweep=True)
        if supervised:
            continue
        deadline = time.monotonic() + min(_kill_wait(), 5.0)
        while time.monotonic() < deadline and _task_processes(spool, key, pgid):
            time.sleep(0.1)
        _signal_task(spool, key, pgid, signal.SIGKILL, sweep=True)
        with _updating(spool, job_id) as state:
            state["tasks"][task].update(state="CANCELLED", reason="Cancelled", end=time.time())


def cmd_signal(signal_name: str, ids: Sequence[str]) -> None:
    """Send a signal to every process of running jobs or tasks."""
    spool = spool_dir()
    signum = _signal_number(signal_name)
    for job_id, task, state in list(_select(spool, ids)):
        record = state["tasks"][task]
        if record["state"] == "RUNNING":
            _signal_task(spool, _task_key(job_id, task), record.get("pid"), signum, sweep=True)


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
        state = _read_state(spool, entry.name)
        if state is None or state["name"] != name:
            continue
        state = _reconcile(spool, entry.name)
        if state and any(t["state"] not in _TERMINAL for t in state["tasks"].values()):
            found.append(entry.name)
    return found


# ---------------------------------------------------------------------------- launch


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
                kill_at = time.monotonic() + _kill_wait()
        if kill_at is not None and time.monotonic() >= kill_at:
            forward(signal.SIGKILL, None)
        time.sleep(0.05)
    if not first_failure:
        for process in processes:
            if process.returncode:
                code = process.returncode
                return code if code > 0 else 128 - code
    return first_failure


# ----------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobstrap.localq",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    submit = commands.add_parser("submit", help="queue a job script, print its id")  # see main
    submit.add_argument("options", nargs="*", metavar="--key=value")
    submit.add_argument("script")
    status = commands.add_parser("status", help="ID|STATE|EXIT|REASON|NAME per task")
    status.add_argument("ids", nargs="+")
    cancel = commands.add_parser("cancel", help="cancel jobs or array tasks")
    cancel.add_argument("ids", nargs="+")
    sig = commands.add_parser("signal", help="signal running jobs")
    sig.add_argument("--signal", "-s", required=True)
    sig.add_argument("ids", nargs="+")
    find = commands.add_parser("find", help="ids of live jobs with this name")
    find.add_argument("--uid", type=int, help="only jobs of this user id")
    find.add_argument("name")
    commands.add_parser("limits", help="print the queue's limits")
    launch = commands.add_parser("launch", help="start N ranks of a command (no MPI)")
    launch.add_argument("-n", "--ntasks", type=int, required=True)
    launch.add_argument("argv", nargs="+", metavar="-- COMMAND")
    supervise = commands.add_parser("_supervise", help=argparse.SUPPRESS)
    supervise.add_argument("job_id")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one localq command; returns the process exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["submit"] and not {"-h", "--help"} & set(words):
        # Options come before the script, as with sbatch; argparse would take them as its own.
        try:
            if len(words) < 2 or words[-1].startswith("--"):
                raise LocalQueueError("submit needs a script: submit [--key=value ...] SCRIPT")
            print(cmd_submit(words[1:-1], words[-1]), flush=True)
        except LocalQueueError as error:
            print(f"localq: error: {error}", file=sys.stderr)
            return 1
        return 0
    args = _parser().parse_args(words)
    try:
        if args.command == "status":
            for line in cmd_status(args.ids):
                print(line)
        elif args.command == "cancel":
            cmd_cancel(args.ids)
        elif args.command == "signal":
            cmd_signal(args.signal, args.ids)
        elif args.command == "find":
            for job_id in cmd_find(args.name, args.uid):
                print(job_id)
        elif args.command == "limits":
            print(f"MaxArraySize={MAX_ARRAY_SIZE}")
        elif args.command == "_supervise":
            cmd_supervise(args.job_id)
        elif args.command == "launch":
            return cmd_launch(args.ntasks, args.argv)
    except LocalQueueError as error:
        print(f"localq: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
