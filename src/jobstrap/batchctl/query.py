"""Asking a batch system about jobs: one live query for many ids, plus its history.

:class:`StatusQueries` adds :meth:`~StatusQueries.status` to a command runner. The
watcher asks through the same query, passing what identifies each job
(:class:`Identity`) so that an id the controller has recycled for another job is
recognised (:attr:`Answer.foreign`) instead of being taken for ours.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from jobstrap.batchctl.commands import WATCH_RETRY, CommandRunner, RetryPolicy
from jobstrap.errors import BatchCommandError
from jobstrap.systems import JobRecord

__all__ = ["Answer", "Identity", "StatusQueries"]

log = logging.getLogger(__name__)


@dataclass
class Answer:
    """What one status query learned."""

    records: dict[str, JobRecord]
    #: Ids the controller now uses for another job: ours is gone.
    foreign: set[str]
    #: True when every id missing from the live view was also looked up in the history
    #: (or no history exists to look in).
    history_checked: bool


@dataclass(frozen=True)
class Identity:
    """What identifies our job behind an id the controller might recycle."""

    name: str | None = None
    submit_time: str | None = None
    #: True when ``name`` is the tagged name we submitted (a mismatch is proof).
    strict: bool = False

    def mismatch(self, record: JobRecord) -> bool:
        """True when ``record`` is provably another job than the one identified."""
        if not self.name or not record.name or record.name == self.name:
            return False
        if self.strict:
            return True
        # A name seen earlier (not one we chose) changes with the job only together
        # with the submit time; a requeue keeps the name.
        return bool(self.submit_time and record.submit_time != self.submit_time)


class StatusQueries(CommandRunner):
    """A command runner that can ask for jobs' states (live view, then history)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Whether the system's history (sacct) answers; False once it said it is off.
        self.history_available = True
        self._controller: str | None = None

    def controller(self) -> str:
        """The name of the controller numbering this system's jobs ("" if it cannot say).

        Asked once per batchctl (one cheap command: ``scontrol show config`` on Slurm);
        a failure is not kept, so a later call asks again.
        """
        if self._controller is None:
            try:
                result = self.run(self.system.controller_argv(), timeout=30)
            except BatchCommandError as error:
                log.warning("cannot tell which %s controller this is (%s)", self.system.name, error)
                return ""
            self._controller = self.system.parse_controller(result.stdout)
        return self._controller

    @property
    def has_history(self) -> bool:
        """Whether ended jobs can be looked up after the live view (sacct) here."""
        return self.history_available and self.system.history_argv(["0"]) is not None

    def status(self, job_ids: Iterable[str]) -> dict[str, JobRecord]:
        """What the batch system says of ``job_ids``: one live query, plus history.

        Ids the batch system knows nothing about are left out.
        """
        ids = list(dict.fromkeys(job_ids))
        return self._query(ids, {}, self.retry).records

    def _query(
        self, ids: Sequence[str], identities: Mapping[str, Identity], retry: RetryPolicy
    ) -> Answer:
        if not ids:
            return Answer({}, set(), True)
        result = self.run(self.system.status_argv(ids), retry=retry, ok_unknown_job=True)
        live = self.system.parse_status(result.stdout)
        records: dict[str, JobRecord] = {}
        foreign: set[str] = set()
        missing: list[str] = []
        for job_id in ids:
            record = self.system.find_record(job_id, live)
            identity = identities.get(job_id)
            if record is not None and identity is not None and identity.mismatch(record):
                foreign.add(job_id)
                record = None
            if record is None:
                missing.append(job_id)
            else:
                records[job_id] = record
        # Jobs that just ended still show in the live view (for MinJobAge) but without an
        # exit code: the history has it, in the same call as the jobs that left.
        ended = [j for j, r in records.items() if r.state.is_terminal and r.exit_code is None]
        history_checked = True
        if missing or ended:
            history_checked = self._ask_history(missing, identities, records, foreign, ended)
        return Answer(records, foreign, history_checked)

    def _ask_history(
        self,
        missing: list[str],
        identities: Mapping[str, Identity],
        records: dict[str, JobRecord],
        foreign: set[str],
        ended: Sequence[str] = (),
    ) -> bool:
        """Look ``missing`` up in the history and add exit codes to ``ended``.

        Fills ``records``; returns False if the history could not answer.
        """
        asked = [*missing, *ended]
        argv = self.system.history_argv(asked) if self.history_available else None
        if argv is None:
            return True  # nothing more to ask: the live view is all there is
        try:
            result = self.run(argv, retry=WATCH_RETRY, ok_unknown_job=True)
        except BatchCommandError as error:
            if error.transient:
                return False
            # e.g. "Slurm accounting storage is disabled": stop asking, rely on grace.
            log.warning("job history unavailable (%s); vanished jobs become MISSING", error)
            self.history_available = False
            return True
        past = self.system.parse_history(result.stdout)
        for job_id in ended:
            final = self.system.find_record(job_id, past)
            identity = identities.get(job_id)
            if final is None or not final.state.is_terminal:
                continue  # the accounting has not caught up yet
            if identity is not None and identity.mismatch(final):
                continue
            records[job_id] = replace(
                records[job_id],
                exit_code=final.exit_code,
                elapsed=final.elapsed or records[job_id].elapsed,
            )
        for job_id in missing:
            record = self.system.find_record(job_id, past)
            identity = identities.get(job_id)
            if record is not None and identity is not None and identity.mismatch(record):
                # --duplicates lists every job that held the id: find ours among them.
                record = self._history_match(result.stdout, job_id, identity)
                if record is None:
                    foreign.add(job_id)
            if record is not None and record.state.is_active:
                # History says "still running" while the live view has no trace: the
                # accounting lags; not an answer.
                continue
            if record is not None:
                foreign.discard(job_id)
                records[job_id] = record
        return True

    def _history_match(self, stdout: str, job_id: str, identity: Identity) -> JobRecord | None:
        found: JobRecord | None = None
        for line in stdout.splitlines():
            record = self.system.parse_history(line).get(job_id)
            if record is not None and not identity.mismatch(record):
                found = record
        return found
