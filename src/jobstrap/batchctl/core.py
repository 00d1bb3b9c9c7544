"""The only code that runs batch commands: submit, ask, cancel, and watch.

Everything that talks to a batch system's controller goes through a
:class:`BatchControl`, one per process per batch system (:meth:`BatchControl.for_system`):

* every call is an argv list (never a shell string) with a timeout;
* transient failures (``Socket timed out``, controller restarting) are retried a
  bounded number of times with jittered exponential backoff;
* a token bucket shared by the whole process limits the call rate, so a thousand
  jobs never hammer the controller;
* every call is counted per command name (:attr:`BatchControl.calls`), so tests and
  benchmarks can assert how many controller calls something took.

Submissions are idempotent: the job name carries a unique tag (``<name>-<tag>``).
After an ambiguous failure (a timeout, a transient error, output that is not a job
id) batch control looks the name up before it submits again, so a retry never
submits twice. ``N`` identical jobs go out as job arrays, as few as the site's and
the profile's array limits allow; if one of several arrays is rejected, the ones
already submitted are cancelled before :class:`~jobstrap.errors.SubmitError` is
raised, so nothing is left half-submitted.

The :class:`Watcher` (one per batchctl, a daemon thread started by the first
:meth:`Watcher.track`) asks about all tracked jobs in one call per poll (``squeue``,
plus ``sacct`` for jobs that have left it), backs off while nothing changes, keeps
the last known state visible while the controller cannot be asked (UNKNOWN, never
"gone"), recognises job ids the controller has recycled, and calls back on every
state change.
"""

from __future__ import annotations

import logging
import os
import random
import shlex
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from jobstrap.errors import BatchCommandError, JobFailedError, SubmitError
from jobstrap.jobs.spec import ArraySpec, JobSpec
from jobstrap.states import JobState
from jobstrap.store.rundir import atomic_write_text
from jobstrap.systems import BatchSystem, JobRecord, get_system

__all__ = [
    "BatchControl",
    "CommandResult",
    "RetryPolicy",
    "Submission",
    "TokenBucket",
    "Watcher",
    "array_task_ids",
    "base_job_id",
    "tagged",
]

log = logging.getLogger(__name__)

#: Slurm's default ``MaxArraySize``: used when the site's cannot be read.
DEFAULT_MAX_ARRAY_SIZE = 1001
#: Job ids per cancel call: far below any argv limit, few calls for big runs.
_CANCEL_CHUNK = 500

ChangeCallback = Callable[[str, JobState, JobRecord], None]


