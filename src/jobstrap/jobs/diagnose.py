"""Why a batch job failed: the one failure explainer.

A job that fails on a compute node leaves two clues: the batch system's record (end
state, exit code, node) and the tail of its stderr. :func:`diagnose` reads both and
returns a :class:`Diagnosis`: what kind of failure it was, one line a person can act
on ("python not found on node1: /nonexistent/python"), what to change in the profile,
and whether it is *fatal* (it would repeat on every node, so retrying cannot help).

The notebook cluster stops on fatal failures and quotes the message; ``jobstrap
doctor`` turns the same diagnosis into its checks. Pure: no I/O.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from jobstrap.states import JobState, TextEnum
from jobstrap.systems.base import JobRecord

__all__ = [
    "FIX_PYTHON",
    "Diagnosis",
    "FailureKind",
    "diagnose",
    "diagnose_record",
    "killed_for_memory",
    "last_traceback",
]

_NOT_FOUND = re.compile(r"(?P<path>[^\s:'\"]+): (?:No such file or directory|command not found)")
_DENIED = re.compile(r"(?P<path>[^\s:'\"]+): Permission denied")
_SRUN_NODE = re.compile(r"srun: error: (?P<node>[\w.-]+): task \d+")
#: Slurm's words for a step the memory limit killed (srun's and slurmstepd's).
_OOM = re.compile(r"tasks? [\d,-]+: Out Of Memory|Detected \d+ oom.kill event")
_NO_MODULE = re.compile(r"No module named '?(?P<module>[\w.]+)'?")
_TRACEBACK = "Traceback (most recent call last):"
#: Another rank's routine log record (Dask's and jobstrap's format): never a reason.
#: It may start mid-line. The interpreter writes a traceback in pieces (the caret
#: line's indent, then its carets; the exception's type, then ": ", then its message),
#: and a record another rank writes between two pieces lands inside the line. What
#: comes before the record (group 1) is the start of a line the next line finishes.
_ROUTINE_LOG = re.compile(r"^(.*?)\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d+ - .* - (?:DEBUG|INFO) - ")
#: Packages every job needs: without one of them no job can start anywhere.
_REQUIRED_PACKAGES = ("jobstrap", "distributed", "dask")

#: What to change when the nodes have no such python.
FIX_PYTHON = (
    "set `python:` in the profile to the interpreter path that exists on the compute "
    "nodes (check with `srun -N1 which python3`), or make it available with "
    "`prologue:` (e.g. `module load python` and `source ~/venv/bin/activate`)"
)


class FailureKind(TextEnum):
    """What kind of failure a job had."""

    #: The profile's python does not exist on the node.
    PYTHON_NOT_FOUND = "PYTHON_NOT_FOUND"
    #: It exists but may not be executed.
    PYTHON_NOT_EXECUTABLE = "PYTHON_NOT_EXECUTABLE"
    #: jobstrap, distributed or dask is missing from that python.
    PACKAGE_MISSING = "PACKAGE_MISSING"
    #: Another module is missing (the application's own imports).
    MODULE_MISSING = "MODULE_MISSING"
    #: Exit code 127: the job script ran a command that does not exist.
    COMMAND_NOT_FOUND = "COMMAND_NOT_FOUND"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    #: The job ended without any of its workers reaching the scheduler.
    NO_WORKER = "NO_WORKER"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    CANCELLED = "CANCELLED"
    #: Anything else: the last line of stderr says more.
    FAILED = "FAILED"


#: Failures that would repeat on every node: the profile or the environment is wrong.
_FATAL = frozenset(
    {
        FailureKind.PYTHON_NOT_FOUND,
        FailureKind.PYTHON_NOT_EXECUTABLE,
        FailureKind.PACKAGE_MISSING,
        FailureKind.COMMAND_NOT_FOUND,
    }
)

_STATE_KINDS = {
    JobState.TIMEOUT: FailureKind.TIMEOUT,
    JobState.NODE_FAIL: FailureKind.NODE_FAIL,
    JobState.CANCELLED: FailureKind.CANCELLED,
}

_FIXES = {
    FailureKind.PYTHON_NOT_FOUND: FIX_PYTHON,
    FailureKind.COMMAND_NOT_FOUND: FIX_PYTHON,
    FailureKind.OUT_OF_MEMORY: "raise `memory:`",
    FailureKind.TIMEOUT: "the queue killed it at its walltime; raise `walltime:`",
    FailureKind.NODE_FAIL: "the node failed; try again",
    FailureKind.CANCELLED: "it was cancelled by someone else, or by the site's policy",
}
_FIX_LOGS = "read the job's stderr in the run directory's logs/"


@dataclass(frozen=True)
class Diagnosis:
    """Why a job failed.

    Attributes
    ----------
    kind
        What kind of failure it was.
    message
        One line saying so, e.g. ``"python not found on node1: /nonexistent/python"``.
    fix
        What to change (in the profile's terms).
    fatal
        True when the failure would repeat on every node: retrying cannot help.
    node
        The node it failed on (from srun's words, else the batch system's record).
    module
        The missing module, for PACKAGE_MISSING and MODULE_MISSING.
    """

    kind: FailureKind
    message: str
    fix: str
    fatal: bool
    node: str = ""
    module: str = ""


def killed_for_memory(tail: str) -> bool:
    """Whether a job's stderr says its memory limit killed it.

    Slurm marks only the step whose processes the OOM killer hit as OUT_OF_MEMORY;
    the job itself ends FAILED (its script exited non-zero), and ``squeue``/``sacct
    -X`` say FAILED. The step's words in the job's stderr tell the truth.
    """
    return bool(_OOM.search(tail))


def last_traceback(tail: str) -> list[str]:
    """The last Python traceback in ``tail``: its header, frames and exception line.

    A job's stderr interleaves every rank's log lines, so the traceback is found by
    its shape (the header, indented frame lines, then the first unindented line: the
    exception) rather than taken as the last lines. Empty when there is none.
    """
    lines = _said_lines(tail)
    starts = [i for i, line in enumerate(lines) if line.startswith(_TRACEBACK)]
    if not starts:
        return []
    block = [lines[starts[-1]]]
    for line in lines[starts[-1] + 1 :]:
        block.append(line)
        if line.strip() and not line[0].isspace():
            break  # the exception itself ends the traceback
    return block


def _said_lines(tail: str) -> list[str]:
    """``tail``'s lines without the ranks' routine log records, each line made whole.

    A record written inside another line (see ``_ROUTINE_LOG``) is taken out and the
    two pieces of that line are joined again.
    """
    lines: list[str] = []
    carried = ""
    for line in tail.splitlines():
        record = _ROUTINE_LOG.match(line)
        if record:
            carried += record.group(1)
            continue
        lines.append(carried + line)
        carried = ""
    if carried:
        lines.append(carried)
    return lines


def _node_of(record_nodes: str, tail: str) -> str:
    match = _SRUN_NODE.search(tail)
    if match:
        return match["node"]
    return record_nodes


def _same_program(found: str, python: str) -> bool:
    return found == python or os.path.basename(found) == os.path.basename(python) == found


def _make(kind: FailureKind, message: str, node: str, module: str = "", fix: str = "") -> Diagnosis:
    fix = fix or _FIXES.get(kind, _FIX_LOGS)
    return Diagnosis(kind, message, fix, kind in _FATAL, node, module)


def diagnose(
    state: JobState, exit_code: int | None, nodes: str, tail: str, python: str
) -> Diagnosis:
    """Why a job failed, from its end state and the tail of its stderr.

    Parameters
    ----------
    state
        The job's end state.
    exit_code
        Its exit code, if the batch system reported one.
    nodes
        The node(s) it ran on, as the batch system reported them.
    tail
        The last lines of its stderr.
    python
        The profile's ``python`` (what the job tried to run).

    Returns
    -------
    Diagnosis
        e.g. kind PYTHON_NOT_FOUND, message ``"python not found on node1: ..."``, fatal.
    """
    node = _node_of(nodes, tail)
    where = f" on {node}" if node else ""
    for match in _NOT_FOUND.finditer(tail):
        if _same_program(match["path"], python):
            message = f"python not found{where}: {python} (check python= or the profile)"
            return _make(FailureKind.PYTHON_NOT_FOUND, message, node)
    for match in _DENIED.finditer(tail):
        if _same_program(match["path"], python):
            fix = f"make {python} executable on the nodes, or point `python:` at one that is"
            message = f"python is not executable{where}: {python}"
            return _make(FailureKind.PYTHON_NOT_EXECUTABLE, message, node, fix=fix)
    missing = _NO_MODULE.search(tail)
    module = missing["module"] if missing else ""
    install = f"{python} -m pip install {module} (the same version as here)"
    if module.split(".")[0] in _REQUIRED_PACKAGES:
        message = f"{module} is not installed for {python}{where}"
        return _make(FailureKind.PACKAGE_MISSING, message, node, module, install)
    if exit_code == 127:
        message = f"a command was not found{where} (exit 127)"
        return _make(FailureKind.COMMAND_NOT_FOUND, message, node)
    if state is JobState.OUT_OF_MEMORY or killed_for_memory(tail):
        message = f"ran out of memory{where}; raise memory= or lower processes="
        return _make(FailureKind.OUT_OF_MEMORY, message, node)
    if state is JobState.MISSING:
        message = f"ended{where} without any worker reaching the scheduler"
        return _make(FailureKind.NO_WORKER, message, node)
    # The exception a traceback ends with, else stderr's last line that is not one of
    # the ranks' routine log records (they go on after the app has said why).
    said = [line for line in _said_lines(tail) if line.strip()]
    last = (last_traceback(tail) or said or [""])[-1].strip()
    code = f" (exit {exit_code})" if exit_code is not None else ""
    failed = f"failed{where}{code}" + (f": {last}" if last else "")
    if module:
        # The application's own import failed: a failure of that job, not of the site.
        return _make(FailureKind.MODULE_MISSING, failed, node, module, install)
    return _make(_STATE_KINDS.get(state, FailureKind.FAILED), failed, node)


def diagnose_record(record: JobRecord | None, tail: str, python: str) -> Diagnosis:
    """:func:`diagnose` for a batch system's record (``None``: nothing is known)."""
    if record is None:
        return diagnose(JobState.UNKNOWN, None, "", tail, python)
    return diagnose(record.state, record.exit_code, record.nodes, tail, python)
