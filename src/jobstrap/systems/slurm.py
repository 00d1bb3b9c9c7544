"""Slurm: directives, command lines and output parsers (pure; no processes run here).

Output formats follow Slurm 22.05 to 24.x: ``sbatch --parsable`` prints ``123`` or
``123;cluster``; ``squeue --array`` prints one line per array task (``123_4``) but
pending tasks may still be folded (``123_[5-9%2]``); heterogeneous components are
``123+0``; ``sacct --parsable2`` states may carry a suffix (``CANCELLED by 0``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from jobstrap.config.units import format_memory_slurm, format_walltime_slurm
from jobstrap.jobs.model import JobSpec, Role
from jobstrap.states import JobState
from jobstrap.systems.base import (
    ClusterNodes,
    JobRecord,
    UnderscoreArrayIds,
    apply_extras,
    current_user,
    directive_value,
    is_transient,
)
from jobstrap.systems.partitions import Partition, parse_sinfo_partitions, parse_slurm_partitions

#: Every state squeue or sacct can report, mapped to our vocabulary.
STATES: dict[str, JobState] = {
    "PENDING": JobState.PENDING,
    "CONFIGURING": JobState.PENDING,
    "REQUEUED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "RESV_DEL_HOLD": JobState.PENDING,
    "SUSPENDED": JobState.PENDING,
    "STOPPED": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED,
    "TIMEOUT": JobState.TIMEOUT,
    "DEADLINE": JobState.TIMEOUT,
    "PREEMPTED": JobState.PREEMPTED,
    "CANCELLED": JobState.CANCELLED,
    "REVOKED": JobState.CANCELLED,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
    "NODE_FAIL": JobState.NODE_FAIL,
    "BOOT_FAIL": JobState.NODE_FAIL,
}

#: squeue's short codes (``%t``), for completeness when a site overrides SQUEUE_FORMAT.
SHORT_STATES: dict[str, str] = {
    "PD": "PENDING", "CF": "CONFIGURING", "R": "RUNNING", "CG": "COMPLETING",
    "CD": "COMPLETED", "F": "FAILED", "TO": "TIMEOUT", "PR": "PREEMPTED",
    "CA": "CANCELLED", "OOM": "OUT_OF_MEMORY", "NF": "NODE_FAIL", "BF": "BOOT_FAIL",
    "S": "SUSPENDED", "ST": "STOPPED", "RQ": "REQUEUED", "RH": "REQUEUE_HOLD",
    "RS": "RESIZING", "SE": "SPECIAL_EXIT", "SI": "SIGNALING", "SO": "STAGE_OUT",
    "DL": "DEADLINE", "RV": "REVOKED", "RF": "REQUEUE_FED", "RD": "RESV_DEL_HOLD",
}  # fmt: skip

_SEP = "|"
_SQUEUE_FIELDS = "%i|%T|%r|%N|%j|%V|%M|%L"
_SACCT_FIELDS = "JobID,State,ExitCode,Reason,NodeList,JobName,Submit,Elapsed"
_ARRAY_RE = re.compile(r"^(?P<base>\d+)_\[(?P<ranges>[^\]]+)\]$")
_JOB_ID_RE = re.compile(r"^\d+(?:_\d+|\+\d+)?$")
#: Separate jobs squeue is asked about by id; above, by user (see status_argv).
_MAX_LISTED_JOBS = 2000


def map_state(raw: str) -> JobState:
    """Map a squeue/sacct state word (``CANCELLED by 0``, ``PD``) to :class:`JobState`."""
    word = raw.strip().split(" ")[0].rstrip("+").upper()
    word = SHORT_STATES.get(word, word)
    return STATES.get(word, JobState.UNKNOWN)


def expand_job_id(text: str) -> list[str]:
    """Expand folded array ids: ``123_[1,3-5%2]`` -> ``123_1 123_3 123_4 123_5``."""
    match = _ARRAY_RE.match(text.strip())
    if not match:
        return [text.strip()]

    base = match["base"]
    ranges = match["ranges"].split("%")[0]
    ids: list[str] = []
    for part in ranges.split(","):
        step = 1
        if ":" in part:
            part, step_text = part.split(":", 1)
            step = int(step_text)
        if "-" in part:
            low, high = (int(x) for x in part.split("-", 1))
            ids.extend(f"{base}_{i}" for i in range(low, high + 1, step))
        elif part:
            ids.append(f"{base}_{int(part)}")
    return ids


def parse_exit_code(text: str) -> int | None:
    """sacct's ``exit:signal`` as a shell-style code (signal n -> 128 + n)."""
    if not text or ":" not in text:
        return None
    code_text, signal_text = text.split(":", 1)
    try:
        code, signal = int(code_text), int(signal_text)
    except ValueError:
        return None
    return 128 + signal if signal else code


