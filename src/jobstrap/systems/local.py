"""The local backend: job scripts run as process groups on this machine.

It is a batch system like the others, driven by argv through batch control: the
``jobstrap.localq`` package is its ``sbatch``/``squeue``/``scancel``. It reads the same
kind of directives (``#JOBSTRAP --walltime=...``) from the script, so a newcomer
without a batch system runs exactly the scripts a cluster would.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence

from jobstrap.config.units import format_walltime_pbs
from jobstrap.jobs.model import JobSpec
from jobstrap.states import JobState
from jobstrap.systems.base import (
    JobRecord,
    UnderscoreArrayIds,
    apply_extras,
    directive_value,
)
from jobstrap.systems.partitions import Partition

PREFIX = "#JOBSTRAP"


def _names(directive: str) -> set[str]:
    head = directive.split("=", 1)[0].split()[0] if directive.strip() else ""
    return {head}


def _localq(*args: str) -> list[str]:
    # The same interpreter that runs the toolkit runs the queue: no PATH lookups.
    return [sys.executable, "-m", "jobstrap.localq", *args]


def _clock(seconds: str) -> str:
    """localq's seconds as ``HH:MM:SS``; "" (not started, not running) stays."""
    return format_walltime_pbs(int(seconds)) if seconds.isdigit() else ""


class Local(UnderscoreArrayIds):
    """Builders and parsers for the local process-group backend."""

    name = "local"
    job_id_variable = "JOBSTRAP_JOB_ID"
    array_task_variable = "JOBSTRAP_ARRAY_TASK_ID"
    required_commands: tuple[str, ...] = ()
    optional_commands: tuple[str, ...] = ()
    fails_without_log = False
    discard_log_directives = ("--output=/dev/null", "--error=/dev/null")

    def log_stems(self, job_id: str) -> list[str]:
        """The id itself: ``12``, array task ``12_3``."""
        return [job_id]

    def partition_argv(self, queue: str | None) -> list[list[str]]:
        """No partitions: nothing to ask."""
        return []

    def parse_partitions(self, argv: Sequence[str], text: str) -> dict[str, Partition]:
        """No partitions."""
        return {}

    default_launcher = "mpiexec"
    node_launcher: str | None = None
    jobs_run_here = True
    warns_before_walltime = False
    signal_early_by = 0

    def directives(self, spec: JobSpec) -> list[str]:
        stem = "%A_%a" if spec.array else "%j"
        lines = [
            f"--job-name={spec.name}",
            f"--output={directive_value(os.path.join(spec.log_directory, stem + '.out'))}",
            f"--error={directive_value(os.path.join(spec.log_directory, stem + '.err'))}",
            f"--time={spec.walltime}",
            f"--ntasks={spec.ntasks}",
        ]
        if spec.array:
            lines.append(f"--array={spec.array.start}-{spec.array.stop}")
        if spec.signal:
            signal, seconds = spec.signal
            lines.append(f"--signal={signal}@{seconds}")
        return apply_extras(
            lines, spec.extra_directives, spec.skip_directives, prefix=PREFIX, names_of=_names
        )

    def script_setup(self, spec: JobSpec) -> list[str]:
        return []

    #: The run directory is on this machine's own disk: a short grace is enough.
    result_grace = 2.0

    def plain_launch_argv(
        self, python: str, ntasks: int, command: Sequence[str]
    ) -> list[str] | None:
        """``localq launch``: the ranks as processes, each told its rank in the environment."""
        return [python, "-m", "jobstrap.localq", "launch", "-n", str(ntasks), "--", *command]

    def submit_argv(self, script: str, spec: JobSpec) -> list[str]:
        return _localq("submit", *spec.submit_args, script)

    def parse_submit(self, stdout: str) -> str:
        job_id = stdout.strip().splitlines()[-1].strip() if stdout.strip() else ""
        if not job_id.isdigit():
            raise ValueError(f"localq printed {stdout.strip()!r}, not a job id")
        return job_id

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        return _localq("status", *job_ids)

    def parse_status(self, stdout: str) -> dict[str, JobRecord]:
        """Lines of ``ID|STATE|EXIT|REASON|NAME|ELAPSED|LEFT`` (seconds)."""
        records: dict[str, JobRecord] = {}
        for line in stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) < 2 or not parts[0]:
                continue
            exit_text = parts[2] if len(parts) > 2 else ""
            records[parts[0]] = JobRecord(
                job_id=parts[0],
                state=JobState.__members__.get(parts[1], JobState.UNKNOWN),
                exit_code=int(exit_text) if exit_text.lstrip("-").isdigit() else None,
                reason=parts[3] if len(parts) > 3 else "",
                name=parts[4] if len(parts) > 4 else "",
                nodes="localhost",
                raw_state=parts[1],
                elapsed=_clock(parts[5]) if len(parts) > 5 else "",
                time_left=_clock(parts[6]) if len(parts) > 6 else "",
            )
        return records

    def history_argv(self, job_ids: Sequence[str]) -> list[str] | None:
        return None  # the local queue keeps every job's final record

    def parse_history(self, stdout: str) -> dict[str, JobRecord]:
        return self.parse_status(stdout)

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        return _localq("cancel", *job_ids)

    def signal_argv(self, job_ids: Sequence[str], signal: str) -> list[str]:
        return _localq("signal", f"--signal={signal}", *job_ids)

    def find_by_name_argv(self, name: str) -> list[str]:
        # Only our own jobs (a spool may be shared): never adopt another user's job.
        return _localq("find", f"--uid={os.getuid()}", name)

    def parse_find_by_name(self, stdout: str) -> list[str]:
        return stdout.split()

    def is_transient_error(self, stderr: str) -> bool:
        return False

    def is_unknown_job_error(self, stderr: str) -> bool:
        return False

    def limits_argv(self) -> list[str]:
        return _localq("limits")

    def parse_max_array_size(self, stdout: str) -> int | None:
        match = re.search(r"^MaxArraySize=(\d+)", stdout, re.MULTILINE)
        return int(match.group(1)) if match else None

    def controller_argv(self) -> list[str]:
        return _localq("limits")

    def parse_controller(self, stdout: str) -> str:
        """``Controller=host:/spool`` -> ``host:/spool`` (each spool counts its own ids)."""
        match = re.search(r"^Controller=(.+)$", stdout, re.MULTILINE)
        return match.group(1).strip() if match else ""


SYSTEM = Local()
