"""What every batch system module provides, and the helpers they share.

A batch system is data plus pure functions: directive builders, argv builders and
output parsers. Nothing in ``systems/`` runs a process; batch control does.
"""

from __future__ import annotations

import getpass
import os
import pwd
import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from jobstrap.jobs.model import ArraySpec, JobSpec
from jobstrap.states import JobState
from jobstrap.systems.partitions import Partition


# slots: a watcher holds one record per tracked job (10,000 for a big cluster); a
# per-instance __dict__ would be most of each record's memory.
@dataclass(frozen=True, slots=True)
class JobRecord:
    """What the batch system says of one job (or one array task)."""

    job_id: str
    state: JobState
    exit_code: int | None = None
    #: Why it is pending, or why it ended (``Resources``, ``TimeLimit``, ...).
    reason: str = ""
    nodes: str = ""
    #: The job's name/comment as the batch system reports it (for tag matching).
    name: str = ""
    comment: str = ""
    submit_time: str = ""
    #: The batch system's own state word, before mapping.
    raw_state: str = ""
    #: Run time so far or in total, as the batch system prints it (``1-02:03:04``).
    elapsed: str = ""
    #: Walltime left of a running job, in the batch system's format (``4:59``,
    #: ``1-02:03:04``); empty when not running or unlimited.
    time_left: str = ""
    #: Set by the watcher while the controller cannot be asked (state UNKNOWN): the
    #: state last seen before that, and since when (epoch seconds) it has been unknown.
    last_state: JobState | None = None
    unknown_since: float | None = None