# --- retries and rate limit ---------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transient failure is retried.

    Attributes
    ----------
    attempts
        Calls in total (1 means no retry).
    base_delay
        Backoff before the second attempt, in seconds; doubled for each further one.
    max_delay
        Cap on one backoff.
    budget
        Stop retrying once this many seconds have passed since the first attempt.
    """

    attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 20.0
    budget: float = 120.0

    def delay(self, retry_number: int) -> float:
        """Backoff before retry ``retry_number`` (1-based): equal jitter.

        Half the exponential delay is fixed and half is random, so a crowd of clients
        that failed together does not come back together, yet nobody retries at once.
        """
        ceiling = min(self.max_delay, self.base_delay * 2 ** (retry_number - 1))
        return float(ceiling / 2 + random.uniform(0, ceiling / 2))


#: The watcher's own policy: one quick retry; the next poll is the real retry.
WATCH_RETRY = RetryPolicy(attempts=2, base_delay=0.5, max_delay=1.0, budget=10.0)


class TokenBucket:
    """A thread-safe token bucket: ``rate`` calls per second, bursts up to ``burst``.

    Parameters
    ----------
    rate
        Tokens added per second.
    burst
        Bucket size: how many calls may go out back to back.
    clock, sleep
        Injectable for tests.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"invalid rate limit: rate={rate}, burst={burst}")
        self.rate = float(rate)
        self.burst = int(burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._stamp = clock()
        self._lock = threading.Lock()
        self.waited = 0.0

    def acquire(self) -> float:
        """Take one token, sleeping until one is available; return the seconds waited."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            # Reserve the token now (the balance may go negative): callers queue up in
            # order and each sleeps exactly its share, without holding the lock.
            self._tokens -= 1.0
            wait = 0.0 if self._tokens >= 0 else -self._tokens / self.rate
            self.waited += wait
        if wait > 0:
            self._sleep(wait)
        return wait


_bucket_lock = threading.Lock()
_shared_bucket: TokenBucket | None = None


def shared_bucket() -> TokenBucket:
    """The process-wide bucket every batchctl draws from.

    ``$JOBSTRAP_BATCH_RATE`` (calls per second, default 5) and ``$JOBSTRAP_BATCH_BURST``
    (default 10) are read when the first command runs.
    """
    global _shared_bucket
    with _bucket_lock:
        if _shared_bucket is None:
            rate = float(os.environ.get("JOBSTRAP_BATCH_RATE", "5"))
            burst = int(os.environ.get("JOBSTRAP_BATCH_BURST", "10"))
            _shared_bucket = TokenBucket(rate, burst)
        return _shared_bucket


# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandResult:
    """One finished batch command."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    #: Calls it took (1 unless transient failures were retried).
    attempts: int = 1


@dataclass
class Submission:
    """What one :meth:`BatchControl.submit` put into the queue.

    Attributes
    ----------
    tag
        The submission's unique tag (also in every job's name and comment).
    name
        The job name every job of the submission carries (``<job_name>-<tag>``).
    job_ids
        One id per job or array task: ``["123_0", "123_1", ...]`` or ``["124"]``.
    batch_ids
        One id per submit call (an array's base id, or the plain job's id).
    scripts
        The script files submitted, in the run directory.
    """

    tag: str
    name: str
    job_ids: list[str] = field(default_factory=list)
    batch_ids: list[str] = field(default_factory=list)
    scripts: list[Path] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Number of jobs (array tasks count one each)."""
        return len(self.job_ids)


# --- job id helpers -----------------------------------------------------------------------


def base_job_id(job_id: str) -> str:
    """The id the submit command printed: ``123_4`` -> ``123``, ``7[2].srv`` -> ``7[].srv``."""
    if "[" in job_id:  # PBS subjob 7[2].server -> array 7[].server
        head, _, rest = job_id.partition("[")
        return f"{head}[]{rest.partition(']')[2]}"
    for separator in ("_", "+"):
        if separator in job_id:
            return job_id.split(separator, 1)[0]
    return job_id


def array_task_ids(job_id: str, array: ArraySpec) -> list[str]:
    """Ids of an array's tasks: Slurm ``123`` -> ``123_0``...; PBS ``7[].srv`` -> ``7[0].srv``..."""
    if "[]" in job_id:
        head, _, tail = job_id.partition("[]")
        return [f"{head}[{i}]{tail}" for i in array.task_ids]
    return [f"{job_id}_{i}" for i in array.task_ids]


def tagged(spec: JobSpec) -> JobSpec:
    """``spec`` with its name ending in its tag (``<job_name>-<tag>``), as submissions need."""
    if spec.name.endswith(spec.tag):
        return spec
    return replace(spec, name=f"{spec.name}-{spec.tag}")


def _command_name(argv: Sequence[str]) -> str:
    """The name a call is counted under: ``sbatch``; ``localq submit`` for the local queue."""
    head = os.path.basename(argv[0]) if argv else "?"
    if len(argv) >= 3 and argv[1] == "-m":
        module = argv[2].rsplit(".", 1)[-1]
        return f"{module} {argv[3]}" if len(argv) > 3 else module
    return head


def _chunk_sizes(count: int, limit: int) -> list[int]:
    full, rest = divmod(count, limit)
    return [limit] * full + ([rest] if rest else [])


def _fold_components(job_id: str, records: Mapping[str, JobRecord]) -> JobRecord | None:
    """A heterogeneous job (``123`` printed as ``123+0``, ``123+1``) as one record."""
    parts = [rec for key, rec in records.items() if key.startswith(job_id + "+")]
    if not parts:
        return None
    states = [p.state for p in parts]
    if JobState.RUNNING in states:
        state = JobState.RUNNING
    elif JobState.PENDING in states:
        state = JobState.PENDING
    else:
        # The first component that did not complete says how the whole job ended.
        state = next((s for s in states if s is not JobState.COMPLETED), JobState.COMPLETED)
    first = parts[0]
    nodes = ",".join(p.nodes for p in parts if p.nodes)
    exit_codes = [p.exit_code for p in parts if p.exit_code]
    return replace(
        first,
        job_id=job_id,
        state=state,
        nodes=nodes,
        exit_code=exit_codes[0] if exit_codes else first.exit_code,
    )


def _find_record(job_id: str, records: Mapping[str, JobRecord]) -> JobRecord | None:
    """The record that answers for ``job_id``, however the batch system spelled it.

    Besides the id itself: a heterogeneous job's components (``123+0``), and for an
    array task (``123_4``) the whole array's record (``123``), which is how Slurm
    reports an array that was never split into tasks, e.g. one cancelled while all
    its tasks were still pending.
    """
    record = records.get(job_id) or _fold_components(job_id, records)
    if record is None and "_" in job_id:
        whole = records.get(job_id.split("_", 1)[0])
        if whole is not None:
            record = replace(whole, job_id=job_id)
    return record


# --- batch control --------------------------------------------------------------------------


@dataclass
class _Answer:
    """What one status query learned."""

    records: dict[str, JobRecord]
    #: Ids the controller now uses for another job: ours is gone.
    foreign: set[str]
    #: True when every id missing from the live view was also looked up in the history
    #: (or no history exists to look in).
    history_checked: bool


@dataclass(frozen=True)
class _Identity:
    """What identifies our job behind an id the controller might recycle."""

    name: str | None = None
    submit_time: str | None = None
    #: True when ``name`` is the tagged name we submitted (a mismatch is proof).
    strict: bool = False

    def mismatch(self, record: JobRecord) -> bool:
        if not self.name or not record.name or record.name == self.name:
            return False
        if self.strict:
            return True
        # A name seen earlier (not one we chose) changes with the job only together
        # with the submit time; a requeue keeps the name.
        return bool(self.submit_time and record.submit_time != self.submit_time)


class BatchControl:
    """Runs one batch system's commands: timeouts, retries, rate limit, a watcher.

    Parameters
    ----------
    system
        The batch system (name or builders object).
    retry
        Retry policy for transient failures.
    timeout
        Default seconds before a call is killed.
    bucket
        Rate limiter (default: the one shared by the whole process).
    sleep
        Injectable for tests.
    """

    _instances: ClassVar[dict[tuple[str, int], BatchControl]] = {}
    _instances_lock: ClassVar[threading.Lock] = threading.Lock()
    #: Site array limits, read once per process per system.
    _array_limits: ClassVar[dict[tuple[str, int], int | None]] = {}

    def __init__(
        self,
        system: BatchSystem | str,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
        bucket: TokenBucket | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.system: BatchSystem = get_system(system) if isinstance(system, str) else system
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self._bucket = bucket
        self._sleep = sleep
        self.calls: Counter[str] = Counter()
        self._calls_lock = threading.Lock()
        #: Whether the system's history (sacct) answers; False once it said it is off.
        self.history_available = True
        self._watcher: Watcher | None = None
        self._watcher_lock = threading.Lock()

    @classmethod
    def for_system(cls, name: str) -> BatchControl:
        """The process's batchctl for batch system ``name`` (created on first use)."""
        key = (name, os.getpid())  # a forked child gets its own (threads do not survive fork)
        with cls._instances_lock:
            batchctl = cls._instances.get(key)
            if batchctl is None:
                batchctl = cls._instances[key] = cls(name)
            return batchctl

    def __repr__(self) -> str:
        return f"BatchControl({self.system.name!r}, calls={dict(self.calls)})"

    @property
    def bucket(self) -> TokenBucket:
        """The rate limiter this batchctl draws from."""
        return self._bucket or shared_bucket()

    @property
    def has_history(self) -> bool:
        """Whether ended jobs can be looked up after the live view (sacct) here."""
        return self.history_available and self.system.history_argv(["0"]) is not None

    @property
    def watcher(self) -> Watcher:
        """This batchctl's watcher (no thread runs until something is tracked)."""
        with self._watcher_lock:
            if self._watcher is None:
                self._watcher = Watcher(self)
            return self._watcher

    # -- running commands ---------------------------------------------------------------

    def _call_once(self, argv: Sequence[str], timeout: float) -> CommandResult:
        """One rate-limited, counted subprocess; raises BatchCommandError on a timeout."""
        self.bucket.acquire()
        with self._calls_lock:
            self.calls[_command_name(argv)] += 1
        try:
            done = subprocess.run(
                list(argv),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as expired:
            stdout = _text(expired.stdout)
            stderr = _text(expired.stderr)
            raise BatchCommandError(
                argv, None, stderr, stdout, transient=True, reason=f"no answer in {timeout:g} s"
            ) from None
        except OSError as error:  # not installed, not executable
            raise BatchCommandError(
                argv, 127, f"cannot run {argv[0]}: {error.strerror or error}"
            ) from None
        return CommandResult(list(argv), done.returncode, done.stdout, done.stderr)

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        retry: bool | RetryPolicy = True,
        ok_unknown_job: bool = False,
    ) -> CommandResult:
        """Run one batch command, retrying transient failures.

        Parameters
        ----------
        argv
            The command as a list (no shell is involved).
        timeout
            Seconds before the process is killed (default :attr:`timeout`).
        retry
            ``True`` for :attr:`retry`, ``False`` for one attempt, or a policy.
        ok_unknown_job
            Treat "no such job" (the system's ``is_unknown_job_error``) as success: the
            output then holds whatever the command printed about the other jobs.

        Returns
        -------
        CommandResult

        Raises
        ------
        BatchCommandError
            The command failed (``transient`` says whether retrying might have helped),
            carrying argv, exit code (None after a timeout) and stderr.
        """
        if not argv or isinstance(argv, str):
            raise TypeError("argv must be a non-empty list of strings, never a shell string")
        policy = retry if isinstance(retry, RetryPolicy) else self.retry
        attempts = policy.attempts if retry else 1
        limit = self.timeout if timeout is None else timeout
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                result = self._call_once(argv, limit)
            except BatchCommandError as error:
                failure = error
            else:
                if result.returncode == 0:
                    return replace(result, attempts=attempt)
                if ok_unknown_job and self._is_unknown_job(result.stderr):
                    return replace(result, attempts=attempt)
                failure = BatchCommandError(
                    argv,
                    result.returncode,
                    result.stderr,
                    result.stdout,
                    transient=self.system.is_transient_error(result.stderr),
                )
            out_of_budget = time.monotonic() - started >= policy.budget
            if not failure.transient or attempt >= attempts or out_of_budget:
                raise failure
            delay = policy.delay(attempt)
            log.info(
                "%s failed transiently (%s); retry %d in %.1f s", argv[0], failure, attempt, delay
            )
            self._sleep(delay)

    def _is_unknown_job(self, stderr: str) -> bool:
        return self.system.is_unknown_job_error(stderr)

    # -- submitting ---------------------------------------------------------------------

    def max_array_size(self) -> int | None:
        """The site's largest array (task ids run ``0..n-1``), read once per process.

        ``None`` when the system has no such limit or it could not be read.
        """
        key = (self.system.name, os.getpid())
        if key in self._array_limits:
            return self._array_limits[key]
        try:
            result = self.run(self.system.limits_argv(), timeout=30)
        except BatchCommandError as error:
            log.warning("cannot read the site's array limit (%s); assuming none", error)
            return None  # not cached: the next submission asks again
        limit = self.system.parse_max_array_size(result.stdout)
        self._array_limits[key] = limit
        return limit

    def _array_limit(self, profile_limit: int | None) -> int:
        limits = [x for x in (self.max_array_size(), profile_limit) if x]
        return min(limits) if limits else DEFAULT_MAX_ARRAY_SIZE

    def submit(
        self,
        spec: JobSpec,
        script: str | Callable[[JobSpec], str] | None = None,
        *,
        count: int = 1,
        max_array_size: int | None = None,
        template: str | None = None,
        script_name: str | None = None,
    ) -> Submission:
        """Submit ``count`` identical jobs as few job arrays as the limits allow.

        Parameters
        ----------
        spec
            The job; its name gets the tag appended (``<name>-<tag>``) unless it ends
            with it already. ``spec.array`` is ignored: ``count`` decides.
        script
            The script text (only for a single plain job, ``count == 1``; it must have
            been rendered from :func:`tagged` ``(spec)``), or a function rendering a spec,
            or ``None`` to render with :func:`jobstrap.jobs.render.render_script`.
        count
            Number of jobs. 1 is a plain job; more go out as arrays of at most
            ``min(site MaxArraySize, max_array_size)`` tasks each (ids ``0..n-1`` in
            every array); a last array of one task is a plain job.
        max_array_size
            The profile's cap on tasks per array.
        template
            The profile's own template, when ``script`` is ``None``.
        script_name
            File name of the script in the run directory (default ``job-<tag>.sh``;
            ``job-<tag>-<k>.sh`` for the k-th of several arrays).

        Returns
        -------
        Submission

        Raises
        ------
        SubmitError
            The batch system rejected a submission (its own words in the message); any
            array already submitted for this call has been cancelled.
        """
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        spec = tagged(spec)
        sizes = [1] if count == 1 else _chunk_sizes(count, self._array_limit(max_array_size))
        if isinstance(script, str):
            if count > 1:
                raise ValueError("a ready script text submits one plain job; pass a renderer")
            if spec.name not in script:
                raise ValueError(f"the script was not rendered for job name {spec.name!r}")
            text = script
            render: Callable[[JobSpec], str] = lambda _: text  # noqa: E731
        else:
            render = script or self._renderer(template)
        submission = Submission(tag=spec.tag, name=spec.name)
        run_dir = Path(spec.run_dir)
        for index, size in enumerate(sizes):
            array = ArraySpec(0, size - 1) if size > 1 else None
            part = spec.with_array(array)
            text = render(part)
            if script_name and len(sizes) == 1:
                file_name = script_name
            elif len(sizes) == 1:
                file_name = f"job-{spec.tag}.sh"
            else:
                file_name = f"job-{spec.tag}-{index}.sh"
            path = run_dir / file_name
            # A script that exists already means an earlier attempt with this tag got at
            # least this far (perhaps killed mid-submit): look before submitting again.
            resume = path.exists()
            atomic_write_text(path, text)
            submission.scripts.append(path)
            try:
                batch_id = self._submit_one(
                    self.system.submit_argv(str(path), part),
                    spec.name,
                    known=set(submission.batch_ids),
                    resume=resume,
                )
            except SubmitError as error:
                self._undo(submission, error)
                raise
            submission.batch_ids.append(batch_id)
            submission.job_ids.extend(array_task_ids(batch_id, array) if array else [batch_id])
        log.info("submitted %s: %d job(s) in %d call(s)", spec.name, submission.count, len(sizes))
        return submission

    def _renderer(self, template: str | None) -> Callable[[JobSpec], str]:
        from jobstrap.jobs.render import render_script

        def render(spec: JobSpec) -> str:
            return render_script(spec, self.system, template=template)

        return render

    def _submit_one(self, argv: list[str], name: str, *, known: set[str], resume: bool) -> str:
        """Submit one script; never twice, even across ambiguous failures."""
        if resume:
            found = self._find_new(name, known, argv)
            if found:
                log.info("%s was submitted by an earlier attempt as %s", name, found)
                return found
        started = time.monotonic()
        policy = self.retry
        last: BatchCommandError | None = None
        for attempt in range(1, policy.attempts + 1):
            try:
                result = self._call_once(argv, self.timeout)
            except BatchCommandError as error:  # timed out: the job may exist
                last = error
            else:
                if result.returncode == 0:
                    try:
                        return self.system.parse_submit(result.stdout)
                    except ValueError as error:
                        last = BatchCommandError(
                            argv, 0, result.stderr, result.stdout, transient=True, reason=str(error)
                        )
                elif self.system.is_transient_error(result.stderr):
                    last = BatchCommandError(
                        argv, result.returncode, result.stderr, result.stdout, transient=True
                    )
                else:
                    # A definite "no": the controller rejected the job and created nothing.
                    raise _rejected(argv, result)
            # Ambiguous: the controller may have taken the job before failing to answer.
            # Give it a moment to show the job, then look (after the last attempt too).
            self._sleep(policy.delay(attempt))
            found = self._find_new(name, known, argv)
            if found:
                log.info("%s was submitted despite %s: %s", name, last, found)
                return found
            if time.monotonic() - started >= policy.budget:
                break
        assert last is not None
        gave_up = SubmitError(argv, last.returncode, last.stderr, last.stdout, transient=True)
        gave_up.args = (f"{last} (gave up after {attempt} attempts; no job {name} was queued)",)
        raise gave_up

    def _find_new(self, name: str, known: set[str], argv: list[str]) -> str | None:
        """The base id of a job named ``name`` not among ``known``, or None."""
        try:
            result = self.run(self.system.find_by_name_argv(name))
        except BatchCommandError as error:
            # Neither "submitted" nor "not submitted" can be told: resubmitting could
            # double the job, so stop here and say so.
            unsure = SubmitError(argv, error.returncode, error.stderr, error.stdout, transient=True)
            unsure.args = (f"cannot tell whether job {name} was queued: {error}",)
            raise unsure from None
        bases = {base_job_id(j) for j in self.system.parse_find_by_name(result.stdout)}
        new = sorted(bases - known, key=_id_order)
        return new[0] if new else None

    def _undo(self, submission: Submission, error: SubmitError) -> None:
        """Cancel what this submission already put in the queue; say so in ``error``."""
        if not submission.batch_ids:
            return
        ids = " ".join(submission.batch_ids)
        try:
            self.cancel(submission.batch_ids)
        except BatchCommandError as cancel_error:
            log.error("could not cancel %s after a failed submission: %s", ids, cancel_error)
            note = f"jobs {ids} of this submission may still be queued: {cancel_error}"
        else:
            note = f"cancelled the jobs this submission had already queued: {ids}"
        # The user sees str(error): the batch system's words first, then what we undid.
        error.args = (f"{error}; {note}",)

    # -- cancelling and signalling ------------------------------------------------------

    def cancel(self, job_ids: Iterable[str]) -> None:
        """Cancel jobs or array tasks; ids the controller no longer knows count as done."""
        ids = list(dict.fromkeys(job_ids))
        for start in range(0, len(ids), _CANCEL_CHUNK):
            self.run(
                self.system.cancel_argv(ids[start : start + _CANCEL_CHUNK]), ok_unknown_job=True
            )
        if self._watcher is not None:
            self._watcher.poke()

    def signal(self, job_ids: Iterable[str], signal: str) -> None:
        """Send ``signal`` (``USR1``, ``TERM``...) to the jobs' batch shells."""
        ids = list(dict.fromkeys(job_ids))
        for start in range(0, len(ids), _CANCEL_CHUNK):
            chunk = ids[start : start + _CANCEL_CHUNK]
            self.run(self.system.signal_argv(chunk, signal), ok_unknown_job=True)

    # -- asking -------------------------------------------------------------------------

    def status(self, job_ids: Iterable[str]) -> dict[str, JobRecord]:
        """What the batch system says of ``job_ids``: one live query, plus history.

        Ids the batch system knows nothing about are left out.
        """
        ids = list(dict.fromkeys(job_ids))
        return self._query(ids, {}, self.retry).records

    def _query(
        self, ids: Sequence[str], identities: Mapping[str, _Identity], retry: RetryPolicy
    ) -> _Answer:
        if not ids:
            return _Answer({}, set(), True)
        result = self.run(self.system.status_argv(ids), retry=retry, ok_unknown_job=True)
        live = self.system.parse_status(result.stdout)
        records: dict[str, JobRecord] = {}
        foreign: set[str] = set()
        missing: list[str] = []
        for job_id in ids:
            record = _find_record(job_id, live)
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
        return _Answer(records, foreign, history_checked)

    def _ask_history(
        self,
        missing: list[str],
        identities: Mapping[str, _Identity],
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
            final = _find_record(job_id, past)
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
            record = _find_record(job_id, past)
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

    def _history_match(self, stdout: str, job_id: str, identity: _Identity) -> JobRecord | None:
        found: JobRecord | None = None
        for line in stdout.splitlines():
            record = self.system.parse_history(line).get(job_id)
            if record is not None and not identity.mismatch(record):
                found = record
        return found


def _rejected(argv: Sequence[str], result: CommandResult) -> SubmitError:
    """The batch system's "no", with every line of its explanation.

    sbatch often says why in one line and that it failed in the next (``Memory
    specification can not be satisfied`` / ``Requested node configuration is not
    available``): both belong in the one line the user sees.
    """
    error = SubmitError(argv, result.returncode, result.stderr, result.stdout)
    words = []
    for line in result.stderr.splitlines():
        line = line.strip()
        for prefix in (f"{os.path.basename(argv[0])}: error: ", f"{os.path.basename(argv[0])}: "):
            line = line.removeprefix(prefix)
        if line:
            words.append(line)
    if len(words) > 1:
        code = f"exit {result.returncode}"
        error.args = (f"{shlex.join(argv)} failed ({code}): {'; '.join(words)}",)
    return error


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _id_order(job_id: str) -> tuple[int, str]:
    digits = "".join(ch for ch in job_id.split(".")[0] if ch.isdigit())
    return (int(digits) if digits else 0, job_id)


# --- the watcher --------------------------------------------------------------------------


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

    def __init__(self, record: JobRecord, identity: _Identity, started_by_us: bool) -> None:
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
        batchctl: BatchControl,
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
                    identity = _Identity(name=name, strict=bool(name))
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
                self.interval = (
                    self.poll_interval if brisk else min(self.max_interval, self.interval * 2)
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

    def _identity(self, entry: _Entry) -> _Identity:
        identity = entry.identity
        if identity.strict:
            return identity
        record = entry.record
        return _Identity(name=record.name or None, submit_time=record.submit_time or None)

    def _next_record(self, entry: _Entry, answer: _Answer, now: float) -> JobRecord | None:
        """The entry's new record from ``answer``, or None to keep the current one."""
        job_id = entry.record.job_id
        current = entry.record
        record = answer.records.get(job_id)
        if record is not None:
            entry.absent_since = None
            if not entry.identity.strict and not entry.identity.name and record.name:
                # Remember the first name seen: later recycling shows as a change.
                entry.identity = _Identity(name=record.name, submit_time=record.submit_time)
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
