"""The Slurm test cluster behaves like a real multi-node site.

Every other integration test builds on these properties, so they are checked
against the real cluster: distinct hosts and networks, accounting, walltime,
signals, job arrays, partition and account limits, and a clean teardown.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    COMPUTE_NODES,
    HOSTS,
    IB_MTU,
    IB_SUBNET,
    MAX_ARRAY_SIZE,
    SHORT_MAX_TIME_MINUTES,
    SHORT_PARTITION,
    STATE_ROOT,
    TESTCLUSTER,
    Job,
    TestCluster,
    namespace_inodes,
    new_shared_dir,
)

pytestmark = pytest.mark.cluster

# Each task prints "<hostname> <ib0 IPv4/prefix>".
HOST_AND_IB0 = """srun sh -c 'echo "$(hostname) $(ip -4 -o addr show dev ib0 | awk "{print \\$4}")"'
"""


@pytest.fixture(scope="module")
def two_node_job(testcluster: TestCluster) -> Iterator[Job]:
    # Module-scoped: several tests look at different aspects of one finished job.
    workdir = new_shared_dir("two_node_job")
    job = testcluster.sbatch(HOST_AND_IB0, workdir, "--nodes=2", "--ntasks-per-node=1")
    testcluster.wait_job(job, timeout=120)
    yield job
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize("host", HOSTS)
def test_each_host_has_its_own_hostname(testcluster: TestCluster, host: str) -> None:
    result = testcluster.on(host, ["hostname"], check=True)

    assert result.stdout.strip() == host


@pytest.mark.parametrize("host", HOSTS)
def test_each_host_has_ib0_with_ipoib_mtu_on_the_ib_subnet(
    testcluster: TestCluster, host: str
) -> None:
    mtu = testcluster.on(host, ["cat", "/sys/class/net/ib0/mtu"], check=True)
    addr = testcluster.on(host, ["ip", "-4", "-o", "addr", "show", "dev", "ib0"], check=True)

    assert int(mtu.stdout) == IB_MTU
    assert ipaddress.ip_interface(addr.stdout.split()[3]).network == ipaddress.ip_network(IB_SUBNET)


def test_every_host_resolves_every_other_by_name(testcluster: TestCluster) -> None:
    result = testcluster.on(COMPUTE_NODES[-1], ["getent", "hosts", *HOSTS], check=True)

    resolved = {line.split()[1]: line.split()[0] for line in result.stdout.splitlines()}
    assert resolved == testcluster.eth0_addresses


def test_on_keeps_the_callers_environment_and_working_directory(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    env = {**os.environ, "JOBSTRAP_PROBE": "kept"}

    result = testcluster.on(
        COMPUTE_NODES[0],
        ["sh", "-c", 'echo "$JOBSTRAP_PROBE $(pwd)"'],
        env=env,
        cwd=shared_scratch,
        check=True,
    )

    assert result.stdout.split() == ["kept", str(shared_scratch)]


def test_status_reports_a_healthy_cluster(testcluster: TestCluster) -> None:
    result = testcluster.status()

    assert result.returncode == 0, result.stdout + result.stderr
    assert "healthy" in result.stdout


def test_two_node_job_sees_two_hostnames_and_two_ib0_addresses(two_node_job: Job) -> None:
    lines = [line.split() for line in two_node_job.read_output().splitlines() if line.strip()]

    hostnames = {host for host, _ in lines}
    addresses = {ipaddress.ip_interface(addr) for _, addr in lines}
    assert len(lines) == 2, two_node_job.read_output()
    assert len(hostnames) == 2
    assert hostnames <= set(COMPUTE_NODES)
    assert len(addresses) == 2
    assert all(a.network == ipaddress.ip_network(IB_SUBNET) for a in addresses)


def test_sacct_reports_the_two_node_job_completed(
    testcluster: TestCluster, two_node_job: Job
) -> None:
    rows = testcluster.sacct(two_node_job.job_id, "NNodes", "ExitCode")

    assert [(r["State"], r["NNodes"], r["ExitCode"]) for r in rows] == [("COMPLETED", "2", "0:0")]


@pytest.mark.slow
def test_job_running_past_its_walltime_ends_in_timeout(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    job = testcluster.sbatch("sleep 600\n", shared_scratch, "--time=1")

    # Slurm checks limits every 30 s and then allows KillWait (10 s): ~75-100 s.
    rows = testcluster.wait_job(job, timeout=240)

    assert [r["State"] for r in rows] == ["TIMEOUT"]


@pytest.mark.slow
def test_signal_option_delivers_usr1_to_the_batch_shell_before_walltime(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    marker = shared_scratch / "got-usr1"
    body = f"""trap 'echo "$SECONDS" > {marker}; exit 0' USR1
