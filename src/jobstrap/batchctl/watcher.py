"""The one watcher per batch control: every tracked job, one query per poll.

A :class:`Watcher` (a daemon thread started by the first :meth:`Watcher.track`)
asks about all tracked jobs in one call per poll (``squeue``, plus ``sacct`` for jobs
that have left it), backs off while nothing changes (:mod:`jobstrap.backoff`), keeps
the last known state visible while the controller cannot be asked (UNKNOWN, never
"gone"), recognises job ids the controller has recycled, and calls back on every
state change.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from jobstrap.backoff import exponential_delay
from jobstrap.batchctl.commands import WATCH_RETRY
from jobstrap.batchctl.query import Answer, Identity, StatusQueries
from jobstrap.errors import BatchCommandError, JobFailedError
from jobstrap.states import JobState
from jobstrap.systems import JobRecord

__all__ = ["ChangeCallback", "Watcher", "describe"]

log = logging.getLogger(__name__)

ChangeCallback = Callable[[str, JobState, JobRecord], None]


class _Entry:
    """One tracked job: its latest record and what the watcher knows about it."""

    __slots__ = (
        "absent_since",
        "callbacks",
        "ended_at",
        "identity",
        "record",
        "started_by_us",
        "tracked_since",
    )

    def __init__(self, record: JobRecord, identity: Identity, started_by_us: bool) -> None:
        self.record = record
        self.identity = identity
        self.started_by_us = started_by_us
        self.callbacks: list[ChangeCallback] = []
        self.absent_since: float | None = None
        #: When the live view first showed the job ended (its exit code still to come).
        self.ended_at: float | None = None
        self.tracked_since = time.monotonic()


class Watcher:
    """One background poller per batchctl: every tracked job, one query per poll.

    Parameters
    ----------
    batchctl
        The batchctl whose commands it runs.
    poll_interval
        Seconds between polls while states change (the profile's ``poll_interval``).
    max_interval
        Cap on the interval, which doubles after every poll that changed nothing.
    missing_grace
        Seconds a job may be absent from the live view *and* the history before it is
        MISSING (covers accounting lag; with accounting off it is the only evidence).
    exit_code_grace
        Seconds an ended job's end is held back while the history (sacct) has not
        recorded its exit code yet; after that it is reported without one.
    """

    def __init__(
        self,
        batchctl: StatusQueries,
        *,
        poll_interval: float = 5.0,
        max_interval: float = 60.0,
        missing_grace: float = 60.0,
        exit_code_grace: float = 30.0,
    ) -> None:
        self.batchctl = batchctl
        self.exit_code_grace = exit_code_grace
        self._holding = False
        self.poll_interval = poll_interval
        self.max_interval = max_interval
        self.missing_grace = missing_grace
        self.interval = poll_interval
        self.polls = 0
        #: The last query's error while the controller cannot be asked, else None.
        self.last_error: BatchCommandError | None = None
        self._entries: dict[str, _Entry] = {}
        self._global_callbacks: list[ChangeCallback] = []
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- configuration and tracking -----------------------------------------------------

    def configure(
        self,
        *,
        poll_interval: float | None = None,
        max_interval: float | None = None,
        missing_grace: float | None = None,
        exit_code_grace: float | None = None,
    ) -> None:
        """Change the timings; the last call sets them for every user of this watcher."""
        with self._lock:
            if poll_interval is not None:
                self.poll_interval = poll_interval
                self.interval = min(self.interval, poll_interval)
            if max_interval is not None:
                self.max_interval = max_interval
            if missing_grace is not None:
                self.missing_grace = missing_grace
            if exit_code_grace is not None:
                self.exit_code_grace = exit_code_grace
        self._wake.set()

    def track(
        self,
        job_ids: Iterable[str],
        *,
        on_change: ChangeCallback | None = None,
        started_by_us: bool = True,
        name: str | None = None,
    ) -> None:
        """Start watching ``job_ids`` (starts the polling thread on first use).

        Parameters
        ----------
        job_ids
            Jobs or array tasks (``123_4``).
        on_change
            Called as ``on_change(job_id, old_state, new_record)`` from the watcher's
            thread after every state change of these jobs.
        started_by_us
            The jobs were submitted by this process (their name is known).
        name
            The job name they were submitted with (``<job_name>-<tag>``): an id that
            shows up under another name has been recycled and ours is gone.
        """
        stale: list[tuple[str, JobState, JobRecord, list[ChangeCallback]]] = []
        with self._lock:
            for job_id in job_ids:
                entry = self._entries.get(job_id)
                if entry is not None and started_by_us and name and entry.identity.name != name:
                    # The batch system gave our new job an id we still track: ids are
                    # reused only once the old job is over and forgotten (a controller
                    # restart, a local queue's new spool). The old job is MISSING to
                    # whoever tracked it; the new one starts afresh.
                    old = entry.record
                    gone = replace(old, state=JobState.MISSING, reason="job id reused")
                    if not old.state.is_terminal:
                        stale.append((job_id, old.state, gone, [*entry.callbacks]))
                    entry = None
                if entry is None:
                    identity = Identity(name=name, strict=bool(name))
                    # Our own fresh submission is queued; anyone else's is unknown until asked.
                    first = JobState.PENDING if started_by_us else JobState.UNKNOWN
                    record = JobRecord(job_id=job_id, state=first, name=name or "")
                    entry = self._entries[job_id] = _Entry(record, identity, started_by_us)
                if on_change is not None and on_change not in entry.callbacks:
                    entry.callbacks.append(on_change)
            self.interval = self.poll_interval
            self._start()
        for job_id, before, gone, callbacks in stale:
            for callback in callbacks:
                try:
                    callback(job_id, before, gone)
                except Exception:
                    log.exception("state-change callback %r failed for %s", callback, job_id)
        self._wake.set()

    def untrack(self, job_ids: Iterable[str]) -> None:
        """Stop watching ``job_ids``."""
        with self._lock:
            for job_id in job_ids:
                self._entries.pop(job_id, None)

    def add_callback(self, on_change: ChangeCallback) -> None:
        """Call ``on_change`` for every tracked job's state changes."""
        with self._lock:
            self._global_callbacks.append(on_change)

    def tracked(self) -> list[str]:
        """Ids being watched."""
        with self._lock:
            return list(self._entries)

    def record(self, job_id: str) -> JobRecord:
        """The latest record of a tracked job (``KeyError`` if it is not tracked)."""
        with self._lock:
            return self._entries[job_id].record

    def state(self, job_id: str) -> JobState:
        """The latest state of a tracked job."""
        return self.record(job_id).state

    def records(self, job_ids: Iterable[str] | None = None) -> dict[str, JobRecord]:
        """Latest records of ``job_ids`` (default: all tracked)."""
        with self._lock:
            ids = list(self._entries) if job_ids is None else list(job_ids)
            return {j: self._entries[j].record for j in ids if j in self._entries}

    def poke(self) -> None:
        """Poll soon, at the base interval (after a cancel, or when someone waits)."""
        with self._lock:
            self.interval = self.poll_interval
        self._wake.set()

    def wait(
        self,
        job_ids: Iterable[str],
        until: Callable[[JobRecord], bool] = lambda record: record.state.is_terminal,
        timeout: float | None = None,
    ) -> dict[str, JobRecord]:
        """Block until ``until(record)`` holds for every one of ``job_ids``.

        Untracked ids are tracked first (and a closed watcher polls again while
        someone waits). Returns their records.

        Raises
        ------
        TimeoutError
            After ``timeout`` seconds, naming the states last seen.
        JobFailedError
            A job ended without ``until`` holding for it: an ended job never changes
            again, so waiting longer could not help.
        """
        ids = list(dict.fromkeys(job_ids))
        with self._lock:
            missing = [j for j in ids if j not in self._entries]
        if missing:
            self.track(missing, started_by_us=False)
        with self._lock:
            self._start()
        self.poke()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                records = {j: self._entries[j].record for j in ids if j in self._entries}
                if len(records) < len(ids):
                    gone = sorted(set(ids) - set(records))
                    raise KeyError(f"stopped tracking {' '.join(gone)} while waiting")
                if all(until(r) for r in records.values()):
                    return records
                for job_id, record in records.items():
                    if record.state.is_terminal and not until(record):
                        raise JobFailedError(job_id, record.state.value, detail=record.reason)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    seen = ", ".join(f"{j}={r.state}" for j, r in records.items())
                    raise TimeoutError(f"waited {timeout:g} s; last seen: {seen}")
                self.interval = self.poll_interval  # someone is waiting: poll briskly
                self._changed.wait(timeout=remaining)

    def close(self) -> None:
        """Stop the polling thread (tracked jobs are left alone)."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        self._thread = None

    # -- polling ------------------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"jobstrap-watcher-{self.batchctl.system.name}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                active = any(not e.record.state.is_terminal for e in self._entries.values())
            if not active:
                # Nothing to ask about: sleep until something is tracked.
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                changed = self.poll()
            except Exception:  # a bug must not silently stop every job's tracking
                log.exception("watcher poll failed")
                changed = False
            with self._lock:
                # An end held back for its exit code is a change about to happen.
                brisk = changed or self._holding
                # Quiet: one step further along the shared schedule (double, capped).
                self.interval = (
                    self.poll_interval
                    if brisk
                    else exponential_delay(2, initial=self.interval, maximum=self.max_interval)
                )
                interval = self.interval
            self._wake.wait(timeout=interval)
            self._wake.clear()

    def poll(self) -> bool:
        """Ask once about every active tracked job; return True if any state changed.

        The polling thread calls this; tests and tools may call it directly.
        """
        with self._lock:
            asked = {j: e for j, e in self._entries.items() if not e.record.state.is_terminal}
            ids = list(asked)
            identities = {j: self._identity(e) for j, e in asked.items()}
        if not ids:
            return False
        try:
            answer = self.batchctl._query(ids, identities, WATCH_RETRY)
        except BatchCommandError as error:
            return self._unreachable(ids, error)
        now_mono = time.monotonic()
        changes: list[tuple[str, JobState, JobRecord, list[ChangeCallback]]] = []
        with self._lock:
            self.polls += 1
            self.last_error = None
            self._holding = False
            for job_id in ids:
                entry = self._entries.get(job_id)
                if entry is None or entry is not asked[job_id]:
                    continue  # untracked, or re-tracked for a new job while we asked
                new = self._next_record(entry, answer, now_mono)
                if new is None:
                    continue
                old = entry.record
                entry.record = new
                if new.state is not old.state:
                    changes.append((job_id, old.state, new, [*entry.callbacks]))
        self._fire(changes)
        return bool(changes)

    def _identity(self, entry: _Entry) -> Identity:
        identity = entry.identity
        if identity.strict:
            return identity
        record = entry.record
        return Identity(name=record.name or None, submit_time=record.submit_time or None)

    def _next_record(self, entry: _Entry, answer: Answer, now: float) -> JobRecord | None:
        """The entry's new record from ``answer``, or None to keep the current one."""
        job_id = entry.record.job_id
        current = entry.record
        record = answer.records.get(job_id)
        if record is not None:
            entry.absent_since = None
            if not entry.identity.strict and not entry.identity.name and record.name:
                # Remember the first name seen: later recycling shows as a change.
                entry.identity = Identity(name=record.name, submit_time=record.submit_time)
            if self._awaits_exit_code(entry, record, now):
                return None
            return record
        if job_id in answer.foreign:
            return JobRecord(
                job_id=job_id,
                state=JobState.MISSING,
                reason="job id now belongs to another job; ours is gone",
                name=current.name,
            )
        if entry.absent_since is None:
            entry.absent_since = now
        restored = self._restore(current)
        if now - entry.absent_since >= self.missing_grace and answer.history_checked:
            return replace(
                restored,
                state=JobState.MISSING,
                reason="vanished from the batch system with no accounting record",
                last_state=restored.state,
            )
        return restored if restored is not current else None

    def _awaits_exit_code(self, entry: _Entry, record: JobRecord, now: float) -> bool:
        """Hold back an end the live view reports before the history has its exit code.

        squeue shows a job ended before slurmdbd has recorded how; reporting the end at
        once would leave every waiter without the exit code for good.
        """
        if not record.state.is_terminal or record.exit_code is not None:
            return False
        if not self.batchctl.has_history or self.exit_code_grace <= 0:
            return False
        if entry.ended_at is None:
            entry.ended_at = now
        if now - entry.ended_at >= self.exit_code_grace:
            return False
        self._holding = True
        return True

    @staticmethod
    def _restore(record: JobRecord) -> JobRecord:
        """The controller answers again: an UNKNOWN record goes back to its last state."""
        if record.state is JobState.UNKNOWN and record.last_state is not None:
            return replace(record, state=record.last_state, last_state=None, unknown_since=None)
        return record

    def _unreachable(self, ids: list[str], error: BatchCommandError) -> bool:
        """The controller cannot be asked: UNKNOWN with the last state kept, never gone."""
        log.warning("cannot ask the batch system (%s); states are UNKNOWN for now", error)
        now = time.time()
        changes: list[tuple[str, JobState, JobRecord, list[ChangeCallback]]] = []
        with self._lock:
            self.polls += 1
            self.last_error = error
            for job_id in ids:
                entry = self._entries.get(job_id)
                if entry is None or entry.record.state is JobState.UNKNOWN:
                    continue
                old = entry.record
                # Absence during an outage proves nothing: restart the grace period after.
                entry.absent_since = None
                entry.record = replace(
                    old, state=JobState.UNKNOWN, last_state=old.state, unknown_since=now
                )
                changes.append((job_id, old.state, entry.record, [*entry.callbacks]))
        self._fire(changes)
        return bool(changes)

    def _fire(self, changes: list[tuple[str, JobState, JobRecord, list[ChangeCallback]]]) -> None:
        """Run the callbacks (outside the lock), then wake the waiters.

        Waiters wake last so that whatever a callback prints or records has happened
        by the time :meth:`wait` returns.
        """
        with self._lock:
            global_callbacks = list(self._global_callbacks)
        for job_id, old, new, callbacks in changes:
            for callback in (*callbacks, *global_callbacks):
                try:
                    callback(job_id, old, new)
                except Exception:
                    log.exception("state-change callback %r failed for %s", callback, job_id)
        with self._changed:
            self._changed.notify_all()


def describe(records: Mapping[str, JobRecord]) -> str:
    """One line summarising states: ``3 RUNNING, 1 PENDING``."""
    counts = Counter(r.state.value for r in records.values())
    return ", ".join(f"{n} {s}" for s, n in counts.most_common())
