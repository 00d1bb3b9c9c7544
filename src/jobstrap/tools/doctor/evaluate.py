"""The doctor's second phase: what the probe's facts, or its failure, say about the site.

Pure: facts in, checks out. :func:`evaluate_probe` reads a probe's report;
:func:`diagnose_job_failure` explains a probe job that ended without one (through
:func:`jobstrap.jobs.diagnose.diagnose`, the failure explainer the cluster uses too);
:func:`diagnose_pending` one that never started.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from jobstrap.config.units import format_memory
from jobstrap.jobs.diagnose import FIX_PYTHON, FailureKind, diagnose_record
from jobstrap.states import JobState
from jobstrap.tools.doctor.report import FIX_RUN_ROOT, Check, describe_bytes, fail, ok, warn

if TYPE_CHECKING:
    from jobstrap.systems import JobRecord

__all__ = [
    "diagnose_job_failure",
    "diagnose_pending",
    "evaluate_probe",
]


def _version_key(version: str | None) -> tuple[str, ...]:
    return tuple((version or "").split("."))


def evaluate_probe(
    report: Mapping[str, Any],
    *,
    client_versions: Mapping[str, str | None],
    client_python: str,
    client_token: str,
    node_token_here: str | None,
    callback_error: str | None,
    scheduler_address: str,
    cores: int,
    memory: int | None,
    interfaces_requested: Sequence[str],
    via_network: bool,
) -> list[Check]:
    """Turn the probe's facts into checks (pure; every rule is a unit test).

    Parameters
    ----------
    report
        The probe's report (over TCP, else ``probe.json``).
    client_versions, client_python
        This side's package versions and Python version.
    client_token
        What the doctor wrote into ``doctor-client.token``.
    node_token_here
        What this side reads from ``doctor-node.token`` (None: not there).
    callback_error
        None when the doctor reached the probe's listener, else why not (also None
        when there was nothing to call).
    scheduler_address
        The doctor's listening address (``host:port``).
    cores, memory
        What the profile asks for per node.
    interfaces_requested
        The profile's ``interface``.
    via_network
        Whether the report arrived over TCP.
    """
    node = str(report.get("host") or "the node")
    checks: list[Check] = []

    # Interfaces and the worker's address.
    usable = [
        f"{i['name']} {i['ipv4'][0]}"
        for i in report.get("interfaces", [])
        if i.get("ipv4") and i.get("is_up") and i.get("kind") != "loopback"
    ]
    names = ", ".join(usable)
    chosen = report.get("chosen") or {}
    requested = ",".join(interfaces_requested)
    if chosen.get("ok"):
        checks.append(
            ok("worker address", f"{chosen['address']} on {chosen['interface']} ({requested})")
        )
    else:
        checks.append(
            fail(
                "worker address",
                str(chosen.get("error") or f"no usable interface for {requested}"),
                f"set `interface:` to interfaces {node} has (there: {names or 'none'}) in "
                "order of preference, or `auto`",
            )
        )

    # Reachability, both ways.
    connect = report.get("connect") or {}
    if via_network or connect.get("ok"):
        source = connect.get("source")
        frm = f" from {source}" if source else ""
        checks.append(ok("node -> scheduler", f"{node} reached {scheduler_address}{frm}"))
    else:
        error = connect.get("error") or "no attempt recorded"
        checks.append(
            fail(
                "node -> scheduler",
                f"{node} cannot reach {scheduler_address}: {error}",
                "workers could not reach a scheduler here: set scheduler_interface to an "
                "interface of this login node that the compute nodes can reach, open the "
                "firewall for the ephemeral port range, or run the scheduler in a job "
                "(scheduler: job)",
            )
        )
    listen = report.get("listen") or {}
    if via_network and chosen.get("ok"):
        where = f"{listen.get('address')}:{listen.get('port')}" if listen.get("port") else ""
        if listen.get("error"):
            checks.append(
                fail(
                    "scheduler -> node",
                    str(listen["error"]),
                    "the node cannot listen on the chosen address; set `interface:`",
                )
            )
        elif callback_error is None:
            checks.append(ok("scheduler -> node", f"reached {node} at {where}"))
        else:
            checks.append(
                fail(
                    "scheduler -> node",
                    f"cannot reach {node} at {where}: {callback_error}",
                    "the scheduler could not reach workers at that address: choose an "
                    "`interface:` this login node can route to, or run the scheduler in a "
                    "job (scheduler: job)",
                )
            )

    # Versions.
    checks.append(_check_versions(report, node, client_versions, client_python))

    # Shared file system, both ways.
    checks.append(_check_shared_fs(report, node, client_token, node_token_here))

    # Resources the job really got.
    checks.extend(_check_resources(report, node, cores, memory))
    return checks


def _check_versions(
    report: Mapping[str, Any],
    node: str,
    client_versions: Mapping[str, str | None],
    client_python: str,
) -> Check:
    python = (report.get("python") or {}).get("version", "")
    packages = report.get("packages") or {}
    problems: list[str] = []
    warnings: list[str] = []
    if _version_key(python)[:2] != _version_key(client_python)[:2]:
        problems.append(f"python {python} (here {client_python})")
    elif python != client_python:
        warnings.append(f"python {python} (here {client_python})")
    for name in ("dask", "distributed"):
        if packages.get(name) != client_versions.get(name):
            problems.append(f"{name} {packages.get(name)} (here {client_versions.get(name)})")
    for name in ("jobstrap", "cloudpickle", "msgpack", "toolz", "tornado"):
        theirs, ours = packages.get(name), client_versions.get(name)
        if ours and theirs != ours:
            warnings.append(f"{name} {theirs} (here {ours})")
    executable = (report.get("python") or {}).get("executable", "")
    summary = (
        f"{executable} {python}, dask {packages.get('dask')}, "
        f"distributed {packages.get('distributed')}"
    )
    fix = (
        "install the same versions on both sides (pip install dask==X distributed==X), "
        "ideally one environment on the shared file system used by both"
    )
    if problems:
        return fail("versions", f"{node} differs: {'; '.join(problems)}", fix)
    if warnings:
        return warn("versions", f"{node} differs: {'; '.join(warnings)}", fix)
    return ok("versions", f"{node} matches: {summary}")


def _check_shared_fs(
    report: Mapping[str, Any], node: str, client_token: str, node_token_here: str | None
) -> Check:
    facts = report.get("shared_fs") or {}
    run_dir = facts.get("run_dir", "the run directory")
    if not facts.get("run_dir_exists"):
        return fail(
            "shared file system",
            f"the run directory {run_dir} does not exist on {node}",
            FIX_RUN_ROOT,
        )
    if facts.get("client_token") != client_token:
        seen = facts.get("client_error") or "a different file"
        return fail(
            "shared file system",
            f"{node} cannot read what this host wrote in {run_dir} ({seen})",
            FIX_RUN_ROOT,
        )
    if facts.get("node_error"):
        return fail(
            "shared file system",
            f"{node} cannot write into {run_dir}: {facts['node_error']}",
            "make run_root writable by you on the compute nodes; " + FIX_RUN_ROOT,
        )
    if node_token_here is None or node_token_here != facts.get("node_token"):
        return fail(
            "shared file system",
            f"what {node} wrote in {run_dir} is not visible here",
            FIX_RUN_ROOT,
        )
    return ok("shared file system", f"{run_dir} is shared with {node} (read and written both ways)")


def _check_resources(
    report: Mapping[str, Any], node: str, cores: int, memory: int | None
) -> list[Check]:
    cgroup = report.get("cgroup") or {}
    cpus = report.get("cpus") or {}
    checks: list[Check] = []
    affinity = int(cpus.get("affinity") or 0)
    quota = cgroup.get("cpu_quota")
    usable = min([affinity] + ([quota] if quota else []))
    shown = f"{usable:g}" if isinstance(usable, float) else str(usable)
    if usable and usable < cores:
        checks.append(
            warn(
                "cpu",
                f"the job may use {shown} CPUs on {node} but asked for {cores}",
                f"workers would run {cores} threads on {shown} CPUs: lower `cores:`, or check "
                "the site's rules for --cpus-per-task",
            )
        )
    else:
        checks.append(ok("cpu", f"{shown} CPUs usable on {node} (asked for {cores})"))
    limit = cgroup.get("memory_limit")
    if memory is None:
        checks.append(ok("memory", f"no memory requested; limit {describe_bytes(limit)}"))
    elif limit is None:
        checks.append(
            warn(
                "memory",
                f"no memory limit enforced on {node} (asked for {format_memory(memory)})",
                "nothing stops a worker that outgrows its memory_limit except Dask itself "
                "and the kernel's OOM killer; fine if the site does not confine jobs",
            )
        )
    elif limit < memory * 0.95:
        checks.append(
            fail(
                "memory",
                f"the job is limited to {format_memory(limit)} on {node} but asked for "
                f"{format_memory(memory)}",
                "workers would be killed before reaching their memory_limit: lower "
                "`memory:` to what the site grants, or check its memory rules",
            )
        )
    else:
        checks.append(
            ok(
                "memory",
                f"limit {format_memory(limit)} on {node} (asked for {format_memory(memory)})",
            )
        )
    return checks


#: The probe's words where a worker job's would not fit (nothing else to try again).
_PROBE_FIXES = {FailureKind.NODE_FAIL: "the node failed; run the doctor again"}


def diagnose_job_failure(
    record: JobRecord | None, stderr_tail: str, python: str, *, log_found: bool
) -> Check:
    """Why did the probe job end without reporting? Read its state and stderr.

    The failure explainer (:func:`~jobstrap.jobs.diagnose.diagnose`) says what kind of
    failure it was; the probe's only command is python, so a command not found is
    python not found.
    """
    diagnosis = diagnose_record(record, stderr_tail, python)
    kind = diagnosis.kind
    node = (record.nodes if record else "") or "the node"
    state = record.state if record else JobState.UNKNOWN
    code = record.exit_code if record else None
    where = f"job {record.job_id}" if record else "the probe job"
    reason = f" ({record.reason})" if record and record.reason not in ("", "None") else ""
    if kind in (FailureKind.PYTHON_NOT_FOUND, FailureKind.COMMAND_NOT_FOUND):
        return fail("node python", f"python not found on {node}: {python}", FIX_PYTHON)
    if kind is FailureKind.PYTHON_NOT_EXECUTABLE:
        return fail("node python", f"{python} is not executable on {node}", diagnosis.fix)
    if kind is FailureKind.PACKAGE_MISSING and diagnosis.module.split(".")[0] == "jobstrap":
        return fail(
            "node python",
            f"jobstrap is not installed for {python} on {node}",
            f"install jobstrap into that environment ({python} -m pip install jobstrap), or "
            "point `python:` at an environment on the shared file system that has it",
        )
    if kind in (FailureKind.PACKAGE_MISSING, FailureKind.MODULE_MISSING):
        return fail("node python", f"{python} on {node} lacks {diagnosis.module}", diagnosis.fix)
    if not log_found:
        return fail(
            "probe job",
            f"{where} on {node} ended {state}{reason} without writing its log here: the "
            "run directory is probably not on a file system shared with the nodes",
            FIX_RUN_ROOT,
        )
    tail = stderr_tail.strip().splitlines()[-1] if stderr_tail.strip() else "no stderr"
    fix = _PROBE_FIXES.get(kind, diagnosis.fix)
    return fail("probe job", f"{where} on {node} ended {state} (exit {code}): {tail}", fix)


def diagnose_pending(record: JobRecord | None, waited: float) -> Check:
    """The probe job never started within the deadline: say why, in the queue's words.

    A FAIL, because the nodes were not checked; the fix says whether a setting or
    just a busy queue is to blame.
    """
    reason = record.reason if record else ""
    where = f"job {record.job_id}" if record else "the probe job"
    detail = f"{where} still {record.state if record else 'PENDING'} after {waited:.0f} s"
    if reason:
        detail += f" (reason: {reason})"
    lowered = reason.lower()
    if "time" in lowered and "limit" in lowered:
        fix = "the walltime exceeds a partition or QOS limit: lower `walltime:`"
    elif lowered.startswith(("assoc", "qos")) or "account" in lowered:
        fix = "an account or QOS limit holds it: check `account:` and `qos:` with the site"
    elif "reqnodenotavail" in lowered or "partitiondown" in lowered or "nodedown" in lowered:
        fix = "the partition's nodes are unavailable: use another `queue:`"
    else:
        fix = (
            "the queue is busy (nothing wrong with the profile as far as seen): run the "
            "doctor again with a longer --timeout, or a queue meant for short tests"
        )
    # Not a verdict on the site, but nothing on the nodes was checked: say so loudly.
    return fail("probe job", detail, fix)
