"""Running one batch command: argv, timeout, retries and the process's rate limit.

:class:`CommandRunner` is the base of :class:`~jobstrap.batchctl.control.BatchControl`:
every call is an argv list (never a shell string) with a timeout; transient failures
(``Socket timed out``, controller restarting) are retried a bounded number of times
with jittered exponential backoff (:mod:`jobstrap.backoff`); a token bucket shared by
the whole process limits the call rate; every call is counted per command name.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from jobstrap.backoff import exponential_delay
from jobstrap.errors import BatchCommandError
from jobstrap.systems import BatchSystem, get_system

__all__ = [
    "WATCH_RETRY",
    "CommandResult",
    "CommandRunner",
    "RetryPolicy",
    "TokenBucket",
    "shared_bucket",
]

log = logging.getLogger(__name__)

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
        return exponential_delay(
            retry_number, initial=self.base_delay, maximum=self.max_delay, jitter=True
        )


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


def command_name(argv: Sequence[str]) -> str:
    """The name a call is counted under: ``sbatch``; ``localq submit`` for the local queue."""
    head = os.path.basename(argv[0]) if argv else "?"
    if len(argv) >= 3 and argv[1] == "-m":
        module = argv[2].rsplit(".", 1)[-1]
        return f"{module} {argv[3]}" if len(argv) > 3 else module
    return head


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class CommandRunner:
    """Runs one batch system's commands: timeouts, retries, rate limit, call counts.

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
        #: Seconds spent in each command (with ``calls``: their mean latency).
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self._calls_lock = threading.Lock()

    @property
    def bucket(self) -> TokenBucket:
        """The rate limiter this batchctl draws from."""
        return self._bucket or shared_bucket()

    def _call_once(self, argv: Sequence[str], timeout: float) -> CommandResult:
        """One rate-limited, counted subprocess; raises BatchCommandError on a timeout."""
        self.bucket.acquire()
        with self._calls_lock:
            self.calls[command_name(argv)] += 1
        began = time.monotonic()
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
        finally:
            with self._calls_lock:
                self.seconds[command_name(argv)] += time.monotonic() - began
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
