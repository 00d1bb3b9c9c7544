"""Submitting jobs: tagged names, arrays split at the site's limit, never twice.

Submissions are idempotent: the job name carries a unique tag (``<name>-<tag>``).
After an ambiguous failure (a timeout, a transient error, output that is not a job
id) the name is looked up before submitting again, so a retry never submits twice.
``N`` identical jobs go out as job arrays, as few as the site's and the profile's
array limits allow; if one of several arrays is rejected, the ones already submitted
are cancelled before :class:`~jobstrap.errors.SubmitError` is raised, so nothing is
left half-submitted.
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from jobstrap.batchctl.commands import CommandResult, CommandRunner
from jobstrap.errors import BatchCommandError, SubmitError
from jobstrap.jobs.spec import ArraySpec, JobSpec
from jobstrap.store.rundir import atomic_write_text

__all__ = ["DEFAULT_MAX_ARRAY_SIZE", "Submission", "Submitter", "tagged"]

log = logging.getLogger(__name__)

#: Slurm's default ``MaxArraySize``: used when the site's cannot be read.
DEFAULT_MAX_ARRAY_SIZE = 1001
#: Bytes of argv per cancel or signal call: far below Linux's 128 KiB per argument
#: and 2 MiB in all, so even ids a system cannot fold (PBS) need few calls.
_ARGV_BUDGET = 32 * 1024


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


def tagged(spec: JobSpec) -> JobSpec:
    """``spec`` with its name ending in its tag (``<job_name>-<tag>``), as submissions need."""
    if spec.name.endswith(spec.tag):
        return spec
    return replace(spec, name=f"{spec.name}-{spec.tag}")


def _chunk_sizes(count: int, limit: int) -> list[int]:
    full, rest = divmod(count, limit)
    return [limit] * full + ([rest] if rest else [])


class Submitter(CommandRunner):
    """A command runner that submits, cancels and signals jobs."""

    #: Site array limits, read once per process per system.
    _array_limits: ClassVar[dict[tuple[str, int], int | None]] = {}

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
            tasks = self.system.array_task_ids(batch_id, array) if array else [batch_id]
            submission.job_ids.extend(tasks)
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
        found = self.system.parse_find_by_name(result.stdout)
        bases = {self.system.base_job_id(j) for j in found}
        new = sorted(bases - known, key=self.system.id_order)
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
        """Cancel jobs or array tasks; ids the controller no longer knows count as done.

        As few calls as the argv budget allows: the system folds an array's tasks
        into one argument (Slurm), so 10,000 tasks in 10 arrays take one call.
        """
        for argv in _argv_batches(list(dict.fromkeys(job_ids)), self.system.cancel_argv):
            self.run(argv, ok_unknown_job=True)
        self._cancelled()

    def signal(self, job_ids: Iterable[str], signal: str) -> None:
        """Send ``signal`` (``USR1``, ``TERM``...) to the jobs' batch shells."""

        def build(chunk: Sequence[str]) -> list[str]:
            return self.system.signal_argv(chunk, signal)

        for argv in _argv_batches(list(dict.fromkeys(job_ids)), build):
            self.run(argv, ok_unknown_job=True)

    def _cancelled(self) -> None:
        """Called after every cancel (the watcher polls soon to see the jobs go)."""


def _argv_batches(
    ids: Sequence[str], build: Callable[[Sequence[str]], list[str]]
) -> list[list[str]]:
    """argvs (``build(chunk)``) covering ``ids``, each within :data:`_ARGV_BUDGET`.

    Halves a chunk until its argv fits, so ids the system folds (one array, one
    argument) stay in one call however many tasks they are.
    """
    if not ids:
        return []
    argv = build(ids)
    if len(ids) == 1 or sum(len(a) + 1 for a in argv) <= _ARGV_BUDGET:
        return [argv]
    half = len(ids) // 2
    return _argv_batches(ids[:half], build) + _argv_batches(ids[half:], build)


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
