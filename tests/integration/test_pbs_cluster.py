"""PBS on the test cluster: real OpenPBS (run on the login node ``head``).

``scripts/testcluster install`` builds OpenPBS into ``/opt/pbs`` and ``up`` runs
``pbs_server``, ``pbs_sched``, ``pbs_comm`` and PBS's PostgreSQL on head and one
``pbs_mom`` on each of node1..node3. These tests run every PBS path through the real
commands: ``qsub`` (arrays with ``-J``), ``qstat -x -t -f -F json`` through the
watcher, ``qdel``, walltime kills, exit codes, ``PBSCluster`` scaling in arrays,
batch mode across three nodes with ``mpiexec`` from ``PBS_NODEFILE``, and ``jobstrap
doctor``. The last two run as an ordinary user (``TEST_USER``), as on a site where
PBS refuses root's jobs; the rest run as root, which the harness allows. They skip
only where OpenPBS is not installed at all; an installed PBS that does not answer is
a failure.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import COMPUTE_NODES, IB_SUBNET, STATE_ROOT, TEST_USER, TestCluster
from distributed import Client

import jobstrap
import support
from jobstrap import PBSCluster
from jobstrap.batchctl.control import BatchControl
from jobstrap.cluster.core import SchedulerJob
from jobstrap.jobs.spec import JobSpec, Role, new_tag
from jobstrap.states import JobState

# Conditions here ask the batch system: poll at half the default pace.
wait_until = functools.partial(support.wait_until, interval=0.5)

PBS_EXEC = Path(os.environ.get("JOBSTRAP_PBS_EXEC", "/opt/pbs"))
PBS_BIN = PBS_EXEC / "bin"

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        not (PBS_BIN / "qsub").exists(),
        reason=f"OpenPBS is not installed in {PBS_EXEC} (scripts/testcluster install)",
    ),
]

PROFILE = "testcluster-pbs"
SMALL = {"cores": 1, "memory": "500MiB", "walltime": "00:10:00"}
#: The mpich wheel's mpiexec knows nothing of PBS: hosts from PBS_NODEFILE, proxies
#: started through PBS's TM (pbs_tmrsh behind the rsh `up` writes), as in the profile.
HYDRA_ENV = {"HYDRA_LAUNCHER": "rsh", "HYDRA_LAUNCHER_EXEC": str(STATE_ROOT / "pbs/bin/rsh")}


def job_env() -> dict[str, str]:
    """The profile's ``env``, and the sources under test if they are not installed.

    qsub does not pass the submitter's environment on; a session that tests sources
    through PYTHONPATH hands it to its jobs explicitly.
    """
    env = dict(HYDRA_ENV)
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


@pytest.fixture(scope="module", autouse=True)
def pbs_on_path(testcluster: TestCluster) -> Iterator[None]:
    """PBS's commands on PATH, and a server that answers (else fail: it is installed)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", f"{PBS_BIN}:{os.environ['PATH']}")
        done = subprocess.run(["qstat", "-B"], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            pytest.fail(f"OpenPBS is installed but its server does not answer: {done.stderr}")
        yield


@pytest.fixture
def batchctl() -> Iterator[BatchControl]:
    batchctl = BatchControl("pbs")
    batchctl.watcher.configure(poll_interval=1, max_interval=2, missing_grace=60)
    yield batchctl
    batchctl.watcher.close()
    leftover = [j for j, r in batchctl.watcher.records().items() if not r.state.is_terminal]
    if leftover:
        batchctl.cancel(leftover)


@pytest.fixture
def run_dir(shared_scratch: Path) -> Path:
    path = shared_scratch / "run"
    (path / "logs").mkdir(parents=True)
    return path


def job_spec(run_dir: Path, *command: str, **changes: Any) -> JobSpec:
    values: dict[str, Any] = {
        "name": "pbstest",
        "role": Role.WORKERS,
        "run_dir": str(run_dir),
        "tag": new_tag(),
        "command": command or ("sleep", "300"),
        "walltime": 600,
        "queue": "workq",
        "memory": 100 * 2**20,
        "launcher": "none",
        "log_directory": str(run_dir / "logs"),
    }
    values.update(changes)
    return JobSpec(**values)


def on_ib0(address: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network(IB_SUBNET)


def qstat_jobs() -> list[str]:
    """Every job the server still has queued or running (any user)."""
    done = subprocess.run(["qstat"], capture_output=True, text=True, timeout=60, check=True)
    return [line.split()[0] for line in done.stdout.splitlines()[2:] if line.strip()]


# --- one job through its life --------------------------------------------------------------


def test_a_job_runs_on_a_compute_node_and_completes(batchctl: BatchControl, run_dir: Path) -> None:
    submission = batchctl.submit(job_spec(run_dir, "sh", "-c", "hostname; sleep 2"))
    (job_id,) = submission.job_ids

    final = batchctl.watcher.wait([job_id], timeout=120)[job_id]

    assert job_id.endswith(".head")
    assert final.state is JobState.COMPLETED
    assert final.exit_code == 0
    assert final.nodes.split("/")[0] in COMPUTE_NODES


def test_a_job_that_fails_reports_its_exit_code(batchctl: BatchControl, run_dir: Path) -> None:
    submission = batchctl.submit(job_spec(run_dir, "sh", "-c", "exit 3"))

    final = batchctl.watcher.wait(submission.job_ids, timeout=120)[submission.job_ids[0]]

    assert final.state is JobState.FAILED
    assert final.exit_code == 3


def test_a_deleted_running_job_ends_cancelled(batchctl: BatchControl, run_dir: Path) -> None:
    submission = batchctl.submit(job_spec(run_dir))
    (job_id,) = submission.job_ids
    batchctl.watcher.wait([job_id], lambda r: r.state is JobState.RUNNING, 120)

    batchctl.cancel([job_id])
    final = batchctl.watcher.wait([job_id], timeout=120)[job_id]

    assert final.state is JobState.CANCELLED
    assert final.raw_state == "F"


def test_a_job_killed_at_its_walltime_is_timeout(batchctl: BatchControl, run_dir: Path) -> None:
    submission = batchctl.submit(job_spec(run_dir, "sleep", "600", walltime=5))

    final = batchctl.watcher.wait(submission.job_ids, timeout=180)[submission.job_ids[0]]

    assert final.state is JobState.TIMEOUT
    assert final.exit_code == -29


def test_cancelling_a_finished_job_is_not_an_error(batchctl: BatchControl, run_dir: Path) -> None:
    submission = batchctl.submit(job_spec(run_dir, "true"))
    batchctl.watcher.wait(submission.job_ids, timeout=120)

    batchctl.cancel(submission.job_ids)  # qdel: "Job has finished", exit 35


# --- the server goes away ------------------------------------------------------------------

#: How scripts/testcluster starts PBS's daemons: a clean environment, head's pbs.conf.
DAEMON_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "HOME": "/root", "LANG": "C.UTF-8",
              "PBS_CONF_FILE": str(STATE_ROOT / "pbs" / "head.conf")}  # fmt: skip


def start_server() -> None:
    """Start pbs_server as scripts/testcluster does (it puts itself in the background)."""
    argv = [str(PBS_EXEC / "sbin" / "pbs_server")]
    subprocess.run(argv, env=DAEMON_ENV, stdin=subprocess.DEVNULL, capture_output=True,
                   check=True, timeout=120)  # fmt: skip


def server_answers() -> bool:
    done = subprocess.run(["qstat", "-B"], capture_output=True, text=True, timeout=60)
    return done.returncode == 0


@pytest.fixture
def server() -> Iterator[Callable[[], None]]:
    """Stops pbs_server on demand (jobs keep running); it is running again afterwards."""

    def stop() -> None:
        subprocess.run(["qterm", "-t", "quick"], check=True, capture_output=True, timeout=60)
        wait_until(lambda: not server_answers(), 60, lambda: "qstat -B still answers")

    yield stop
    if not server_answers():
        start_server()
        wait_until(server_answers, 120, lambda: "pbs_server does not answer")


def test_a_stopped_server_makes_states_unknown_until_it_is_back(
    batchctl: BatchControl, run_dir: Path, server: Callable[[], None]
) -> None:
    submission = batchctl.submit(job_spec(run_dir))
    (job_id,) = submission.job_ids
    batchctl.watcher.wait([job_id], lambda r: r.state is JobState.RUNNING, 120)

    server()
    wait_until(
        lambda: batchctl.watcher.state(job_id) is JobState.UNKNOWN, 60, batchctl.watcher.records
    )
    unknown = batchctl.watcher.record(job_id)
    error = batchctl.watcher.last_error
    start_server()
    back = batchctl.watcher.wait([job_id], lambda r: r.state is JobState.RUNNING, 120)[job_id]

    assert unknown.last_state is JobState.RUNNING
    assert error is not None
    assert error.transient
    assert back.state is JobState.RUNNING  # the job ran on through the outage
    assert batchctl.calls["qsub"] == 1


# --- arrays --------------------------------------------------------------------------------


def test_four_jobs_go_out_as_one_array_and_each_subjob_is_watched(
    batchctl: BatchControl, run_dir: Path
) -> None:
    spec = job_spec(run_dir, "sh", "-c", 'exit "$PBS_ARRAY_INDEX"')

    submission = batchctl.submit(spec, count=4)
    finals = batchctl.watcher.wait(submission.job_ids, timeout=180)

    assert batchctl.calls["qsub"] == 1
    (array,) = submission.batch_ids
    assert array.endswith("[].head")
    assert len(submission.job_ids) == 4
    assert {batchctl.system.base_job_id(j) for j in submission.job_ids} == {array}
    codes = sorted(r.exit_code for r in finals.values() if r.exit_code is not None)
    assert len(codes) == 4
    assert codes == sorted(int(j.split("[")[1].split("]")[0]) for j in submission.job_ids)


# --- PBSCluster ----------------------------------------------------------------------------


def test_a_scale_up_of_six_jobs_is_one_qsub_and_closing_leaves_qstat_empty() -> None:
    with PBSCluster(PROFILE, **SMALL, env=job_env()) as cluster:
        qsub_before = cluster.batchctl.calls["qsub"]

        cluster.scale(jobs=6)

        assert cluster.batchctl.calls["qsub"] - qsub_before == 1
        assert len({cluster.batchctl.system.base_job_id(j) for j in cluster.jobs}) == 1
        cluster.wait_for_workers(6, timeout=300)
        workers = cluster.scheduler_info["workers"].values()
        assert len(workers) == 6
        hosts = {str(w["host"]) for w in workers}
        assert all(on_ib0(h) for h in hosts), hosts
        job_ids = list(cluster.jobs)
    wait_until(lambda: not set(qstat_jobs()) & set(job_ids), 120, lambda: (qstat_jobs(), job_ids))


def live_in_pbs(job_ids: list[str]) -> dict[str, JobState]:
    """States of the jobs PBS still has queued or running."""
    records = BatchControl.for_system("pbs").status(job_ids)
    return {j: r.state for j, r in records.items() if r.state.is_active}


def test_adapt_follows_a_burst_of_tasks_and_returns_to_the_minimum() -> None:
    with PBSCluster(PROFILE, **SMALL, env=job_env()) as cluster:
        adaptive = cluster.adapt(minimum_jobs=1, maximum_jobs=3, interval="500ms", wait_count=4)
        cluster.wait_for_workers(1, timeout=120)
        peak = 0
        with Client(cluster) as client:
            futures = client.map(time.sleep, [1.0] * 40, pure=False)

            def done() -> bool:
                nonlocal peak
                peak = max(peak, len(cluster.worker_spec))
                return all(f.done() for f in futures)

            wait_until(done, 120, lambda: (cluster.jobs, adaptive.log))
            assert client.gather(futures) == [None] * 40

        assert peak == 3
        wait_until(lambda: len(cluster.worker_spec) == 1, 90, lambda: (cluster.jobs, adaptive.log))


def test_the_scheduler_can_run_in_its_own_pbs_job() -> None:
    with PBSCluster(PROFILE, **SMALL, env=job_env(), scheduler="job") as cluster:
        assert isinstance(cluster.scheduler, SchedulerJob)
        scheduler_job = cluster.scheduler.job_id
        cluster.scale(jobs=1)
        cluster.wait_for_workers(1, timeout=120)
        with Client(cluster) as client:
            assert client.submit(sum, [1, 2]).result(timeout=60) == 3

    wait_until(lambda: not live_in_pbs([scheduler_job]), 60, lambda: live_in_pbs([scheduler_job]))


CLIENT_SCRIPT = """
import json, sys, time
import jobstrap
from jobstrap import PBSCluster
cluster = PBSCluster("testcluster-pbs", cores=1, memory="500MiB", walltime="00:10:00",
                     death_timeout=15, env=json.loads(sys.argv[1]))
cluster.scale(jobs=2)
cluster.wait_for_workers(2, timeout=120)
print(" ".join(cluster.jobs), flush=True)
time.sleep(600)
"""


def test_a_killed_client_leaves_no_job_after_the_death_timeout(tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    script.write_text(CLIENT_SCRIPT)
    process = subprocess.Popen(
        [sys.executable, str(script), json.dumps(job_env())], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        ids = process.stdout.readline().split()
        assert len(ids) == 2, ids
        assert len(live_in_pbs(ids)) == 2

        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

        # The workers give up after the death timeout (15 s); then PBS's obit.
        wait_until(lambda: not live_in_pbs(ids), 15 + 60, lambda: live_in_pbs(ids), interval=1.0)
    finally:
        if process.poll() is None:
            process.kill()


@pytest.fixture
def graph_state(shared_scratch: Path) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JOBSTRAP_RUN_ROOT", str(shared_scratch / "runs"))
        patch.setenv("JOBSTRAP_STATE_DIR", str(shared_scratch / "state"))
        patch.delenv("JOBSTRAP_PROFILE", raising=False)
        yield shared_scratch


def hosts_of_workers() -> list[str]:
    import socket

    from distributed import get_client

    return sorted(set(get_client().run(socket.gethostname).values()))


def test_a_graph_job_runs_its_workers_on_the_compute_nodes(graph_state: Path) -> None:
    job = {"profile": PROFILE, "nodes": 2, "walltime": "00:10:00", "memory": "1GiB"}

    hosts = jobstrap.submit(hosts_of_workers, **job, env=job_env()).result(timeout=300)

    assert hosts
    assert set(hosts) <= set(COMPUTE_NODES)


@pytest.mark.slow
def test_a_computation_longer_than_every_walltime_finishes_by_rotation_alone() -> None:
    # PBS sends no signal before the walltime: the planned rotation alone must retire
    # every job (60 s, retired 20 s before its end) and replace it without a loss.
    from test_lifetime_cluster import CountStarts, WorkerSampler, expected_result, submit_graph

    width, levels, seconds = 4, 40, 1.5  # about 2 minutes on two workers
    counter = CountStarts()
    with (
        PBSCluster(PROFILE, **{**SMALL, "walltime": "00:01:00"}, lifetime_margin=20,
                   env=job_env()) as cluster,
        Client(cluster) as client,
        WorkerSampler(lambda: len(cluster.scheduler.workers)) as sampler,
    ):  # fmt: skip
        cluster.scheduler.add_plugin(counter, name="count-starts")
        cluster.scale(jobs=2)
        rows = submit_graph(client, width, levels, seconds)
        result = client.gather(rows[-1], errors="raise")
        jobs_seen = set(cluster.job_history)

    tasks = width * levels
    assert result == expected_result(width, levels)
    assert len(jobs_seen) > 2, f"no job was rotated: {sorted(jobs_seen)}"
    # No result lost to a walltime: none computed twice (every future is kept, so a
    # job killed before its results moved would show here).
    assert counter.recomputed == 0, f"{counter.recomputed} results lost and recomputed"
    # A retiring one-thread worker hands back at most the two tasks the scheduler
    # queues on it (worker-saturation 1.1); a fixed 5 % allowed only 8 such hand-backs
    # for 160 tasks, fewer than a loaded run's rotations make.
    handed_back = 2 * (len(jobs_seen) - 2)
    assert counter.starts <= tasks + handed_back, f"{counter.starts} starts for {tasks} tasks"
    minimum = sampler.minimum_after_first_worker()
    assert minimum is not None, "no worker ever arrived"
    assert minimum > 0, f"the worker count dropped to zero; samples: {sampler.samples}"


# --- batch mode, doctor --------------------------------------------------------------------


def as_test_user(argv: list[str], shared_scratch: Path) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as the cluster's ordinary user, as a person on a PBS site would.

    PBS refuses root's jobs on a real site (the harness lets root submit only for hand
    trials): what runs here is submitted, run and cancelled as ``TEST_USER``, whose
    home, run root and state directory are their own. ``shared_scratch`` becomes theirs.
    """
    user = pwd.getpwnam(TEST_USER)
    for path in (shared_scratch, *shared_scratch.rglob("*")):
        os.chown(path, user.pw_uid, user.pw_gid)
    env = {
        "HOME": user.pw_dir, "USER": TEST_USER, "LOGNAME": TEST_USER, "LANG": "C.UTF-8",
        "PATH": f"{PBS_BIN}:{Path(sys.executable).parent}:/usr/bin:/bin",
        "JOBSTRAP_STATE_DIR": str(shared_scratch / "state"),
        "JOBSTRAP_RUN_ROOT": str(shared_scratch / "runs"),
        **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}),
    }  # fmt: skip
    return subprocess.run(
        ["runuser", "-u", TEST_USER, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()),
         *argv],
        capture_output=True, text=True, timeout=600, cwd=shared_scratch,
    )  # fmt: skip


def test_jobstrap_submit_runs_an_app_on_three_nodes_and_returns_its_exit_code(
    shared_scratch: Path,
) -> None:
    app = shared_scratch / "app.py"
    app.write_text(
        "import socket, sys\n"
        "from distributed import Client\n"
        "client = Client()\n"
        "client.wait_for_workers(4)\n"
        "info = client.scheduler_info()\n"
        "print('WORKERS', ' '.join(sorted(w['host'] for w in info['workers'].values())))\n"
        "print('HOSTS', ' '.join(sorted(set(client.run(socket.gethostname).values()))))\n"
        "sys.exit(5)\n"
    )
    env_setting = ",".join(f"{k}={v}" for k, v in job_env().items())

    # Six ranks, two per node: scheduler and client share a node, workers on the other two.
    # Submitted by an ordinary user, as on a site: PBS runs the job as them.
    done = as_test_user(
        [sys.executable, "-m", "jobstrap", "submit", "--system", "pbs", "-p", PROFILE,
         "--nodes", "3", "--ntasks-per-node", "2", "--set", "poll_interval=1",
         "--set", f"env={env_setting}", "--wait", str(app)],
        shared_scratch,
    )  # fmt: skip

    assert done.returncode == 5, done.stdout + done.stderr
    running = next(line for line in done.stdout.splitlines() if "-> RUNNING" in line)
    assert all(f"{node}/" in running for node in COMPUTE_NODES), done.stdout
    out_path = next(line.split(None, 1)[1] for line in done.stdout.splitlines()
                    if line.startswith("stdout"))  # fmt: skip
    output = Path(out_path.strip()).read_text()
    # The job ran as the user: its output and its private run directory are theirs.
    uid = pwd.getpwnam(TEST_USER).pw_uid
    assert Path(out_path.strip()).stat().st_uid == uid
    (run_dir,) = (shared_scratch / "runs").glob("run-*")  # beside it: the .metrics dir
    assert (run_dir.stat().st_uid, run_dir.stat().st_mode & 0o777) == (uid, 0o700)
    lines = {line.split()[0]: line.split()[1:] for line in output.splitlines() if line.strip()}
    assert len(lines["WORKERS"]) == 4, output
    assert all(on_ib0(address) for address in lines["WORKERS"]), output
    # Workers on the two nodes that do not hold the scheduler and client ranks.
    assert len(lines["HOSTS"]) == 2, output
    assert set(lines["HOSTS"]) < set(COMPUTE_NODES), output


def test_doctor_checks_the_pbs_profile(shared_scratch: Path) -> None:
    done = as_test_user([sys.executable, "-m", "jobstrap", "doctor", "-p", PROFILE], shared_scratch)

    assert done.returncode == 0, done.stdout + done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    assert rows["batch"].split()[2] == "OK", done.stdout
    assert str(PBS_BIN) in rows["batch"], done.stdout
    assert rows["probe"].split()[2] == "OK", done.stdout
    assert ".head ran on node" in rows["probe"], done.stdout
    assert rows["worker"].split()[2] == "OK", done.stdout
    assert "on ib0" in rows["worker"], done.stdout