class BatchSystem(Protocol):
    """The interface every batch system module's ``SYSTEM`` object implements."""

    name: str
    #: Variables the job sees: its id and, in arrays, its task index.
    job_id_variable: str
    array_task_variable: str
    #: Commands a login node needs to run jobs, and ones that only add to them
    #: (``sacct``: the final state of ended jobs).
    required_commands: tuple[str, ...]
    optional_commands: tuple[str, ...]
    #: True when the batch system fails a job whose log file it cannot open, before
    #: anything in it runs (Slurm); :attr:`discard_log_directives` then runs it anyway.
    fails_without_log: bool
    #: Directives (without prefix) sending a job's output and error nowhere.
    discard_log_directives: tuple[str, ...]

    def log_stems(self, job_id: str) -> list[str]:
        """Names (without ``.out``/``.err``) the shipped templates give a job's logs."""
        ...

    def partition_argv(self, queue: str | None) -> list[list[str]]:
        """Commands describing the partitions (queues), best first; the next is a fallback."""
        ...

    def parse_partitions(self, argv: Sequence[str], text: str) -> dict[str, Partition]:
        """The partitions in the output of one of :meth:`partition_argv`'s commands."""
        ...

    #: What ``launcher: auto`` means here: how a job starts its ranks.
    default_launcher: str
    #: The launcher a workers job always uses to start one bootstrap per node, whatever
    #: the profile says (``srun`` on Slurm, so signals and cleanup reach the workers),
    #: or None to use the profile's.
    node_launcher: str | None
    #: Every job runs on the submitting machine (a scheduler may bind to loopback).
    jobs_run_here: bool
    #: Worker jobs ask for USR1 before their walltime (``JobSpec.signal``) as the
    #: backstop of a cluster's planned rotation.
    warns_before_walltime: bool
    #: How many seconds before the time asked for the warning signal may arrive (Slurm:
    #: "up to 60 seconds earlier than specified", sbatch(1) ``--signal``).
    signal_early_by: int

    def directives(self, spec: JobSpec) -> list[str]:
        """Full directive lines for the script header (``#SBATCH --time=...``)."""
        ...

    #: Seconds a file a job wrote may take to be seen here after the job ended
    #: (shared file systems cache attributes and negative lookups).
    result_grace: float

    def plain_launch_argv(
        self, python: str, ntasks: int, command: Sequence[str]
    ) -> list[str] | None:
        """argv starting ``ntasks`` ranks of ``command`` as plain processes, without MPI.

        Each rank finds its rank in the environment (``PMI_RANK``/``PMI_SIZE``). None
        when the batch system has no launcher of its own.
        """
        ...

    def submit_argv(self, script: str, spec: JobSpec) -> list[str]:
        """argv that submits ``script`` and prints the job id."""
        ...

    def parse_submit(self, stdout: str) -> str:
        """The job id from the submit command's output."""
        ...

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        """argv asking for the live state of ``job_ids`` (one call for all)."""
        ...

    def parse_status(self, stdout: str) -> dict[str, JobRecord]:
        """Live records keyed by job id (array tasks individually: ``123_4``)."""
        ...

    def history_argv(self, job_ids: Sequence[str]) -> list[str] | None:
        """argv asking for ended jobs' final state (``sacct``), or None."""
        ...

    def parse_history(self, stdout: str) -> dict[str, JobRecord]:
        """Final records keyed by job id."""
        ...

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        """argv cancelling ``job_ids`` (array tasks or whole arrays)."""
        ...

    def find_by_name_argv(self, name: str) -> list[str]:
        """argv listing live jobs whose name is exactly ``name`` (idempotent retries)."""
        ...

    def parse_find_by_name(self, stdout: str) -> list[str]:
        """Job ids from :meth:`find_by_name_argv` output."""
        ...

    def is_transient_error(self, stderr: str) -> bool:
        """True when a failed command is worth retrying (controller busy/unreachable)."""
        ...

    def is_unknown_job_error(self, stderr: str) -> bool:
        """True when a status/cancel command failed only because a job id is unknown."""
        ...

    def signal_argv(self, job_ids: Sequence[str], signal: str) -> list[str]:
        """argv sending ``signal`` to the jobs (their batch shells)."""
        ...

    def limits_argv(self) -> list[str]:
        """argv printing the site's limits (for :meth:`parse_max_array_size`)."""
        ...

    def controller_argv(self) -> list[str]:
        """argv printing what names the controller that numbers the jobs (one call)."""
        ...

    def parse_controller(self, stdout: str) -> str:
        """The controller's name in :meth:`controller_argv`'s output ("" if not there).

        Job ids are unique only within one controller (Slurm cluster, PBS server,
        local spool): the name, with the system's, tells whose id a saved id is.
        """
        ...

    def parse_max_array_size(self, stdout: str) -> int | None:
        """The largest array the site accepts (task ids below it), or None."""
        ...

    def base_job_id(self, job_id: str) -> str:
        """The id the submit command printed for the job or array task ``job_id``."""
        ...

    def array_task_ids(self, job_id: str, array: ArraySpec) -> list[str]:
        """Ids of the tasks of the array the submit command printed as ``job_id``."""
        ...

    def find_record(self, job_id: str, records: Mapping[str, JobRecord]) -> JobRecord | None:
        """The record among parsed ``records`` that answers for ``job_id``, or None."""
        ...

    def id_order(self, job_id: str) -> tuple[int, str]:
        """Sort key putting job ids in submission order (oldest first)."""
        ...


# --- shared helpers -------------------------------------------------------------------------

_TRANSIENT_PATTERNS = (
    "socket timed out",
    "resource temporarily unavailable",
    "unable to contact slurm controller",
    "slurm_load_jobs error: unable to contact",
    "connection refused",
    "connection timed out",
    "communication failure",
    "temporarily unavailable",
    "try again",
    "pbs_server is not running",
    "cannot connect to server",
    "end of file",
    "zero bytes were transmitted",
)


def is_transient(stderr: str) -> bool:
    """True for the controller's "busy or unreachable" messages (retry), not user errors."""
    text = stderr.lower()
    return any(pattern in text for pattern in _TRANSIENT_PATTERNS)


def directive_value(value: str) -> str:
    """Quote a directive value containing whitespace (sbatch/qsub honour double quotes)."""
    if re.search(r"\s", value):
        return '"' + value.replace('"', '\\"') + '"'
    return value


