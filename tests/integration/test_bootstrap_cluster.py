"""Batch mode on the real Slurm test cluster: one allocation, one Dask cluster.

Each test writes a job script by hand (``srun --mpi=pmi2 python -m
jobstrap.bootstrap ... -- app.py``), submits it with ``sbatch`` from the login
node and reads the job log and ``sacct``. The hosts have ``eth0`` and ``ib0`` on
two subnets, so which network Dask used is visible in its addresses.

Run on the login node::

    scripts/testcluster on head .venv/bin/pytest -m cluster \
        tests/integration/test_bootstrap_cluster.py
"""

from __future__ import annotations

import json
import shlex
import shutil
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import Job, TestCluster

from jobstrap.net.security import create_tls
from jobstrap.store.rundir import RunDir

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(shutil.which("sbatch") is None, reason="needs the Slurm test cluster"),
]

JOB_TIMEOUT = 300
THREE_NODES = ("--nodes=3", "--ntasks=4", "--cpus-per-task=1", "--mem-per-cpu=500M")
#: Ranks 0 to 2 on the first node (scheduler, client, worker 2), 3 to 5 on the second.
TWO_NODES_THREE_RANKS = (
    "--nodes=2",
    "--ntasks-per-node=3",
    "--cpus-per-task=1",
    "--mem-per-cpu=300M",
)

REPORT_APP = """\
import json, socket, sys
import dask.array as da
from distributed import Client

with Client() as client:
    info = client.scheduler_info()
    x = da.arange(1_000_000, chunks=100_000)
    total = int(x.sum().compute())
    print("REPORT " + json.dumps({
        "scheduler": info["address"],
        "workers": {a: w["host"] for a, w in info["workers"].items()},
        "client_host": socket.gethostname(),
        "sum": total,
    }), flush=True)
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
"""


def submit_bootstrap(
    cluster: TestCluster,
    scratch: Path,
    app_source: str,
    *,
    launcher: Sequence[str] = ("srun", "--mpi=pmi2"),
    options: Sequence[str] = (),
    app_args: Sequence[str] = (),
    sbatch: Sequence[str] = THREE_NODES,
    tls: bool = True,
) -> tuple[Job, RunDir]:
    """Write the app and a hand-written job script, submit it, return job and run dir."""
    run = RunDir.create(scratch, "run")
    if tls:
        create_tls(run)
    app = scratch / "app.py"
    app.write_text(textwrap.dedent(app_source))
    command = [
        *launcher,
        str(cluster.python),
        "-m",
        "jobstrap.bootstrap",
        "--run-dir",
        str(run),
        "--death-timeout",
        "30",
        *options,
        "--",
        str(app),
        *app_args,
    ]
    body = shlex.join(command) + "\n"
    job = cluster.sbatch(body, scratch, "--time=00:05:00", *sbatch)
    return job, run


def finished(cluster: TestCluster, job: Job) -> tuple[dict[str, str], str]:
    """Wait for the job; return its allocation row (State, ExitCode) and its log."""
    rows = cluster.wait_job(job, JOB_TIMEOUT, "ExitCode")
    return rows[0], job.read_output()


def report_in(log: str) -> dict[str, Any]:
    lines = [line for line in log.splitlines() if line.startswith("REPORT ")]
    assert lines, log
    report = json.loads(lines[-1].removeprefix("REPORT "))
    assert isinstance(report, dict)
    return report


def host_of(address: str) -> str:
    return address.split("://", 1)[-1].rsplit(":", 1)[0]


