"""The doctor: rules on recorded facts, parsers on real outputs, the probe as a process,
and whole runs through the local batch system."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from jobstrap.bootstrap.probe import CLIENT_TOKEN_FILE, NODE_TOKEN_FILE, PROBE_FILE, cgroup_limits
from jobstrap.cli import cli
from jobstrap.config.profile import load_profile
from jobstrap.jobs.spec import Role
from jobstrap.states import JobState
from jobstrap.systems import JobRecord, get_system
from jobstrap.systems.partitions import (
    Partition,
    parse_pbs_queue,
    parse_sinfo_partitions,
    parse_slurm_partitions,
)
from jobstrap.tools.doctor import (
    Check,
    DoctorReport,
    ProbeListener,
    Status,
    batch_commands,
    call_back,
    check_batch_commands,
    check_partition,
    check_profile_python,
    diagnose_job_failure,
    diagnose_pending,
    evaluate_probe,
    format_report,
    partition_argv,
    probe_job,
    run_doctor,
)
from jobstrap.tools.doctor.run import _read_stderr

MiB = 2**20

# What `scontrol show partition --oneliner` prints on the test cluster (Slurm 22.05).
SCONTROL = (
    "PartitionName=debug AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL "
    "Default=YES QoS=N/A DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 "
    "Hidden=NO MaxNodes=UNLIMITED MaxTime=02:00:00 MinNodes=0 LLN=NO "
    "MaxCPUsPerNode=UNLIMITED Nodes=node[1-3] PriorityJobFactor=1 PriorityTier=1 RootOnly=NO "
    "ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP TotalCPUs=24 "
    "TotalNodes=3 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED "
    "MaxMemPerNode=UNLIMITED TRES=cpu=24,mem=24000M,node=3,billing=24\n"
    "PartitionName=short AllowGroups=ALL Default=NO MaxTime=00:05:00 State=UP TotalNodes=3\n"
    "PartitionName=long Default=NO MaxTime=UNLIMITED State=DOWN TotalNodes=3\n"
)

QSTAT_QF = """Queue: workq
    queue_type = Execution
    total_jobs = 0
    resources_max.walltime = 24:00:00
    resources_default.walltime = 01:00:00
    enabled = True
    started = True
