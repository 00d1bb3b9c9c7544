"""One vocabulary of job states for every batch system.

States say what they mean: a pilot job that reaches its walltime has done its job
(TIMEOUT is not FAILED); a job that ended without its workers or app ever reporting
in is MISSING; a transient controller error is UNKNOWN, never "gone".
"""

from __future__ import annotations

from enum import Enum


class TextEnum(str, Enum):
    """An enum whose members print as their value (Python 3.11's ``StrEnum``, on 3.10)."""

    def __str__(self) -> str:
        return str(self.value)


class JobState(TextEnum):
    """The state of one batch job (or one array task)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    #: Ran to the end with exit code 0.
    COMPLETED = "COMPLETED"
    #: Ran to the end with a non-zero exit code.
    FAILED = "FAILED"
    #: Killed at its walltime.
    TIMEOUT = "TIMEOUT"
    #: Preempted (and possibly requeued) by the batch system.
    PREEMPTED = "PREEMPTED"
    CANCELLED = "CANCELLED"
    #: Still in the batch system after jobstrap asked to cancel it (Slurm's COMPLETING
    #: while it cleans up, a local job's processes between SIGTERM and exit). Never a
    #: batch system's own word: ``jobstrap status`` shows it for a cancelled run's job
    #: that has not left yet. Not terminal: the job still holds its nodes.
    CANCELLING = "CANCELLING"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"
    #: Ended without its workers/app ever reporting in, or vanished from the controller.
    MISSING = "MISSING"
    #: The controller could not be asked (transient error); keep waiting.
    UNKNOWN = "UNKNOWN"

    @property
    def is_terminal(self) -> bool:
        """True when the job will not run (again) by itself."""
        return self in _TERMINAL

    @property
    def is_active(self) -> bool:
        """True while the job is queued or running (cancelling is still running)."""
        return self in (JobState.PENDING, JobState.RUNNING, JobState.CANCELLING)


_TERMINAL = frozenset(
    {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.TIMEOUT,
        JobState.CANCELLED,
        JobState.OUT_OF_MEMORY,
        JobState.NODE_FAIL,
        JobState.PREEMPTED,
        JobState.MISSING,
    }
)