def test_scheduler_and_workers_register_with_their_ib0_addresses(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    job, _run = submit_bootstrap(testcluster, shared_scratch, REPORT_APP)

    row, log = finished(testcluster, job)

    assert row["State"] == "COMPLETED", log
    report = report_in(log)
    ib0 = set(testcluster.ib0_addresses.values())
    assert host_of(report["scheduler"]) in ib0
    assert len(report["workers"]) == 2
    assert {host_of(a) for a in report["workers"]} <= ib0
    assert set(report["workers"].values()) <= ib0
    # The two worker ranks are on two other nodes: the network was really crossed.
    assert len({host_of(report["scheduler"]), *report["workers"].values()}) == 3
    assert report["sum"] == sum(range(1_000_000))
    assert "Traceback" not in log
    assert "CommClosedError" not in log


NODE_LAYOUT_APP = """\
import json, os, socket
import psutil
from distributed import Client

def placement(nanny):
    rank = psutil.Process(nanny)  # the nanny's process: a rank of the step
    step = rank.parent()  # slurmstepd
    standing, with_mpi = {}, {}
    for other in step.children():
        if other.pid != rank.pid:
            with open(f"/proc/{other.pid}/maps") as maps:
                mapped = maps.read()
            standing[other.pid] = "msgpack" in mapped
            with_mpi[other.pid] = "libmpi" in mapped
    return {"host": socket.gethostname(), "nanny": rank.pid, "others_with_dask": standing,
            "others_with_mpi": with_mpi}

with Client() as client:
    nannies = client.run(os.getpid, nanny=True)
    placed = {a: client.run(placement, pid, workers=[a])[a] for a, pid in nannies.items()}
    names = {a: str(w["name"]) for a, w in client.scheduler_info()["workers"].items()}
    print("REPORT " + json.dumps({
        "workers": {a: {**p, "name": names[a]} for a, p in placed.items()},
        "sum": int(client.submit(sum, range(100)).result()),
    }), flush=True)
"""


def test_the_node_layout_runs_one_process_of_workers_per_node(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    job, _run = submit_bootstrap(
        testcluster, shared_scratch, NODE_LAYOUT_APP, sbatch=TWO_NODES_THREE_RANKS
    )

    row, log = finished(testcluster, job)

    assert row["State"] == "COMPLETED", log
    report = report_in(log)
    workers = report["workers"]
    assert sorted(w["name"] for w in workers.values()) == ["2", "3", "4", "5"], log
    assert {host_of(a) for a in workers} <= set(testcluster.ib0_addresses.values())
    by_host: dict[str, set[int]] = {}
    for worker in workers.values():
        by_host.setdefault(worker["host"], set()).add(worker["nanny"])
    # One nanny process per node, whatever the number of worker ranks there.
    assert sorted(len(nannies) for nannies in by_host.values()) == [1, 1], report
    second = next(w for w in workers.values() if w["name"] == "4")
    # On the second node, the two other ranks stand by without importing Dask.
    assert list(second["others_with_dask"].values()) == [False, False], report
    # ... and, MPI finalized, as bare interpreters that let go of MPI too.
    assert list(second["others_with_mpi"].values()) == [False, False], report
    assert report["sum"] == sum(range(100))
    assert "Traceback" not in log


def test_interface_eth0_puts_scheduler_and_workers_on_eth0(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    job, run = submit_bootstrap(
        testcluster, shared_scratch, REPORT_APP, options=("--interface", "eth0")
    )

    row, log = finished(testcluster, job)

    assert row["State"] == "COMPLETED", log
    report = report_in(log)
    eth0 = set(testcluster.eth0_addresses.values())
    assert host_of(report["scheduler"]) in eth0
    assert {host_of(a) for a in report["workers"]} <= eth0
    assert host_of(run.read_info().scheduler_address) in eth0


def test_workers_follow_a_scheduler_that_is_only_on_ethernet(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    # As with a scheduler on a login node without ib0: workers must listen where
    # the scheduler can reach them, so "auto" picks the scheduler's network.
    job, _run = submit_bootstrap(
        testcluster, shared_scratch, REPORT_APP, options=("--scheduler-interface", "eth0")
    )

    row, log = finished(testcluster, job)

    assert row["State"] == "COMPLETED", log
    report = report_in(log)
    eth0 = set(testcluster.eth0_addresses.values())
    assert host_of(report["scheduler"]) in eth0
    assert set(report["workers"].values()) <= eth0


def test_app_exit_code_3_is_the_jobs_exit_code_in_sacct(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    job, run = submit_bootstrap(testcluster, shared_scratch, REPORT_APP, app_args=("3",))

    row, log = finished(testcluster, job)

    assert row["State"] == "FAILED", log
    assert row["ExitCode"] == "3:0", log
    assert run.read_exit_code() == 3
    assert "Traceback" not in log


def test_missing_interface_is_named_in_the_job_log_with_the_nodes_interfaces(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    job, _run = submit_bootstrap(
        testcluster, shared_scratch, REPORT_APP, options=("--interface", "ib7")
    )

    row, log = finished(testcluster, job)

    assert row["State"] == "FAILED", log
    assert row["ExitCode"] == "2:0", log
    lines = [line for line in log.splitlines() if "requested interface ib7" in line]
    assert len(lines) == 1, log
    assert "'ib7' not found" in lines[0]
    assert "eth0 10.77." in lines[0]
    assert "ib0 10.78." in lines[0]
    assert "REPORT" not in log


def test_plain_srun_without_mpi_is_named_in_the_job_log(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    job, _run = submit_bootstrap(testcluster, shared_scratch, REPORT_APP, launcher=("srun",))

    row, log = finished(testcluster, job)

    warnings = [line for line in log.splitlines() if "MPI world of 1" in line]
    assert len(warnings) == 1, log
    assert "srun --mpi=pmi2" in warnings[0]
    # Ranks fall back to SLURM_PROCID and the run directory, so the app still runs.
    assert row["State"] == "COMPLETED", log
    assert report_in(log)["sum"] == sum(range(1_000_000))


def test_world_too_small_is_named_in_the_job_log(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    job, _run = submit_bootstrap(
        testcluster,
        shared_scratch,
        REPORT_APP,
        sbatch=("--nodes=2", "--ntasks=2", "--cpus-per-task=1", "--mem-per-cpu=500M"),
    )

    row, log = finished(testcluster, job)

    assert row["ExitCode"] == "2:0", log
    lines = [line for line in log.splitlines() if "needs at least 3 ranks" in line]
    assert len(lines) == 1, log
    assert "--client-on-scheduler-rank" in lines[0]


def test_bootstrap_run_in_the_batch_script_itself_names_srun(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    job, _run = submit_bootstrap(testcluster, shared_scratch, REPORT_APP, launcher=())

    row, log = finished(testcluster, job)

    assert row["ExitCode"] == "2:0", log
    assert "launch it with srun --mpi=pmi2" in log


def test_client_on_scheduler_rank_runs_on_two_ranks(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    job, _run = submit_bootstrap(
        testcluster,
        shared_scratch,
        REPORT_APP,
        options=("--client-on-scheduler-rank",),
        sbatch=("--nodes=2", "--ntasks=2", "--cpus-per-task=1", "--mem-per-cpu=500M"),
    )

    row, log = finished(testcluster, job)

    assert row["State"] == "COMPLETED", log
    report = report_in(log)
    assert len(report["workers"]) == 1


def test_killing_a_worker_rank_mid_computation_does_not_abort_the_run(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    app = """\
    import os, signal, time
    from distributed import Client

    def slow(i):
        time.sleep(0.5)
        return i

    async def kill_my_rank():
        os.kill(os.getppid(), signal.SIGKILL)  # the rank process (the nanny)

    with Client() as client:
        futures = client.map(slow, range(40))
        while sum(f.done() for f in futures) < 4:
            time.sleep(0.05)
        victim = sorted(client.scheduler_info()["workers"])[0]
        # wait=False: the victim dies before it could answer, so there is no reply.
        client.run(kill_my_rank, workers=[victim], wait=False)
        deadline = time.monotonic() + 60
        while victim in client.scheduler_info()["workers"]:
            assert time.monotonic() < deadline, "the victim never left the scheduler"
            time.sleep(0.1)
        print("killed and gone", victim, flush=True)
        print("total", sum(client.gather(futures)), flush=True)
    """
    job, _run = submit_bootstrap(testcluster, shared_scratch, app)

    row, log = finished(testcluster, job)

    # The kill really happened: the scheduler saw the victim leave mid-computation.
    assert "killed and gone" in log, log
    assert f"total {sum(range(40))}" in log
    assert "MPI_Abort" not in log
    # srun reports the task killed by SIGKILL, so the job is FAILED; a COMPLETED job
    # would mean no rank was killed. The app still finished (the total above).
    assert row["State"] == "FAILED", log


def test_a_dead_scheduler_rank_ends_the_job_within_the_death_timeout(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    app = """\
    import os, signal, time
    from distributed import Client

    async def die():
        os.kill(os.getpid(), signal.SIGKILL)

    with Client() as client:
        try:
            client.run_on_scheduler(die, wait=False)
        except Exception:
            pass
        print("scheduler killed", flush=True)
        time.sleep(600)  # only the bootstrap can end this
    """
    job, _run = submit_bootstrap(testcluster, shared_scratch, app)

    row, log = finished(testcluster, job)

    assert "scheduler killed" in log
    assert "unreachable for 30 s" in log
    assert row["State"] == "FAILED", log  # ended by the bootstrap, not by the walltime


def test_sigusr1_from_slurm_reaches_the_apps_drain_hook(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    app = """\
    from distributed import Client
    from jobstrap.bootstrap import drain_reason, on_drain, wait_for_drain

    on_drain(lambda: print("drain callback ran", flush=True))
    with Client() as client:
        print("waiting for drain", flush=True)
        heard = wait_for_drain(240)
    print("drain heard", heard, drain_reason(), flush=True)
    """
    job, run = submit_bootstrap(testcluster, shared_scratch, app)
    testcluster.wait_for(lambda: "waiting for drain" in job.read_output(), JOB_TIMEOUT, "the app")

    testcluster.on(testcluster.login_host, ["scancel", "--signal=USR1", job.job_id], check=True)
    row, log = finished(testcluster, job)

    assert "drain heard True SIGUSR1" in log
    assert "drain callback ran" in log
    assert run.drain_file.read_text().startswith("SIGUSR1")
    assert row["State"] == "COMPLETED", log
    assert "Traceback" not in log


def test_a_dask_mpi_script_runs_with_jobstrap_mpi_over_ib0(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    script = shared_scratch / "dask_mpi_script.py"
    script.write_text(
        textwrap.dedent(
            """\
            from jobstrap.mpi import initialize   # was: from dask_mpi import initialize
            initialize(protocol="tls")

            # dask-mpi's documented layout: initialize() first, then the client code.
            import json, sys
            from distributed import Client
            import dask.array as da

            client = Client()
            info = client.scheduler_info()
            total = int(da.arange(1_000_000, chunks=100_000).sum().compute())
            print("REPORT " + json.dumps({
                "scheduler": info["address"],
                "workers": {a: w["host"] for a, w in info["workers"].items()},
                "sum": total,
            }), flush=True)
            sys.exit(3)
            """
        )
    )
    body = shlex.join(["srun", "--mpi=pmi2", str(testcluster.python), str(script)]) + "\n"
    job = testcluster.sbatch(body, shared_scratch, "--time=00:05:00", *THREE_NODES)

    row, log = finished(testcluster, job)

    assert row["ExitCode"] == "3:0", log
    report = report_in(log)
    ib0 = set(testcluster.ib0_addresses.values())
    assert report["scheduler"].startswith("tls://")
    assert host_of(report["scheduler"]) in ib0
    assert set(report["workers"].values()) <= ib0
    assert report["sum"] == sum(range(1_000_000))
    assert "Traceback" not in log
    assert "CommClosedError" not in log


LINKS_APP = """\
import json, os
from distributed import Client

def links(dask_worker):
    pool = dask_worker.rpc
    seen = {}
    for table in (pool.available, pool.occupied):
        for address, comms in table.items():
            seen.setdefault(address, []).extend(type(c).__name__ for c in comms)
    return seen

with Client() as client:
    names = {str(w["name"]): a for a, w in client.scheduler_info()["workers"].items()}
    # Made on worker 3, each pulled by one worker: on the same node (4), on the other (2).
    sizes = []
    for n in ("4", "2"):
        data = client.submit(os.urandom, 4 * 2**20, workers=[names["3"]], pure=False)
        sizes.append(client.submit(len, data, workers=[names[n]]).result())
    print("REPORT " + json.dumps({
        "names": names,
        "links": {n: client.run(links, workers=[a])[a] for n, a in names.items()},
        "client": type(client.scheduler_comm.comm).__name__,
        "sizes": sizes,
    }), flush=True)
"""


def test_same_node_ranks_talk_over_unix_sockets_and_other_nodes_over_tls(
    testcluster: TestCluster, shared_scratch: Path
) -> None:
    job, _run = submit_bootstrap(
        testcluster, shared_scratch, LINKS_APP, sbatch=TWO_NODES_THREE_RANKS
    )

    row, log = finished(testcluster, job)

    assert row["State"] == "COMPLETED", log
    report = report_in(log)
    assert report["sizes"] == [4 * 2**20] * 2
    names, links = report["names"], report["links"]
    # Every address stays tls://: peers without the backend could still connect.
    assert all(address.startswith("tls://") for address in names.values())
    assert set(links["4"][names["3"]]) == {"SameHostComm"}, links  # same node
    assert set(links["2"][names["3"]]) == {"TLS"}, links  # across the network
    assert report["client"] == "SameHostComm"  # the client is on the scheduler's node
    assert "Traceback" not in log
