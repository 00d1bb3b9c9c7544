"""The future of one graph or app job: :class:`JobFuture`.

Results come from the run directory first (``result.pkl`` / ``error.pkl``, a cheap
``stat``) and job states from the process's one
:class:`~jobstrap.batchctl.watcher.Watcher` second (one query per poll for every job
watched), so a thousand futures do not hammer the controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import time
from collections.abc import Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobstrap.backoff import exponential_delay
from jobstrap.batch.progress import (
    Progress,
    ProgressDisplay,
    read_progress,
    render_html,
    render_text,
)
from jobstrap.batch.remote import rebuild
from jobstrap.errors import JobFailedError, UserError
from jobstrap.jobs.diagnose import diagnose_record, last_traceback
from jobstrap.states import JobState
from jobstrap.store.files import read_tail
from jobstrap.store.rundir import RunDir
from jobstrap.store.runfiles import CorruptRunFileError, read_framed

if TYPE_CHECKING:
    from jobstrap.batchctl.control import BatchControl
    from jobstrap.batchctl.watcher import Watcher
    from jobstrap.store.registry import RunRecord
    from jobstrap.systems import JobRecord

__all__ = ["JobFuture", "result_poll_delays"]

#: Seconds, for jobs that ended early (TIMEOUT, CANCELLED, ...): a result is unlikely.
_SHORT_GRACE = 2.0
_STDERR_TAIL = 20


def result_poll_delays(
    first: float = 0.05, fast: float = 0.1, slow: float = 0.5, fast_for: float = 30.0
) -> Generator[float, None, None]:
    """Pauses between looks for a run's result file, while someone waits for it.

    A look is a stat or two on the run directory, cheap even on a parallel file
    system, and a short job's result should be seen when it lands, not up to half
    a second later: the one backoff schedule (:func:`jobstrap.backoff.exponential_delay`)
    from ``first``, capped at ``fast`` for the first ``fast_for`` seconds of a wait and
    at ``slow`` after. The controller is never asked more often for this (job states
    come from the shared watcher).
    """
    started = time.monotonic()
    attempt = 1
    while True:
        cap = fast if time.monotonic() - started < fast_for else slow
        yield exponential_delay(attempt, initial=first, maximum=cap)
        if exponential_delay(attempt, initial=first, maximum=slow) < cap:
            attempt += 1  # only while it grows: the schedule's doubling stays finite


@dataclass(frozen=True)
class _Outcome:
    """How a run ended, as far as its files say."""

    kind: str  #: "result", "error" or "exit"
    payload: Any = None


class JobFuture:
    """The future of one graph (or app) job.

    Results come from the run directory first (``result.pkl`` / ``error.pkl``, checked
    with a cheap ``stat``) and the process's watcher second, so waiting costs the
    controller nothing beyond the watcher's one shared poll.

    Attributes
    ----------
    run_id, run_dir, job_id, job_ids, system, kind
    """

    def __init__(
        self,
        record: RunRecord,
        *,
        poll_interval: float | None = None,
        started_by_us: bool = False,
        name: str | None = None,
    ) -> None:
        self.run_id = record.run_id
        self.run_dir = Path(record.run_dir)
        self.job_ids = list(record.job_ids)
        self.job_id = self.job_ids[0] if self.job_ids else ""
        self.system = record.system
        self.kind = record.kind
        self.created = record.created
        self._record = record
        self._run = RunDir(self.run_dir)
        self._poll_interval = float(poll_interval or _profile_poll(record) or 5)
        self._terminal_since: float | None = None
        self._terminal_damage = ""
        self._outcome: _Outcome | None = None
        self._last_poke = 0.0
        if self.job_ids:
            watcher = self._watcher()
            watcher.configure(poll_interval=self._poll_interval)
            watcher.track(self.job_ids, started_by_us=started_by_us, name=name)

    # -- construction -------------------------------------------------------------------

    @classmethod
    def attach(cls, run_id: str) -> JobFuture:
        """The future of a run submitted elsewhere (another process, an earlier session).

        Parameters
        ----------
        run_id
            The run id, or a unique prefix of it (``jobstrap status`` lists them).
        """
        from jobstrap.store import registry

        record = registry.load(run_id)
        if record.kind not in ("graph", "app"):
            raise UserError(f"run {record.run_id} is a {record.kind}, not a graph or app job")
        return cls(record, started_by_us=False)

    def _batchctl(self) -> BatchControl:
        from jobstrap.batchctl.control import BatchControl

        return BatchControl.for_system(self.system)

    def _watcher(self) -> Watcher:
        return self._batchctl().watcher

    def _result_grace(self) -> float:
        """Seconds a finished job may take to show its result file (NFS caches lag)."""
        from jobstrap.systems import get_system

        return get_system(self.system).result_grace

    def __repr__(self) -> str:
        return f"<JobFuture {self.run_id} job {self.job_id} {self.state}>"

    # -- state --------------------------------------------------------------------------

    def _job_record(self) -> JobRecord | None:
        if not self.job_ids:
            return None
        try:
            return self._watcher().record(self.job_id)
        except KeyError:
            return None

    @property
    def state(self) -> JobState:
        """The run's state: COMPLETED/FAILED once its result/error exists, else the job's."""
        outcome = self._check_files()
        if outcome is not None and outcome.kind == "result":
            return JobState.COMPLETED
        if outcome is not None and outcome.kind == "error":
            return JobState.FAILED
        record = self._job_record()
        return record.state if record is not None else JobState.MISSING

    def done(self) -> bool:
        """True once the result or error is there, or the job has ended."""
        return self._poll() is not None or (
            (record := self._job_record()) is not None and record.state.is_terminal
        )

    def refresh(self, timeout: float = 30.0) -> JobState:
        """Wait (up to ``timeout`` s) for the watcher's next answer; return the state.

        A future made by :meth:`attach` knows nothing until the watcher first asked
        the batch system; this makes sure it has.
        """
        watcher = self._watcher()
        polls = watcher.polls
        watcher.poke()
        deadline = time.monotonic() + timeout
        while watcher.polls <= polls and time.monotonic() < deadline:
            if self._check_files() is not None:
                break
            time.sleep(0.05)
        return self.state

    def log_files(self) -> tuple[str, str]:
        """The job's ``(stdout, stderr)`` files."""
        return self._record.log_paths(self.job_id)

    def progress(self) -> Progress | None:
        """The latest task progress the job reported (None before it started)."""
        return read_progress(self.run_dir)

    # -- results ------------------------------------------------------------------------

    def _check_files(self) -> _Outcome | None:
        """The outcome if the run directory has one (a damaged file is no outcome)."""
        if self._outcome is not None:
            return self._outcome
        if self.kind == "app":
            return None  # an app's outcome is its exit code, known when the job ends
        for kind, path in (("error", self._run.error_file), ("result", self._run.result_file)):
            try:
                payload = read_framed(path)
            except FileNotFoundError:
                continue
            except CorruptRunFileError:
                continue  # perhaps mid-copy; if the job has ended, _poll says so
            self._outcome = _Outcome(kind, payload)
            return self._outcome
        return None

    def _poll(self) -> _Outcome | None:
        """One non-blocking look: the outcome, or a failure outcome once the job ended."""
        outcome = self._check_files()
        if outcome is not None:
            return outcome
        record = self._job_record()
        if record is None or not record.state.is_terminal:
            self._terminal_since = None
            now = time.monotonic()
            if now - self._last_poke >= self._poll_interval and self.job_ids:
                # Someone is waiting: ask the watcher to poll at its base rate again.
                self._watcher().poke()
                self._last_poke = now
            return None
        if self.kind == "app":
            self._outcome = _Outcome("exit", record)
            return self._outcome
        now = time.monotonic()
        if self._terminal_since is None:
            self._terminal_since = now
            self._terminal_damage = self._damaged()
        # A file that is missing may only be invisible yet (NFS caches negative lookups
        # for up to a minute); one that is there but damaged will not heal by waiting.
        ended_normally = record.state in (JobState.COMPLETED, JobState.FAILED)
        expected = ended_normally and not self._terminal_damage
        grace = self._result_grace() if expected else _SHORT_GRACE
        if now - self._terminal_since < grace:
            return None  # the result file may still be on its way through the file system
        self._outcome = _Outcome("failed", self._failure(record))
        return self._outcome

    def _failure(self, record: JobRecord) -> JobFailedError:
        """The error of a job that ended without an outcome, explained by :func:`diagnose`."""
        code = self._run.read_exit_code()  # the app's own, when the client rank wrote it
        tail = self._stderr_tail()
        python = _profile_value(self._record, "python")
        diagnosis = diagnose_record(
            replace(record, exit_code=record.exit_code if code is None else code),
            tail,
            python if isinstance(python, str) else "python3",
        )
        details = [diagnosis.message]
        damaged = self._damaged()
        if damaged:
            details.append(damaged)
        elif record.state is JobState.COMPLETED:
            details.append("the job ended without writing result.pkl")
        # The app's traceback says why; the ranks' log lines around it rarely do.
        shown = "\n".join(last_traceback(tail)) or tail
        _, err = self._record.log_paths(self.job_id) if self.job_id else ("", "")
        return JobFailedError(
            self.job_id, record.state.value, shown, "; ".join(details), log_path=err
        )

    def _damaged(self) -> str:
        for path in (self._run.result_file, self._run.error_file):
            try:
                read_framed(path)
            except FileNotFoundError:
                continue
            except CorruptRunFileError as error:
                return f"{path.name} is damaged and was not used ({error})"
        return ""

    def _stderr_tail(self, lines: int = _STDERR_TAIL) -> str:
        _, err = self._record.log_paths(self.job_id) if self.job_id else ("", "")
        return _log_text(err, lines) if err else ""

    def wait(self, timeout: float | None = None, *, progress: bool = False) -> JobState:
        """Block until the run has an outcome (or ``timeout`` seconds pass); return the state.

        Raises
        ------
        TimeoutError
            After ``timeout`` seconds, naming the state last seen.
        """
        self._wait(timeout, progress)
        return self.state

    def _wait(self, timeout: float | None, progress: bool | ProgressDisplay) -> _Outcome:
        deadline = None if timeout is None else time.monotonic() + timeout
        display = progress if isinstance(progress, ProgressDisplay) else None
        if progress is True:
            display = ProgressDisplay(self.run_id)
        delays = result_poll_delays()
        try:
            while True:
                outcome = self._poll()
                if display is not None:
                    self.show_progress(display)
                if outcome is not None:
                    return outcome
                if deadline is not None and time.monotonic() >= deadline:
                    record = self._job_record()
                    seen = record.state if record is not None else "unknown"
                    raise TimeoutError(
                        f"run {self.run_id} (job {self.job_id}) has no result after "
                        f"{timeout:g} s; last state {seen}"
                    )
                delay = next(delays)
                pause = delay if deadline is None else min(delay, deadline - time.monotonic())
                time.sleep(max(0.0, pause))
        finally:
            if display is not None and progress is True:
                display.close()

    def show_progress(self, display: ProgressDisplay) -> None:
        """Draw the current state and progress on ``display``."""
        record = self._job_record()
        state = self.state
        reason = record.reason if record is not None else ""
        waited = time.time() - self.created if state is JobState.PENDING else None
        display.update(state, self.progress(), reason=reason, waited=waited)

    def result(self, timeout: float | None = None, *, progress: bool = False) -> Any:
        """Wait for the run and return its result (an app's: its exit code).

        Parameters
        ----------
        timeout
            Seconds to wait (default: as long as it takes).
        progress
            Show the queue wait and task progress while waiting (terminal or notebook).

        Raises
        ------
        Exception
            The graph's own exception, rebuilt here, with the remote traceback chained
            (``__cause__``) and in ``remote_traceback``; :class:`RemoteError` when the
            original type cannot be rebuilt here.
        JobFailedError
            The job ended without a result (TIMEOUT, CANCELLED, OUT_OF_MEMORY,
            NODE_FAIL, MISSING, ...), with the state and the stderr tail.
        TimeoutError
            No outcome within ``timeout`` seconds (the job keeps running).
        """
        return self._resolve(self._wait(timeout, progress))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait like :meth:`result`; return the exception it would raise, or None."""
        try:
            self.result(timeout)
        except TimeoutError:
            raise
        except Exception as error:
            return error
        return None

    def _resolve(self, outcome: _Outcome) -> Any:
        if outcome.kind == "result":
            return pickle.loads(outcome.payload)
        if outcome.kind == "error":
            raise rebuild(pickle.loads(outcome.payload))
        if outcome.kind == "exit":
            record: JobRecord = outcome.payload
            code = self._run.read_exit_code()
            if code is None:
                code = record.exit_code
            if code is None or record.state not in (JobState.COMPLETED, JobState.FAILED):
                raise self._failure(record)
            return code
        raise outcome.payload

    def __await__(self) -> Generator[Any, None, Any]:
        return self._async_result().__await__()

    async def _async_result(self) -> Any:
        for delay in result_poll_delays():
            outcome = self._poll()
            if outcome is not None:
                return self._resolve(outcome)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the delays never end")

    # -- control and inspection ----------------------------------------------------------

    def cancel(self) -> bool:
        """Cancel the job; True if it had not finished yet."""
        if self._check_files() is not None:
            return False
        record = self._job_record()
        if record is not None and record.state.is_terminal:
            return False
        self._batchctl().cancel(self.job_ids)
        self._watcher().poke()
        from jobstrap.store import registry

        with contextlib.suppress(UserError, OSError):
            registry.update(self.run_id, status="cancelled")
        return True

    def logs(self, tail: int | None = None, *, stream: str = "both") -> str:
        """The job's stdout and/or stderr (``stream``: ``out``, ``err`` or ``both``).

        Parameters
        ----------
        tail
            Only the last ``tail`` lines of each.
        """
        if stream not in ("out", "err", "both"):
            raise ValueError(f"stream must be out, err or both, not {stream!r}")
        parts = []
        for job_id in self.job_ids:
            out, err = self._record.log_paths(job_id)
            chosen = {"out": [out], "err": [err], "both": [out, err]}[stream]
            for path in dict.fromkeys(chosen):
                text = _log_text(path, tail)
                if stream == "both":
                    parts.append(f"==> {path} <==\n{text}")
                else:
                    parts.append(text)
        return "\n".join(parts)

    def _repr_html_(self) -> str:
        record = self._job_record()
        reason = record.reason if record is not None else ""
        state = self.state
        waited = time.time() - self.created if state is JobState.PENDING else None
        title = f"{self.run_id} (job {self.job_id}, {self.system})"
        return render_html(state, self.progress(), title=title, reason=reason, waited=waited)

    def status_line(self) -> str:
        """One line: state, then queue wait or task progress."""
        record = self._job_record()
        state = self.state
        waited = time.time() - self.created if state is JobState.PENDING else None
        reason = record.reason if record is not None else ""
        return render_text(state, self.progress(), reason=reason, waited=waited)


def _profile_value(record: RunRecord, name: str) -> object:
    """A setting of the profile the run was submitted with (None when not saved)."""
    resolved = record.profile.get("resolved") if isinstance(record.profile, dict) else None
    return resolved.get(name) if isinstance(resolved, dict) else None


def _profile_poll(record: RunRecord) -> float | None:
    value = _profile_value(record, "poll_interval")
    return float(value) if isinstance(value, int | float) else None


def _log_text(path: str, lines: int | None) -> str:
    """The last ``lines`` lines of a log (all of it for None or 0), "" if unreadable.

    Lines are joined by newlines, with none at the end; a whole file reads as text
    mode reads it (CRLF and CR become LF).
    """
    if not lines:
        text = read_tail(path, None) or ""
        return text.replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join((read_tail(path, lines) or "").splitlines())