"""


# ---------------------------------------------------------------- partitions


def test_scontrol_partitions_are_parsed_with_their_limits() -> None:
    partitions = parse_slurm_partitions(SCONTROL)

    assert partitions["debug"] == Partition("debug", 7200, True, "UP", 3)
    assert partitions["short"].max_time == 300
    assert partitions["long"].max_time is None


def test_sinfo_partitions_are_parsed_as_the_fallback() -> None:
    partitions = parse_sinfo_partitions("debug* 2:00:00 up 3\nshort 5:00 up 3\nbig infinite up 9\n")

    assert partitions["debug"].default
    assert partitions["short"].max_time == 300
    assert partitions["big"].max_time is None


def test_a_pbs_queue_is_parsed_with_its_walltime_limit() -> None:
    queues = parse_pbs_queue(QSTAT_QF)

    assert queues["workq"] == Partition("workq", 24 * 3600, False, "UP", None)


def test_a_walltime_within_the_partition_limit_passes() -> None:
    check = check_partition("debug", 3600, 1, parse_slurm_partitions(SCONTROL))

    assert check.status is Status.OK


def test_a_walltime_over_the_partition_limit_fails_with_the_limit_in_the_fix() -> None:
    check = check_partition("short", 3600, 1, parse_slurm_partitions(SCONTROL))

    assert check.status is Status.FAIL
    assert "0-00:05:00" in check.fix


def test_an_unknown_partition_fails_listing_the_known_ones() -> None:
    check = check_partition("gpu", 60, 1, parse_slurm_partitions(SCONTROL))

    assert check.status is Status.FAIL
    assert "debug, long, short" in check.detail


def test_a_partition_that_is_down_fails() -> None:
    check = check_partition("long", 60, 1, parse_slurm_partitions(SCONTROL))

    assert check.status is Status.FAIL
    assert "DOWN" in check.detail


def test_more_nodes_than_the_partition_has_fails() -> None:
    check = check_partition("debug", 60, 4, parse_slurm_partitions(SCONTROL))

    assert check.status is Status.FAIL


def test_no_queue_is_checked_against_the_default_partition() -> None:
    check = check_partition(None, 3 * 3600, 1, parse_slurm_partitions(SCONTROL))

    assert check.status is Status.FAIL
    assert "debug" in check.detail


# ------------------------------------------------------------- login node checks


def executable(path: Path) -> None:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)


def test_missing_batch_commands_fail_naming_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    check = check_batch_commands("slurm")

    assert check.status is Status.FAIL
    assert "sbatch" in check.detail


def test_batch_commands_on_path_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("sbatch", "squeue", "scancel", "scontrol", "sacct", "sinfo"):
        executable(tmp_path / name)
    monkeypatch.setenv("PATH", str(tmp_path))

    assert check_batch_commands("slurm").status is Status.OK


def test_a_missing_sacct_is_only_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("sbatch", "squeue", "scancel", "scontrol", "sinfo"):
        executable(tmp_path / name)
    monkeypatch.setenv("PATH", str(tmp_path))

    check = check_batch_commands("slurm")

    assert check.status is Status.WARN
    assert "sacct" in check.detail


def test_a_profile_python_missing_here_is_a_warning_not_a_failure() -> None:
    assert check_profile_python("/nonexistent/bin/python3").status is Status.WARN
    assert check_profile_python(sys.executable).status is Status.OK


# ------------------------------------------------------------ probe evaluation

CLIENT_VERSIONS = {"dask": "2026.8.0", "distributed": "2026.8.0", "jobstrap": "0.1.0",
                   "cloudpickle": "3.1.0", "msgpack": "1.1.0", "toolz": "1.0.0",
                   "tornado": "6.4"}  # fmt: skip


def good_report(**changes: Any) -> dict[str, Any]:
    report: dict[str, Any] = {
        "host": "node1",
        "python": {"executable": "/sw/py/bin/python3", "version": "3.11.7"},
        "packages": dict(CLIENT_VERSIONS),
        "interfaces": [
            {"name": "lo", "ipv4": ["127.0.0.1"], "is_up": True, "kind": "loopback"},
            {"name": "eth0", "ipv4": ["10.77.0.11"], "is_up": True, "kind": "ethernet"},
            {"name": "ib0", "ipv4": ["10.78.0.11"], "is_up": True, "kind": "infiniband"},
        ],
        "chosen": {"ok": True, "interface": "ib0", "address": "10.78.0.11", "error": None},
        "listen": {"address": "10.78.0.11", "port": 40000},
        "connect": {"ok": True, "source": "10.78.0.11"},
        "shared_fs": {
            "run_dir": "/home/u/.jobstrap/runs/doctor-1",
            "run_dir_exists": True,
            "client_token": "client-token",
            "node_token": "node-token",
        },
        "cgroup": {"version": 2, "memory_limit": 4096 * MiB, "cpu_quota": None},
        "cpus": {"affinity": 4},
    }
    report.update(changes)
    return report


def evaluate(report: dict[str, Any], **overrides: Any) -> dict[str, Check]:
    arguments: dict[str, Any] = {
        "client_versions": CLIENT_VERSIONS,
        "client_python": "3.11.7",
        "client_token": "client-token",
        "node_token_here": "node-token",
        "callback_error": None,
        "scheduler_address": "10.78.0.1:5000",
        "cores": 4,
        "memory": 4096 * MiB,
        "interfaces_requested": ["ib0", "eth0"],
        "via_network": True,
    }
    arguments.update(overrides)
    return {c.name: c for c in evaluate_probe(report, **arguments)}


def test_a_healthy_node_passes_every_check() -> None:
    checks = evaluate(good_report())

    assert {name: str(c.status) for name, c in checks.items()} == dict.fromkeys(checks, "OK")


def test_an_interface_the_node_lacks_fails_and_lists_what_it_has() -> None:
    chosen = {"ok": False, "interface": None, "address": None,
              "error": "node1: requested interface ib9 is not usable here"}  # fmt: skip

    check = evaluate(good_report(chosen=chosen))["worker address"]

    assert check.status is Status.FAIL
    assert "ib9" in check.detail
    assert "eth0 10.77.0.11, ib0 10.78.0.11" in check.fix


def test_a_node_that_cannot_reach_the_scheduler_fails_with_the_error() -> None:
    connect = {"ok": False, "error": "ConnectionRefusedError: Connection refused"}

    check = evaluate(good_report(connect=connect), via_network=False)["node -> scheduler"]

    assert check.status is Status.FAIL
    assert "Connection refused" in check.detail
    assert "scheduler_interface" in check.fix


def test_a_scheduler_that_cannot_reach_the_worker_address_fails() -> None:
    check = evaluate(good_report(), callback_error="TimeoutError: timed out")["scheduler -> node"]

    assert check.status is Status.FAIL
    assert "10.78.0.11:40000" in check.detail


def test_a_different_distributed_version_fails() -> None:
    packages = {**CLIENT_VERSIONS, "distributed": "2024.8.0"}

    check = evaluate(good_report(packages=packages))["versions"]

    assert check.status is Status.FAIL
    assert "distributed 2024.8.0 (here 2026.8.0)" in check.detail


def test_a_different_python_minor_version_fails() -> None:
    python = {"executable": "/usr/bin/python3", "version": "3.10.12"}

    assert evaluate(good_report(python=python))["versions"].status is Status.FAIL


def test_a_different_python_patch_version_is_a_warning() -> None:
    python = {"executable": "/usr/bin/python3", "version": "3.11.2"}

    assert evaluate(good_report(python=python))["versions"].status is Status.WARN


def test_a_run_directory_missing_on_the_node_fails_naming_run_root() -> None:
    shared = {**good_report()["shared_fs"], "run_dir_exists": False}

    check = evaluate(good_report(shared_fs=shared))["shared file system"]

    assert check.status is Status.FAIL
    assert "does not exist on node1" in check.detail
    assert "run_root" in check.fix


def test_a_file_written_on_the_node_but_invisible_here_fails() -> None:
    check = evaluate(good_report(), node_token_here=None)["shared file system"]

    assert check.status is Status.FAIL
    assert "not visible here" in check.detail


def test_a_stale_copy_of_the_run_directory_on_the_node_fails() -> None:
    shared = {**good_report()["shared_fs"], "client_token": "something else"}

    assert evaluate(good_report(shared_fs=shared))["shared file system"].status is Status.FAIL


def test_a_memory_limit_below_the_request_fails() -> None:
    cgroup = {"version": 2, "memory_limit": 1024 * MiB, "cpu_quota": None}

    check = evaluate(good_report(cgroup=cgroup))["memory"]

    assert check.status is Status.FAIL
    assert "1GiB" in check.detail


def test_no_memory_limit_at_all_is_a_warning() -> None:
    cgroup = {"version": 1, "memory_limit": None, "cpu_quota": None}

    assert evaluate(good_report(cgroup=cgroup))["memory"].status is Status.WARN


def test_fewer_cpus_than_requested_is_a_warning() -> None:
    check = evaluate(good_report(cpus={"affinity": 2}))["cpu"]

    assert check.status is Status.WARN
    assert "2 CPUs" in check.detail


def test_a_cpu_quota_counts_as_a_cpu_limit() -> None:
    cgroup = {"version": 2, "memory_limit": None, "cpu_quota": 1.5}

    assert evaluate(good_report(cgroup=cgroup))["cpu"].status is Status.WARN


# -------------------------------------------------------------- job failures


def record(state: JobState, exit_code: int | None = None, reason: str = "") -> JobRecord:
    return JobRecord("42", state, exit_code=exit_code, reason=reason, nodes="node2")


def test_exit_127_means_python_was_not_found_on_that_node() -> None:
    tail = "/opt/py/bin/python3: No such file or directory\n"

    check = diagnose_job_failure(
        record(JobState.FAILED, 127), tail, "/opt/py/bin/python3", log_found=True
    )

    assert check.name == "node python"
    assert check.detail == "python not found on node2: /opt/py/bin/python3"
    assert "prologue" in check.fix


def test_a_python_without_jobstrap_is_named() -> None:
    tail = "/usr/bin/python3: Error while finding module specification: No module named 'jobstrap'"

    check = diagnose_job_failure(record(JobState.FAILED, 1), tail, "/usr/bin/python3",
                                 log_found=True)  # fmt: skip

    assert "jobstrap is not installed" in check.detail


def test_a_job_that_left_no_log_points_at_the_run_directory() -> None:
    check = diagnose_job_failure(
        record(JobState.FAILED, 0, "JobLaunchFailure"), "", "python3", log_found=False
    )

    assert "not on a file system shared" in check.detail
    assert "JobLaunchFailure" in check.detail


def test_a_job_killed_for_memory_says_raise_memory() -> None:
    check = diagnose_job_failure(
        record(JobState.OUT_OF_MEMORY, 137), "Killed\n", "python3", log_found=True
    )

    assert check.fix == "raise `memory:`"


def test_a_missing_application_module_is_named_with_its_install_command() -> None:
    tail = "ModuleNotFoundError: No module named 'numpy'\n"

    check = diagnose_job_failure(record(JobState.FAILED, 1), tail, "python3", log_found=True)

    assert check.detail == "python3 on node2 lacks numpy"
    assert check.fix == "python3 -m pip install numpy (the same version as here)"


def test_a_node_failure_says_run_the_doctor_again() -> None:
    check = diagnose_job_failure(record(JobState.NODE_FAIL), "", "python3", log_found=True)

    assert check.fix == "the node failed; run the doctor again"


def test_a_pbs_probe_jobs_log_is_found_under_the_name_its_template_gives(tmp_path: Path) -> None:
    (tmp_path / "7.err").write_text("qsub said hello\n")

    assert _read_stderr(get_system("pbs"), tmp_path, "7.pbsserver") == "qsub said hello\n"
    assert _read_stderr(get_system("slurm"), tmp_path, "8") is None


@pytest.mark.parametrize(
    ("system", "required", "partition_commands"),
    [
        ("slurm", ("sbatch", "squeue", "scancel", "scontrol"), ["scontrol", "sinfo"]),
        ("pbs", ("qsub", "qstat", "qdel"), ["qstat"]),
        ("local", (), []),
        ("nosuch", (), []),
    ],
)
def test_each_batch_system_names_its_commands(
    system: str, required: tuple[str, ...], partition_commands: list[str]
) -> None:
    assert batch_commands(system)[0] == required
    assert [argv[0] for argv in partition_argv(system, "workq")] == partition_commands


def test_a_job_pending_on_a_time_limit_says_lower_the_walltime() -> None:
    check = diagnose_pending(record(JobState.PENDING, reason="PartitionTimeLimit"), 300)

    assert check.status is Status.FAIL
    assert "walltime" in check.fix


def test_a_job_pending_on_resources_says_the_queue_is_busy() -> None:
    check = diagnose_pending(record(JobState.PENDING, reason="Resources"), 300)

    assert "busy" in check.fix


# ------------------------------------------------------------------- cgroups


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limits_are_the_smallest_along_the_path(tmp_path: Path) -> None:
    write(tmp_path / "cgroup.controllers", "cpu memory")
    write(tmp_path / "system.slice/slurm/job_7/memory.max", "2147483648")
    write(tmp_path / "system.slice/slurm/memory.max", "max")
    write(tmp_path / "system.slice/slurm/job_7/cpu.max", "200000 100000")

    limits = cgroup_limits("0::/system.slice/slurm/job_7\n", root=tmp_path)

    assert limits["version"] == 2
    assert limits["memory_limit"] == 2 * 2**30
    assert limits["cpu_quota"] == 2.0


def test_cgroup_v1_limits_are_read_from_the_memory_and_cpu_hierarchies(tmp_path: Path) -> None:
    write(tmp_path / "memory/slurm/uid_0/job_7/memory.limit_in_bytes", str(500 * MiB))
    write(tmp_path / "memory/memory.limit_in_bytes", "9223372036854771712")
    write(tmp_path / "cpu,cpuacct/slurm/cpu.cfs_quota_us", "-1")
    write(tmp_path / "cpu,cpuacct/slurm/cpu.cfs_period_us", "100000")
    text = "4:memory:/slurm/uid_0/job_7\n3:cpu,cpuacct:/slurm\n0::/\n"

    limits = cgroup_limits(text, root=tmp_path)

    assert limits["version"] == 1
    assert limits["memory_limit"] == 500 * MiB
    assert limits["cpu_quota"] is None


def test_no_cgroup_means_no_limits(tmp_path: Path) -> None:
    assert cgroup_limits("", root=tmp_path)["memory_limit"] is None


# ----------------------------------------------------------------- the probe job


def test_the_probe_job_carries_its_token_in_the_environment_not_the_command() -> None:
    profile = load_profile("default", {"walltime": "2h", "cores": 2})

    spec = probe_job(profile, "/runs/d1", "jsabc", connect="10.0.0.1:5000", token="s3cret")

    assert spec.role is Role.PROBE
    assert ("JOBSTRAP_PROBE_TOKEN", "s3cret") in spec.env
    assert "s3cret" not in " ".join(spec.command)
    assert spec.command[1:5] == ("-m", "jobstrap.bootstrap.probe", "/runs/d1", "--connect")
    assert spec.walltime == 300
    assert spec.cpus_per_task == 2


def test_format_report_lists_fixes_for_what_is_not_ok() -> None:
    report = DoctorReport([
        Check("a", Status.OK, "fine"),
        Check("b", Status.FAIL, "broken", "do this"),
    ])  # fmt: skip

    text = format_report(report)

    assert "b (FAIL): do this" in text
    assert "1 failed" in text
    assert report.exit_code == 1


@pytest.fixture
def probe_dir(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    (run_dir / CLIENT_TOKEN_FILE).write_text("client-token\n")
    return run_dir


def run_probe(run_dir: Path, connect: str, token: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JOBSTRAP_PROBE_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", "jobstrap.bootstrap.probe", str(run_dir), "--connect", connect,
         "--interface", "lo", "--cpus", "1", "--callback-wait", "10"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_the_probe_reports_over_tcp_and_waits_for_the_call_back(probe_dir: Path) -> None:
    listener = ProbeListener("127.0.0.1", "t0ken")
    called: list[str | None] = []

    def answer() -> None:
        assert listener.received.wait(30)
        listen = listener.report["listen"]  # type: ignore[index]
        called.append(call_back(listen["address"], listen["port"], "t0ken"))

    caller = threading.Thread(target=answer)
    caller.start()
    done = run_probe(probe_dir, listener.endpoint, "t0ken")
    caller.join(30)
    listener.close()

    assert done.returncode == 0, done.stderr
    assert listener.report is not None
    assert listener.report["shared_fs"]["client_token"] == "client-token"
    assert called == [None]
    written = json.loads((probe_dir / PROBE_FILE).read_text())
    assert written["callback_received"] is True
    assert (probe_dir / NODE_TOKEN_FILE).read_text().strip() == written["shared_fs"]["node_token"]
    assert stat.S_IMODE((probe_dir / PROBE_FILE).stat().st_mode) == 0o600


def test_the_listener_ignores_a_report_with_the_wrong_token(probe_dir: Path) -> None:
    listener = ProbeListener("127.0.0.1", "right")

    done = run_probe(probe_dir, listener.endpoint, "wrong")
    listener.close()

    assert done.returncode == 0
    assert listener.report is None
    assert "bad token" in json.loads((probe_dir / PROBE_FILE).read_text())["connect"]["error"]


def test_a_probe_that_cannot_connect_records_why_in_probe_json(probe_dir: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused

        done = run_probe(probe_dir, f"127.0.0.1:{port}", "t")

    assert done.returncode == 0
    assert (
        "Connection refused" in json.loads((probe_dir / PROBE_FILE).read_text())["connect"]["error"]
    )


# ------------------------------------------------- whole runs, local batch system


@pytest.fixture
def local_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The local batch system, run directories and registry in tmp, loopback only."""
    monkeypatch.setenv("JOBSTRAP_RUN_ROOT", str(tmp_path / "runs"))
    monkeypatch.setenv("JOBSTRAP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("JOBSTRAP_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("JOBSTRAP_PROFILE", raising=False)
    return tmp_path


LOOPBACK = {"interface": "lo", "scheduler_interface": "lo", "cores": 1, "memory": "256MiB"}


def by_name(report: DoctorReport) -> dict[str, Check]:
    return {c.name: c for c in report.checks}


def test_the_doctor_passes_on_a_healthy_local_site(local_site: Path) -> None:
    report = run_doctor("default", LOOPBACK, timeout=60, report_timeout=60)

    assert not report.failed, format_report(report)
    checks = by_name(report)
    assert checks["shared file system"].status is Status.OK
    assert checks["scheduler -> node"].status is Status.OK
    assert report.run_dir is None  # cleaned up after a clean bill of health


def test_the_doctor_finds_a_python_that_does_not_exist(local_site: Path) -> None:
    report = run_doctor("default", {**LOOPBACK, "python": "/nonexistent/bin/python3"}, timeout=60)

    check = by_name(report)["node python"]
    assert check.status is Status.FAIL, format_report(report)
    assert check.detail.startswith("python not found on ")
    assert report.run_dir is not None  # kept for inspection


def test_the_doctor_finds_an_interface_that_does_not_exist(local_site: Path) -> None:
    report = run_doctor("default", {**LOOPBACK, "interface": "nosuch0"}, timeout=60)

    check = by_name(report)["worker address"]
    assert check.status is Status.FAIL, format_report(report)
    assert "nosuch0" in check.detail


def test_the_doctor_cli_exits_1_and_prints_json_when_something_is_wrong(local_site: Path) -> None:
    args = ["doctor", "-p", "default", "-q", "--json", "--timeout", "60"]
    for key, value in {**LOOPBACK, "interface": "nosuch0"}.items():
        args += ["--set", f"{key}={value}"]

    result = CliRunner().invoke(cli, args)

    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["ok"] is False


def test_the_doctor_without_probe_submits_nothing_and_leaves_nothing(local_site: Path) -> None:
    report = run_doctor("default", LOOPBACK, probe=False)

    assert report.job_id is None
    assert "probe job" not in by_name(report)
    assert list((local_site / "runs").iterdir()) == []


def test_an_invalid_profile_fails_the_profile_check_and_stops(local_site: Path) -> None:
    report = run_doctor("default", {"cores": 0})

    assert [c.name for c in report.checks] == ["profile"]
    assert report.checks[0].status is Status.FAIL