def _names(directive: str) -> set[str]:
    """Names of a Slurm directive: ``--mem=4G`` -> {``--mem``}; ``-N 2`` -> {``-N``}."""
    head = directive.split("=", 1)[0].split()[0] if directive.strip() else ""
    return {head}


class Slurm(ClusterNodes, UnderscoreArrayIds):
    """Pure builders and parsers for Slurm."""

    name = "slurm"
    job_id_variable = "SLURM_JOB_ID"
    array_task_variable = "SLURM_ARRAY_TASK_ID"
    required_commands = ("sbatch", "squeue", "scancel", "scontrol")
    optional_commands = ("sacct", "sinfo")
    fails_without_log = True
    discard_log_directives = ("--output=/dev/null", "--error=/dev/null")

    def log_stems(self, job_id: str) -> list[str]:
        """The id itself: ``123``, array task ``123_4`` (``%j``, ``%A_%a``)."""
        return [job_id]

    def partition_argv(self, queue: str | None) -> list[list[str]]:
        """``scontrol show partition``, else ``sinfo`` (when scontrol is missing)."""
        return [
            ["scontrol", "show", "partition", "--oneliner"],
            ["sinfo", "-h", "-o", "%P %l %a %D"],
        ]

    def parse_partitions(self, argv: Sequence[str], text: str) -> dict[str, Partition]:
        """``scontrol``'s or ``sinfo``'s partitions, by the command that printed them."""
        if argv[0] == "sinfo":
            return parse_sinfo_partitions(text)
        return parse_slurm_partitions(text)

    default_launcher = "srun"
    # srun (without --mpi) starts one bootstrap per node and tracks it as a job step,
    # so Slurm's signals and cleanup reach the workers.
    node_launcher: str | None = "srun"
    warns_before_walltime = True
    signal_early_by = 60

    def directives(self, spec: JobSpec) -> list[str]:
        log_dir = spec.log_directory
        stem = "%A_%a" if spec.array else "%j"
        lines = [
            f"--job-name={spec.name}",
            f"--output={directive_value(os.path.join(log_dir, stem + '.out'))}",
            f"--error={directive_value(os.path.join(log_dir, stem + '.err'))}",
        ]
        if spec.queue:
            lines.append(f"--partition={spec.queue}")
        if spec.account:
            lines.append(f"--account={spec.account}")
        if spec.qos:
            lines.append(f"--qos={spec.qos}")
        lines.append(f"--time={format_walltime_slurm(spec.walltime)}")
        lines.append(f"--nodes={spec.nodes}")
        lines.append(f"--ntasks-per-node={spec.tasks_per_node}")
        lines.append(f"--cpus-per-task={spec.cpus_per_task}")
        lines += _memory_and_gpu_lines(spec)
        if spec.array:
            limit = f"%{spec.array.limit}" if spec.array.limit else ""
            lines.append(f"--array={spec.array.start}-{spec.array.stop}{limit}")
        if spec.signal:
            signal, seconds = spec.signal
            # B: signal only the batch shell; the script forwards it to its job steps.
            lines.append(f"--signal=B:{signal}@{seconds}")
        lines.append(f"--comment=jobstrap:{spec.tag}")
        if spec.role in (Role.WORKERS, Role.SCHEDULER):
            # A notebook cluster replaces a lost job itself, at once and in plain sight
            # (NODE_FAIL). Requeued by Slurm, the same job would look RUNNING or
            # PENDING with no workers and come back minutes later under its old name.
            lines.append("--no-requeue")
        return apply_extras(
            lines, spec.extra_directives, spec.skip_directives, prefix="#SBATCH", names_of=_names
        )

    def script_setup(self, spec: JobSpec) -> list[str]:
        """Extra shell lines at the top of the body (none needed: Slurm names the logs)."""
        return []

    def submit_argv(self, script: str, spec: JobSpec) -> list[str]:
        return ["sbatch", "--parsable", *spec.submit_args, script]

    def parse_submit(self, stdout: str) -> str:
        """``123`` or ``123;cluster`` (federations) -> ``123``."""
        lines = [line.strip() for line in stdout.splitlines() if line.strip()]
        if not lines:
            raise ValueError("sbatch printed no job id")
        job_id = lines[-1].split(";", 1)[0]
        if not _JOB_ID_RE.match(job_id):
            raise ValueError(f"sbatch printed {lines[-1]!r}, not a job id")
        return job_id

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        # One call for every tracked job: --array lists tasks one per line; base ids are
        # enough (squeue matches an array's tasks by its base id). Past
        # _MAX_LISTED_JOBS separate jobs (plain jobs, or many small arrays) the list
        # would near Linux's 128 KiB limit on one argument (20,000 seven-digit ids are
        # 160 kB: exec fails with E2BIG), so the user's jobs are asked for instead;
        # the caller picks ours out of the answer by id either way.
        bases = sorted({_base_id(j) for j in job_ids}, key=_id_sort_key)
        if len(bases) > _MAX_LISTED_JOBS:
            select = f"--user={current_user()}"
        else:
            select = f"--jobs={','.join(bases)}"
        return [
            "squeue", "--noheader", "--array", f"--format={_SQUEUE_FIELDS}",
            "--states=all", select,
        ]  # fmt: skip

    def parse_status(self, stdout: str) -> dict[str, JobRecord]:
        records: dict[str, JobRecord] = {}
        # The tasks of an array repeat every field but the id (state, reason, name,
        # submit time...): one string object per distinct value, not one per task,
        # keeps 10,000 records a few MiB.
        share: dict[str, str] = {}
        for line in stdout.splitlines():
            parts = [share.setdefault(p, p) for p in line.strip().split(_SEP)]
            if len(parts) < 2 or not parts[0]:
                continue
            job_id, raw_state = parts[0], parts[1]
            reason = parts[2] if len(parts) > 2 else ""
            nodes = parts[3] if len(parts) > 3 else ""
            name = parts[4] if len(parts) > 4 else ""
            submit = parts[5] if len(parts) > 5 else ""
            elapsed = parts[6] if len(parts) > 6 else ""
            state = map_state(raw_state)
            # %L: the time left (for a pending job its whole limit, so running only).
            left = parts[7] if len(parts) > 7 and state is JobState.RUNNING else ""
            if left in ("UNLIMITED", "NOT_SET", "INVALID"):
                left = ""
            for one in expand_job_id(job_id):
                records[one] = JobRecord(
                    job_id=one,
                    state=state,
                    reason="" if reason in ("None", "(null)") else reason,
                    nodes="" if nodes in ("(null)",) else nodes,
                    name=name,
                    submit_time=submit,
                    raw_state=raw_state,
                    elapsed=elapsed,
                    time_left=left,
                )
        return records

    def history_argv(self, job_ids: Sequence[str]) -> list[str] | None:
        bases = sorted({_base_id(j) for j in job_ids}, key=_id_sort_key)
        return [
            "sacct", "--noheader", "--parsable2", "--allocations", "--duplicates",
            f"--format={_SACCT_FIELDS}", f"--jobs={','.join(bases)}",
        ]  # fmt: skip

    def parse_history(self, stdout: str) -> dict[str, JobRecord]:
        records: dict[str, JobRecord] = {}
        share: dict[str, str] = {}  # as in parse_status
        for line in stdout.splitlines():
            parts = [share.setdefault(p, p) for p in line.strip().split(_SEP)]
            if len(parts) < 3 or not parts[0]:
                continue
            job_id, raw_state, exit_text = parts[0], parts[1], parts[2]
            if "." in job_id:  # a step (123.batch), not an allocation
                continue
            reason = parts[3] if len(parts) > 3 else ""
            nodes = parts[4] if len(parts) > 4 else ""
            for one in expand_job_id(job_id):
                # --duplicates lists a requeued or recycled id once per run: keep the last.
                records[one] = JobRecord(
                    job_id=one,
                    state=map_state(raw_state),
                    exit_code=parse_exit_code(exit_text),
                    reason="" if reason in ("None", "(null)") else reason,
                    # sacct says "None assigned" for jobs that never got a node.
                    nodes="" if nodes in ("None assigned", "(null)") else nodes,
                    name=parts[5] if len(parts) > 5 else "",
                    submit_time=parts[6] if len(parts) > 6 else "",
                    raw_state=raw_state,
                    elapsed=parts[7] if len(parts) > 7 else "",
                )
        return records

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        """``scancel`` with each array's tasks folded into one ``123_[0-1000]``.

        scancel sends one request to the controller per argument: 10,000 task ids
        would be 10,000 requests (each counted by a rate-limiting controller) in an
        argv of some 100 kB; folded, one request per array.
        """
        return ["scancel", *fold_job_ids(job_ids)]

    def signal_argv(self, job_ids: Sequence[str], signal: str) -> list[str]:
        """argv sending ``signal`` to the jobs' batch shells (which forward it)."""
        return ["scancel", "--batch", f"--signal={signal}", *fold_job_ids(job_ids)]

    def find_by_name_argv(self, name: str) -> list[str]:
        # Only our own jobs: another user's job of the same name must never be adopted.
        return [
            "squeue", "--noheader", "--array", "--states=all", "--format=%i",
            f"--user={current_user()}", f"--name={name}",
        ]  # fmt: skip

    def parse_find_by_name(self, stdout: str) -> list[str]:
        ids: list[str] = []
        for line in stdout.split():
            ids.extend(expand_job_id(line))
        return ids

    def is_transient_error(self, stderr: str) -> bool:
        return is_transient(stderr)

    def is_unknown_job_error(self, stderr: str) -> bool:
        """squeue's answer when every id asked about has left the controller."""
        return "invalid job id specified" in stderr.lower()

    def limits_argv(self) -> list[str]:
        return ["scontrol", "show", "config"]

    def parse_max_array_size(self, stdout: str) -> int | None:
        """``MaxArraySize = 1001`` -> 1001 (task ids must be below it)."""
        match = re.search(r"^\s*MaxArraySize\s*=\s*(\d+)", stdout, re.MULTILINE)
        return int(match.group(1)) if match else None

    def controller_argv(self) -> list[str]:
        return ["scontrol", "show", "config"]

    def parse_controller(self, stdout: str) -> str:
        """``ClusterName = jobstrap`` -> ``jobstrap``."""
        match = re.search(r"^\s*ClusterName\s*=\s*(\S+)", stdout, re.MULTILINE)
        return match.group(1) if match else ""


