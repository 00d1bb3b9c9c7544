"""``jobstrap doctor`` on the real test cluster: it passes when the site is healthy and
names each thing that is broken on purpose.

The doctor runs as its own process on ``head`` (the login node), exactly as a user
would run it; its probe jobs run on node1..node3 through Slurm.

An unshared run directory is made honestly: a tmpfs is mounted on a fresh directory
in head's mount namespace only (every host has its own mount namespace; mounts made
in one do not propagate to the others), so the run directory the doctor creates
there exists on the login node and nowhere else, just as a login node's local
``/tmp`` would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest
from conftest import COMPUTE_NODES, IB_SUBNET, TestCluster, new_shared_dir

from jobstrap.batchctl.control import BatchControl
from jobstrap.net.network import list_interfaces

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(shutil.which("sbatch") is None, reason="needs the Slurm test cluster"),
]

JOBSTRAP = str(Path(sys.executable).parent / "jobstrap")


@pytest.fixture
def site(testcluster: TestCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run directories and the registry on the shared scratch file system."""
    root = new_shared_dir("doctor")
    monkeypatch.setenv("JOBSTRAP_RUN_ROOT", str(root / "runs"))
    monkeypatch.setenv("JOBSTRAP_STATE_DIR", str(root / "state"))
    monkeypatch.delenv("JOBSTRAP_PROFILE", raising=False)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def doctor(*settings: str, timeout: float = 240) -> tuple[int, dict[str, Any], str]:
    """Run ``jobstrap doctor -p testcluster --json`` with ``--set`` items."""
    argv = [JOBSTRAP, "doctor", "-p", "testcluster", "--json", "--timeout", "120"]
    for item in settings:
        argv += ["--set", item]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    try:
        report = json.loads(done.stdout)
    except ValueError:
        pytest.fail(f"doctor printed no JSON (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return done.returncode, report, done.stderr


def own_address(interface: str) -> str:
    """This host's (head's) address on ``interface``, as the kernel has it now."""
    return next(i.address for i in list_interfaces() if i.name == interface and i.address)


def checks(report: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {c["name"]: c for c in report["checks"]}


def table(report: dict[str, Any]) -> str:
    return "\n".join(f"{c['name']}: {c['status']} {c['detail']}" for c in report["checks"])


def test_the_doctor_passes_on_the_healthy_cluster(site: Path) -> None:
    code, report, _ = doctor()

    assert code == 0, table(report)
    found = checks(report)
    assert report["node"] in COMPUTE_NODES
    worker, on_worker = found["worker address"]["detail"].split()[:3:2]
    scheduler, on_scheduler = found["scheduler address"]["detail"].split()[:3:2]
    # The profile asks for ib0 first: both ends are on the InfiniBand stand-in.
    assert (on_worker, on_scheduler) == ("ib0", "ib0")
    assert ip_address(worker) in ip_network(IB_SUBNET)
    assert scheduler == own_address("ib0")
    for name in ("node -> scheduler", "scheduler -> node", "versions", "shared file system",
                 "partition", "probe job"):  # fmt: skip
        assert found[name]["status"] == "OK", table(report)


def test_the_doctor_finds_a_python_missing_on_the_nodes(site: Path) -> None:
    code, report, _ = doctor("python=/opt/no-such-python/bin/python3")

    assert code == 1
    check = checks(report)["node python"]
    assert check["status"] == "FAIL"
    assert re.fullmatch(r"python not found on node\d: /opt/no-such-python/bin/python3",
                        check["detail"]), check["detail"]  # fmt: skip
    assert "python:" in check["fix"]


def test_the_doctor_finds_an_interface_missing_on_the_nodes(site: Path) -> None:
    code, report, _ = doctor("interface=ib9")

    assert code == 1
    check = checks(report)["worker address"]
    assert check["status"] == "FAIL"
    assert "'ib9' not found" in check["detail"]
    # The fix lists what the node does have, with its addresses.
    assert re.search(r"eth0 10\.77\.0\.\d+, ib0 10\.78\.0\.\d+", check["fix"]), check["fix"]


@pytest.fixture
def private_root(site: Path) -> Iterator[Path]:
    """A directory backed by a tmpfs that exists in head's mount namespace only."""
    path = site / "login-only"
    path.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "jobstrap-login-only", str(path)],
        check=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=False)


def test_the_doctor_finds_a_run_directory_the_nodes_cannot_see(
    testcluster: TestCluster, private_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The mount is really private: a compute node sees the empty directory beneath.
    seen = testcluster.on(COMPUTE_NODES[0], ["findmnt", "--noheadings", str(private_root)])
    assert seen.stdout.strip() == ""
    monkeypatch.setenv("JOBSTRAP_RUN_ROOT", str(private_root))

    code, report, _ = doctor()

    assert code == 1
    check = checks(report)["shared file system"]
    assert check["status"] == "FAIL", table(report)
    assert f"does not exist on {report['node']}" in check["detail"]
    assert "run_root" in check["fix"]


def test_the_probe_job_is_cancelled_when_the_doctor_is_stopped(site: Path) -> None:
    # A probe that cannot start for an hour keeps the doctor waiting.
    argv = [JOBSTRAP, "doctor", "-p", "testcluster", "--timeout", "600",
            "--set", "extra_directives=[--begin=now+1hour]"]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        assert process.stderr is not None
        while "submitted probe job" not in line:
            line = process.stderr.readline()
            assert line or process.poll() is None, "doctor exited before submitting"
        job_id = re.search(r"submitted probe job (\S+);", line).group(1)  # type: ignore[union-attr]

        process.send_signal(signal.SIGTERM)
        process.wait(60)

        records = BatchControl.for_system("slurm").status([job_id])
        assert job_id not in records or not records[job_id].state.is_active, records
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_a_probe_that_cannot_start_in_time_fails_with_the_queue_reason(site: Path) -> None:
    argv = [JOBSTRAP, "doctor", "-p", "testcluster", "--json", "--timeout", "8",
            "--set", "extra_directives=[--begin=now+1hour]"]  # fmt: skip

    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=os.environ)

    assert done.returncode == 1, done.stdout + done.stderr
    check = checks(json.loads(done.stdout))["probe job"]
    assert "BeginTime" in check["detail"]
    assert "PENDING" in check["detail"]