sleep 600 &
wait $!
"""
    # Walltime 2 min, USR1 at 90 s before the end: arrives after ~30-60 s.
    job = testcluster.sbatch(body, shared_scratch, "--time=2", "--signal=B:USR1@90")

    rows = testcluster.wait_job(job, timeout=240)

    assert marker.exists(), job.read_output()
    assert [r["State"] for r in rows] == ["COMPLETED"]


def test_job_array_of_five_runs_five_tasks_with_distinct_task_ids(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    body = 'echo "$SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID" > "task-$SLURM_ARRAY_TASK_ID.txt"\n'
    job = testcluster.sbatch(body, shared_scratch, "--array=0-4")

    rows = testcluster.wait_job(job, timeout=120, tasks=5)

    seen = [p.read_text().split() for p in sorted(shared_scratch.glob("task-*.txt"))]
    assert sorted(int(task) for _, task in seen) == [0, 1, 2, 3, 4]
    assert {array_id for array_id, _ in seen} == {job.job_id}
    assert [r["State"] for r in rows] == ["COMPLETED"] * 5


def test_array_index_at_max_array_size_is_rejected(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    result = testcluster.on(
        testcluster.login_host,
        ["sbatch", f"--array=0-{MAX_ARRAY_SIZE}", f"--chdir={shared_scratch}", "--wrap", "true"],
    )

    assert result.returncode != 0
    assert "Invalid job array specification" in result.stderr


def test_walltime_above_the_short_partition_limit_is_rejected(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    result = testcluster.on(
        testcluster.login_host,
        [
            "sbatch",
            f"--partition={SHORT_PARTITION}",
            f"--time={SHORT_MAX_TIME_MINUTES + 1}",
            f"--chdir={shared_scratch}",
            "--wrap",
            "true",
        ],
    )

    assert result.returncode != 0
    assert "time limit" in result.stderr


@pytest.mark.parametrize("account", ["science", "other"])
def test_jobs_are_charged_to_the_requested_account(
    testcluster: TestCluster, shared_scratch: Path, account: str
) -> None:
    job = testcluster.sbatch("true\n", shared_scratch, f"--account={account}", "--qos=high")
    testcluster.wait_job(job, 120)

    # slurmdbd fills in some fields after the job record exists: wait for them.
    charged = testcluster.wait_for(
        lambda: (
            [(r["Account"], r["QOS"]) for r in testcluster.sacct(job.job_id, "Account", "QOS")]
            == [(account, "high")]
        ),
        30,
        f"sacct to charge job {job.job_id} to {account} with QOS high",
    )

    assert charged


def test_unknown_account_is_rejected(testcluster: TestCluster, shared_scratch: Path) -> None:
    result = testcluster.on(
        testcluster.login_host,
        ["sbatch", "--account=no-such-account", f"--chdir={shared_scratch}", "--wrap", "true"],
    )

    assert result.returncode != 0
    assert "Invalid account" in result.stderr


def test_job_above_its_memory_request_ends_out_of_memory(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    cgroup_conf = Path("/etc/slurm/cgroup.conf")
    if "ConstrainRAMSpace=yes" not in cgroup_conf.read_text():
        pytest.skip("memory is enforced only with `scripts/testcluster up --cgroup-memory`")
    hog = shared_scratch / "hog.py"
    hog.write_text(
        "import time\n"
        "blocks = []\n"
        "for _ in range(40):  # 800 MiB in 20 MiB steps\n"
        "    blocks.append(bytearray(20 * 2**20))\n"
        "    time.sleep(0.05)\n"
    )
    job = testcluster.sbatch(f"{testcluster.python} {hog}\n", shared_scratch, "--mem=100M")

    rows = testcluster.wait_job(job, timeout=120)

    assert [r["State"] for r in rows] == ["OUT_OF_MEMORY"]


# --- teardown ------------------------------------------------------------------------

SLURM_DAEMONS = {"slurmctld", "slurmd", "slurmstepd", "slurmdbd", "slurmscriptd"}


def _self_and_ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 0:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rpartition(")")[2].split()[1])
    return pids


def _running_processes() -> dict[int, tuple[str, str, int]]:
    """pid -> (comm, cmdline, netns inode) of every process that is not a zombie."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat.rpartition(")")[2].split()[0] == "Z":
                continue
            comm = (entry / "comm").read_text().strip()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            netns = os.stat(entry / "ns" / "net").st_ino
        except OSError:
            continue
        found[int(entry.name)] = (comm, cmdline, netns)
    return found


@pytest.mark.restarts_cluster
def test_down_leaves_no_process_and_no_namespace_behind(testcluster: TestCluster) -> None:
    ours = set(namespace_inodes().values())
    munged_file = STATE_ROOT / "run" / "munged.ours"
    munged = int(munged_file.read_text()) if munged_file.exists() else None
    options_file = STATE_ROOT / "run" / "up-options"
    options = options_file.read_text().split() if options_file.exists() else []
    spared = _self_and_ancestors()  # this session itself lives on head

    try:
        down = subprocess.run(
            [os.fspath(TESTCLUSTER), "down"], capture_output=True, text=True, timeout=120
        )

        # Ours: anything inside the cluster's namespaces (daemons, slurmstepd, job
        # processes, host keepers) plus the munged and MariaDB it started.  Other
        # processes of the machine, including another cluster, are not.
        leftovers = {
            pid: p
            for pid, p in _running_processes().items()
            if pid not in spared
            and (
                p[2] in ours
                or pid == munged
                or (p[0] in {"mariadbd", *SLURM_DAEMONS} and str(STATE_ROOT) in p[1])
                or p[1].split(" ")[0].endswith(f"@{STATE_ROOT}")
            )
        }
        assert down.returncode == 0, down.stdout + down.stderr
        assert ours, "no namespaces were recorded before down"
        assert leftovers == {}
        assert not STATE_ROOT.exists()
        assert not Path("/etc/slurm/slurm.conf").exists()
        assert not Path("/etc/pbs.conf").exists()  # written by `up` when OpenPBS is installed
    finally:
        # Leave the machine as we found it.  This session stays in the old head
        # namespace, which is why this test is ordered last.
        subprocess.run([os.fspath(TESTCLUSTER), "up", *options], capture_output=True, timeout=300)
