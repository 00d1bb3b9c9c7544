"""The exceptions jobstrap raises.

Every error a user can cause says, on one line, which field or command was wrong,
the value, and what is allowed. The CLI prints ``str(error)`` and exits 2 for
:class:`UserError` (no traceback); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence


class JobstrapError(Exception):
    """Base class of every error jobstrap raises on purpose."""


class UserError(JobstrapError):
    """Something the user asked for cannot be done; the message says how to fix it."""


class ConfigError(UserError, ValueError):
    """A setting has an invalid value or an unknown name.

    Parameters
    ----------
    field
        The setting's name, e.g. ``"walltime"``.
    value
        The offending value, shown with ``repr``.
    problem
        What is wrong, e.g. ``"minutes must be 0-59"``.
    suggestion
        An optional hint, e.g. ``"did you mean 'walltime'?"``.
    """

    def __init__(
        self, field: str, value: object, problem: str, suggestion: str | None = None
    ) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        self.suggestion = suggestion
        hint = f" ({suggestion})" if suggestion else ""
        super().__init__(f"{field}: invalid value {value!r}: {problem}{hint}")


class BatchCommandError(JobstrapError):
    """A batch command (sbatch, squeue, qsub, ...) failed.

    Carries the exact argv, exit code and stderr so the user sees the batch
    system's own words, e.g. ``Memory specification can not be satisfied``.
    """

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int | None,
        stderr: str,
        stdout: str = "",
        *,
        transient: bool = False,
        reason: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        self.stdout = stdout
        self.transient = transient
        first = (stderr.strip() or stdout.strip() or reason or "no output").splitlines()
        detail = first[-1] if first else ""
        code = "timed out" if returncode is None else f"exit {returncode}"
        super().__init__(f"{shlex.join(self.argv)} failed ({code}): {detail}")


class SubmitError(BatchCommandError, UserError):
    """The batch system rejected a submission; nothing was left submitted."""


class NetworkError(UserError):
    """No usable network interface or address (the message lists what exists)."""


class JobFailedError(JobstrapError):
    """A job ended without producing what it should have.

    Parameters
    ----------
    job_id
        The batch system's job id.
    state
        The final :class:`jobstrap.states.JobState` name (TIMEOUT, CANCELLED, ...).
    stderr_tail
        The last lines of the job's stderr, if they could be read.
    log_path
        Where the whole of that stderr is (the message's last line names it).
    """

    def __init__(
        self, job_id: str, state: str, stderr_tail: str = "", detail: str = "", log_path: str = ""
    ) -> None:
        self.job_id = job_id
        self.state = state
        self.stderr_tail = stderr_tail
        self.log_path = log_path
        message = f"job {job_id} ended {state}" + (f": {detail}" if detail else "")
        if stderr_tail.strip():
            message += "\n--- stderr tail ---\n" + stderr_tail.rstrip()
        if log_path:
            message += f"\nlogs: {log_path}"
        super().__init__(message)