def apply_extras(
    builtins: Sequence[str],
    extras: Iterable[str],
    skip: Iterable[str],
    *,
    prefix: str,
    names_of: Callable[[str], set[str]],
) -> list[str]:
    """Merge built-in and user directives, then drop the skipped ones.

    Directives are given without prefix (``--mem=4G``) and returned with it. A user
    directive replaces the built-in of the same name; ``skip`` removes by *name*, so
    skipping ``--mem`` keeps ``--mem-per-cpu``.
    """
    cleaned_extras = [_strip_prefix(d, prefix) for d in extras]
    skip_names = {_strip_prefix(s, prefix) for s in skip}
    extra_names = set().union(*(names_of(d) for d in cleaned_extras)) if cleaned_extras else set()
    merged = [d for d in builtins if not (names_of(d) & extra_names)] + cleaned_extras
    kept = [d for d in merged if not (names_of(d) & skip_names)]
    return [f"{prefix} {d}" for d in kept]


def _strip_prefix(directive: str, prefix: str) -> str:
    text = directive.strip()
    if text.startswith(prefix):
        text = text[len(prefix) :].strip()
    return text


def fold_components(job_id: str, records: Mapping[str, JobRecord]) -> JobRecord | None:
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


def find_record(job_id: str, records: Mapping[str, JobRecord]) -> JobRecord | None:
    """The record that answers for ``job_id``, however the batch system spelled it.

    Besides the id itself: a heterogeneous job's components (``123+0``), and for an
    array task (``123_4``) the whole array's record (``123``), which is how Slurm
    reports an array that was never split into tasks, e.g. one cancelled while all
    its tasks were still pending.
    """
    record = records.get(job_id) or fold_components(job_id, records)
    if record is None and "_" in job_id:
        whole = records.get(job_id.split("_", 1)[0])
        if whole is not None:
            record = replace(whole, job_id=job_id)
    return record


def job_id_order(job_id: str) -> tuple[int, str]:
    """Sort key of a numeric job id, with or without a server suffix (``7.srv``)."""
    digits = "".join(ch for ch in job_id.split(".")[0] if ch.isdigit())
    return (int(digits) if digits else 0, job_id)


def current_user() -> str:
    """The login name of the user this process runs as (not ``$USER``, which can lie).

    Looking jobs up by name is filtered by it: a job someone else named alike must
    never be taken for ours.
    """
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid without a passwd entry (some containers)
        return getpass.getuser()


def quote_argv(argv: Sequence[str]) -> str:
    """A copy-pasteable shell form of an argv (for messages and logs)."""
    return shlex.join(argv)


class ClusterNodes:
    """Defaults of a batch system whose jobs run on other nodes (Slurm, PBS).

    Results come back over a shared file system, whose attribute caches lag; ranks
    are started by MPI or the site's launcher only; no warning signal unless the
    system overrides it.
    """

    node_launcher: str | None = None
    jobs_run_here = False
    warns_before_walltime = False
    signal_early_by = 0
    #: NFS attribute caches lag: a finished job's result file may take this long to show.
    result_grace = 30.0

    def plain_launch_argv(
        self, python: str, ntasks: int, command: Sequence[str]
    ) -> list[str] | None:
        """None: ranks are started by MPI (or the user's launcher) only."""
        return None


class UnderscoreArrayIds:
    """Job ids as Slurm writes them, shared by every system that copies its style.

    Array tasks are ``<job>_<task>`` (``123_4``) and heterogeneous components
    ``<job>+<k>``; the local queue uses the same form, so both take these methods.
    """

    def base_job_id(self, job_id: str) -> str:
        """``123_4`` (array task) or ``123+1`` (heterogeneous component) -> ``123``."""
        for separator in ("_", "+"):
            if separator in job_id:
                return job_id.split(separator, 1)[0]
        return job_id

    def array_task_ids(self, job_id: str, array: ArraySpec) -> list[str]:
        """``123`` -> ``123_0``, ``123_1``, ..."""
        return [f"{job_id}_{i}" for i in array.task_ids]

    def find_record(self, job_id: str, records: Mapping[str, JobRecord]) -> JobRecord | None:
        """``job_id``'s record, its heterogeneous components folded, or its unsplit array's."""
        return find_record(job_id, records)

    def id_order(self, job_id: str) -> tuple[int, str]:
        """Order of ids: numerically by job, then by task."""
        return job_id_order(job_id)
