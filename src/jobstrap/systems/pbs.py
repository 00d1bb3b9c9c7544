"""PBS Pro / OpenPBS: directives, command lines and output parsers (pure).

Checked against a real OpenPBS 23.06 server (the golden files in the unit tests are
its output): ``qsub`` prints ``7.server`` (arrays ``7[].server``); ``qstat -x -t -f``
prints a ``Job Id:`` block of ``name = value`` lines per job (``-F json`` the same as
``{"Jobs": {...}}``, but for the first job id only) with ``job_state`` letters and,
with ``-x``, finished jobs (``F``, subjobs ``X``) with their ``Exit_status`` and
``substate``. PBS's own kills have negative statuses (walltime ``-29``, substate 93);
a ``qdel`` of a running job ends with 256 + SIGTERM (``271``) in substate 91, a
queued one in substate 91 without a status. Statuses >= 256 mean "killed by signal
(status - 256)". Torque is not supported: its ``qstat`` has no JSON output.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from jobstrap.config.units import format_memory_pbs, format_walltime_pbs, parse_walltime
from jobstrap.errors import ConfigError
from jobstrap.jobs.model import ArraySpec, JobSpec, Role
from jobstrap.states import JobState
from jobstrap.systems.base import (
    ClusterNodes,
    JobRecord,
    apply_extras,
    current_user,
    directive_value,
    find_record,
    is_transient,
    job_id_order,
)
from jobstrap.systems.partitions import Partition, parse_pbs_queue

#: ``job_state`` letters of live jobs.
STATES: dict[str, JobState] = {
    "Q": JobState.PENDING,  # queued
    "H": JobState.PENDING,  # held
    "W": JobState.PENDING,  # waiting for its start time
    "T": JobState.PENDING,  # in transit
    "M": JobState.PENDING,  # moved to another server
    "S": JobState.PENDING,  # suspended
    "U": JobState.PENDING,  # suspended: workstation busy
    "R": JobState.RUNNING,
    "E": JobState.RUNNING,  # exiting after having run
    "B": JobState.RUNNING,  # array job: at least one subjob started
}
_FINISHED = ("F", "X")
_JOB_ID_RE = re.compile(r"^\d+(?:\[\d*\])?(?:\.[\w.-]+)?$")


def _names(directive: str) -> set[str]:
    """``-l walltime=1:00:00`` -> {``-l walltime``, ``walltime``}; ``-q x`` -> {``-q``}."""
    parts = directive.split()
    if not parts:
        return set()
    if parts[0] == "-l" and len(parts) > 1:
        resource = re.split(r"[=:]", parts[1], maxsplit=1)[0]
        return {f"-l {resource}", resource}
    return {parts[0]}


#: ``substate`` of a finished job that was deleted (``qdel``), running or queued.
SUBSTATE_TERMINATED = 91
#: PBS's own ``Exit_status`` codes for jobs its MoM killed over a resource limit.
EXIT_KILL_WALLTIME = -29
_EXIT_KILL_MEMORY = (-26, -27)  # vmem, mem
#: Codes for "the job could not start on its node" (JOB_EXEC_FAIL1 .. JOB_EXEC_INITRMG).
_EXIT_NODE_FAIL = (-1, -2, -3, -4, -5, -6)


def finished_state(exit_status: int | None, comment: str, substate: int | None = None) -> JobState:
    """The final state of a finished (``F``/``X``) job.

    Parameters
    ----------
    exit_status
        ``Exit_status`` (absent for a job deleted before it ran).
    comment
        The job's ``comment``; older servers and site hooks say "walltime ...
        exceeded" there instead of the negative status.
    substate
        ``substate``: 91 is a deleted job, whatever it was doing.
    """
    text = comment.lower()
    if exit_status == EXIT_KILL_WALLTIME or (
        "walltime" in text and ("exceeded" in text or "limit" in text)
    ):
        return JobState.TIMEOUT
    if exit_status in _EXIT_KILL_MEMORY or (
        re.search(r"\b(v?mem|memory)\b", text) and "exceeded" in text
    ):
        return JobState.OUT_OF_MEMORY
    if substate == SUBSTATE_TERMINATED:
        return JobState.CANCELLED
    if exit_status is None:
        return JobState.UNKNOWN
    if exit_status == 0:
        return JobState.COMPLETED
    if exit_status < 0:
        return JobState.NODE_FAIL if exit_status in _EXIT_NODE_FAIL else JobState.FAILED
    if exit_status in (256 + 15, 256 + 9) and ("terminated" in text or "delete" in text):
        return JobState.CANCELLED
    return JobState.FAILED


def _time_left(state: JobState, attrs: Mapping[str, Any]) -> str:
    """A running job's walltime left: ``Resource_List.walltime - resources_used.walltime``.

    PBS reports both (``resources_used`` is refreshed by the MoM every poll cycle, so the
    answer lags by up to a minute); it has no "time left" field of its own.
    """
    if state is not JobState.RUNNING:
        return ""

    limit = (attrs.get("Resource_List") or {}).get("walltime")
    used = (attrs.get("resources_used") or {}).get("walltime", "0")
    if not limit:
        return ""

    try:
        left = parse_walltime(str(limit)) - parse_walltime(str(used))
    except ConfigError:
        return ""
    return format_walltime_pbs(max(0, left))


def parse_full_text(text: str) -> dict[str, dict[str, Any]]:
    """``qstat -f``'s text blocks as the JSON form's ``Jobs`` mapping.

    ``Job Id: 7.srv`` opens a block; ``    name = value`` lines follow, long values
    wrapped onto lines that start with a tab (joined as they are: PBS cuts anywhere);
    ``Resource_List.walltime`` becomes ``{"Resource_List": {"walltime": ...}}``.
    """
    jobs: dict[str, dict[str, Any]] = {}
    attrs: dict[str, Any] | None = None
    last: tuple[dict[str, Any], str] | None = None
    for line in text.splitlines():
        if line.startswith("Job Id:"):
            attrs = jobs.setdefault(line.partition(":")[2].strip(), {})
            last = None
        elif line.startswith("\t") and last is not None:
            where, key = last
            where[key] += line[1:]
        elif attrs is not None and " = " in line and line[:1] == " ":
            # Only the indent goes: a wrapped value may end in the space PBS cut at.
            name, _, value = line.lstrip().partition(" = ")
            group, dot, key = name.partition(".")
            where = attrs.setdefault(group, {}) if dot else attrs
            key = key if dot else name
            where[key] = value
            last = (where, key)
    return jobs


class PBS(ClusterNodes):
    """Pure builders and parsers for PBS Pro and OpenPBS."""

    name = "pbs"
    job_id_variable = "PBS_JOBID"
    array_task_variable = "PBS_ARRAY_INDEX"
    required_commands = ("qsub", "qstat", "qdel")
    optional_commands: tuple[str, ...] = ()
    fails_without_log = False
    discard_log_directives = ("-o /dev/null", "-e /dev/null")

    def log_stems(self, job_id: str) -> list[str]:
        """The numeric part with an array index as ``_<index>`` (what the templates
        write: ``7.srv`` -> ``7``, ``7[2].srv`` -> ``7_2``), then the id itself."""
        stem = re.sub(r"\[(\d+)\]", r"_\1", job_id.split(".", 1)[0])
        return list(dict.fromkeys([stem, job_id]))

    def partition_argv(self, queue: str | None) -> list[list[str]]:
        """``qstat -Qf QUEUE`` for the profile's queue (nothing to ask without one)."""
        return [["qstat", "-Qf", queue]] if queue else []

    def parse_partitions(self, argv: Sequence[str], text: str) -> dict[str, Partition]:
        """``qstat -Qf``'s queue."""
        return parse_pbs_queue(text)

    default_launcher = "mpiexec"

    def directives(self, spec: JobSpec) -> list[str]:
        if spec.qos:
            raise ConfigError("qos", spec.qos, "PBS has no QOS; choose a queue instead")
        chunk = f"{spec.nodes}:ncpus={spec.tasks_per_node * spec.cpus_per_task}"
        chunk += f":mpiprocs={spec.tasks_per_node}"
        ngpus = _gpus_per_chunk(spec)
        memory = spec.memory
        if spec.memory_per == "gpu" and spec.mem_per_gpu is not None:
            # PBS counts memory per chunk (node) only.
            memory = spec.mem_per_gpu * ngpus
        if memory is not None:
            chunk += f":mem={format_memory_pbs(memory)}"
        if ngpus:
            chunk += f":ngpus={ngpus}"
        lines = [f"-N {spec.name}"]
        if spec.queue:
            lines.append(f"-q {spec.queue}")
        if spec.account:
            lines.append(f"-A {spec.account}")
        lines.append(f"-l select={chunk}")
        if spec.nodes > 1:
            lines.append("-l place=scatter")
        lines.append(f"-l walltime={format_walltime_pbs(spec.walltime)}")
        # PBS arrays need at least two subjobs; a one-task "array" is a plain job.
        is_array = bool(spec.array and spec.array.size > 1)
        if spec.array and is_array:
            lines.append(f"-J {spec.array.start}-{spec.array.stop}")
        # PBS cannot name logs by job id in -o/-e; the script redirects itself instead
        # and PBS's own copies go to the log directory too.
        lines.append(f"-o {directive_value(spec.log_directory + os.sep)}")
        lines.append(f"-e {directive_value(spec.log_directory + os.sep)}")
        if spec.role in (Role.WORKERS, Role.SCHEDULER) and not is_array:
            # Not rerunnable: a notebook cluster replaces a lost job itself (see slurm.py).
            # PBS refuses it for arrays ("cannot submit non-rerunable Array Job").
            lines.append("-r n")
        return apply_extras(
            lines, spec.extra_directives, spec.skip_directives, prefix="#PBS", names_of=_names
        )

    def script_setup(self, spec: JobSpec) -> list[str]:
        """Redirect output to ``<log dir>/<job id>[_<index>].out|.err`` like Slurm does."""
        stem = '"${PBS_JOBID%%.*}"'
        if spec.array and spec.array.size > 1:
            stem = '"${PBS_JOBID%%\\[*}_${PBS_ARRAY_INDEX}"'
        log_dir = shlex.quote(spec.log_directory)
        return [f"exec >{log_dir}/{stem}.out 2>{log_dir}/{stem}.err"]

    def submit_argv(self, script: str, spec: JobSpec) -> list[str]:
        return ["qsub", *spec.submit_args, script]

    def parse_submit(self, stdout: str) -> str:
        lines = [line.strip() for line in stdout.splitlines() if line.strip()]
        if not lines or not _JOB_ID_RE.match(lines[-1]):
            raise ValueError(f"qsub printed {stdout.strip()!r}, not a job id")
        return lines[-1]

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        # -x includes finished jobs, -t expands array subjobs. Not -F json: OpenPBS 23.06
        # prints only the first of several job ids in JSON (the text form has them all).
        return ["qstat", "-x", "-t", "-f", *job_ids]

    def parse_status(self, stdout: str) -> dict[str, JobRecord]:
        """``qstat -f``'s text form, or its ``-F json`` form (one job id per call)."""
        text = stdout.strip()
        if not text:
            return {}
        if text.startswith("{"):
            try:
                jobs = json.loads(text).get("Jobs") or {}
            except json.JSONDecodeError as error:
                raise ValueError(f"qstat printed invalid JSON: {error}") from None
        else:
            jobs = parse_full_text(text)
        return self._records(jobs)

    def _records(self, jobs: Mapping[str, Mapping[str, Any]]) -> dict[str, JobRecord]:
        records: dict[str, JobRecord] = {}
        for job_id, attrs in jobs.items():
            letter = str(attrs.get("job_state", "")).strip()
            comment = str(attrs.get("comment", ""))
            exit_status = attrs.get("Exit_status")
            exit_code = int(exit_status) if exit_status is not None else None
            if letter in _FINISHED:
                substate = attrs.get("substate")
                state = finished_state(
                    exit_code, comment, int(substate) if substate is not None else None
                )
            else:
                state = STATES.get(letter, JobState.UNKNOWN)
            if exit_code is not None and exit_code >= 256:
                exit_code -= 128  # PBS: 256 + signal; report the shell's 128 + signal
            used = attrs.get("resources_used") or {}
            records[job_id] = JobRecord(
                job_id=job_id,
                state=state,
                exit_code=exit_code,
                reason=comment,
                nodes=str(attrs.get("exec_host", "")),
                name=str(attrs.get("Job_Name", "")),
                submit_time=str(attrs.get("ctime", "")),
                raw_state=letter,
                elapsed=str(used.get("walltime", "")),
                time_left=_time_left(state, attrs),
            )
        return records

    def history_argv(self, job_ids: Sequence[str]) -> list[str] | None:
        return None  # status_argv already asks with -x (finished jobs included)

    def parse_history(self, stdout: str) -> dict[str, JobRecord]:
        return self.parse_status(stdout)

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        return ["qdel", "-W", "force", *job_ids]

    def signal_argv(self, job_ids: Sequence[str], signal: str) -> list[str]:
        return ["qsig", "-s", signal, *job_ids]

    def find_by_name_argv(self, name: str) -> list[str]:
        # Only our own jobs: another user's job of the same name must never be adopted.
        return ["qselect", "-u", current_user(), "-N", name]

    def parse_find_by_name(self, stdout: str) -> list[str]:
        return [line.strip() for line in stdout.splitlines() if line.strip()]

    def is_transient_error(self, stderr: str) -> bool:
        return is_transient(stderr)

    def is_unknown_job_error(self, stderr: str) -> bool:
        # "Job has finished": qdel of a job already in the history (exit 35).
        text = stderr.lower()
        return "unknown job id" in text or "job has finished" in text

    def limits_argv(self) -> list[str]:
        return ["qmgr", "-c", "list server max_array_size"]

    def parse_max_array_size(self, stdout: str) -> int | None:
        match = re.search(r"max_array_size\s*=\s*(\d+)", stdout)
        return int(match.group(1)) if match else None

    def controller_argv(self) -> list[str]:
        return ["qmgr", "-c", "list server"]

    def parse_controller(self, stdout: str) -> str:
        """``Server pbs-head`` (qmgr's first line) -> ``pbs-head``."""
        match = re.search(r"^Server\s+(\S+)", stdout, re.MULTILINE)
        return match.group(1) if match else ""

    def base_job_id(self, job_id: str) -> str:
        """A subjob ``7[2].srv`` -> its array ``7[].srv``; other ids are their own base."""
        if "[" in job_id:
            head, _, rest = job_id.partition("[")
            return f"{head}[]{rest.partition(']')[2]}"
        return job_id

    def array_task_ids(self, job_id: str, array: ArraySpec) -> list[str]:
        """``7[].srv`` -> ``7[0].srv``, ``7[1].srv``, ..."""
        head, _, tail = job_id.partition("[]")
        return [f"{head}[{i}]{tail}" for i in array.task_ids]

    def find_record(self, job_id: str, records: Mapping[str, JobRecord]) -> JobRecord | None:
        return find_record(job_id, records)

    def id_order(self, job_id: str) -> tuple[int, str]:
        return job_id_order(job_id)


SYSTEM = PBS()


def _gpus_per_chunk(spec: JobSpec) -> int:
    """``ngpus`` of each ``select`` chunk (one chunk per node)."""
    if spec.gpu_type:
        raise ConfigError(
            "gpu_type", spec.gpu_type, "PBS has no standard GPU type; use extra_directives"
        )
    if spec.gpu_bind:
        raise ConfigError("gpu_bind", spec.gpu_bind, "PBS has no GPU binding option")
    if spec.gpus_per_job and spec.gpus_per_job % spec.nodes:
        raise ConfigError(
            "gpus_per_job",
            spec.gpus_per_job,
            f"PBS asks for GPUs per node: give a multiple of nodes ({spec.nodes}) or set gpus",
        )
    return spec.gpus or spec.gpus_per_job // spec.nodes