def fold_job_ids(job_ids: Sequence[str]) -> list[str]:
    """Array tasks folded per array: ``123_0 123_1 123_2 123_5 124`` -> ``123_[0-2,5] 124``.

    The inverse of :func:`expand_job_id`; a lone task stays ``123_5``, anything that
    is not a plain array task (a job, ``123+1``, an expression) is kept as it is.
    Order: by first appearance of each job.
    """
    tasks: dict[str, list[int]] = {}
    order: list[str] = []
    for job_id in dict.fromkeys(job_ids):
        base, sep, task = job_id.partition("_")
        if sep and base.isdigit() and task.isdigit():
            if base not in tasks:
                tasks[base] = []
                order.append(base)
            tasks[base].append(int(task))
        else:
            order.append(job_id)
    folded: list[str] = []
    for item in order:
        numbers = tasks.get(item)
        if numbers is None:
            folded.append(item)
        elif len(numbers) == 1:
            folded.append(f"{item}_{numbers[0]}")
        else:
            folded.append(f"{item}_[{_ranges(sorted(numbers))}]")
    return folded


def _ranges(numbers: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2,5`` (sorted, distinct input)."""
    parts: list[str] = []
    start = prev = numbers[0]
    for n in numbers[1:]:
        if n != prev + 1:
            parts.append(f"{start}-{prev}" if prev > start else str(start))
            start = n
        prev = n
    parts.append(f"{start}-{prev}" if prev > start else str(start))
    return ",".join(parts)


def _base_id(job_id: str) -> str:
    return re.split(r"[_+.]", job_id, maxsplit=1)[0]


def _id_sort_key(job_id: str) -> tuple[int, str]:
    return (int(job_id), "") if job_id.isdigit() else (0, job_id)


SYSTEM = Slurm()


def _memory_and_gpu_lines(spec: JobSpec) -> list[str]:
    """The memory request (exactly one of ``--mem``, ``--mem-per-cpu``, ``--mem-per-gpu``:
    Slurm rejects two, and some sites' ``cli_filter`` rejects ``--mem``) and the GPUs."""
    lines: list[str] = []
    per_gpu = spec.memory_per_gpu if spec.memory_per == "gpu" else None
    per_cpu = spec.memory_per_cpu if spec.memory_per == "cpu" else None
    if per_gpu is not None:
        lines.append(f"--mem-per-gpu={format_memory_slurm(per_gpu)}")
    elif per_cpu is not None:
        lines.append(f"--mem-per-cpu={format_memory_slurm(per_cpu)}")
    elif spec.memory is not None:
        lines.append(f"--mem={format_memory_slurm(spec.memory)}")
    kind = f"{spec.gpu_type}:" if spec.gpu_type else ""
    if spec.gpus:
        # --gres rather than --gpus-per-node: every Slurm with GPUs knows it.
        lines.append(f"--gres=gpu:{kind}{spec.gpus}")
    elif spec.gpus_per_job:
        lines.append(f"--gpus={kind}{spec.gpus_per_job}")
    if spec.gpu_bind and (spec.gpus or spec.gpus_per_job):
        lines.append(f"--gpu-bind={spec.gpu_bind}")
    return lines
