"""The in-job bootstrap on this machine: the venv's real mpiexec, real distributed.

Each test launches ``python -m jobstrap.bootstrap`` the way a job script does and
runs a small real app on the client rank. Where MPICH's mpiexec itself would get in
the way (it tears the whole launch down when any rank dies of a signal, whatever
the application does), the "ranks" are plain processes given Slurm's rank
variables, which is also how plain ``srun`` without ``--mpi`` starts them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from jobstrap.net.security import create_tls
from jobstrap.store.rundir import RunDir
from support import wait_until

VENV_BIN = Path(sys.executable).parent
MPIEXEC = VENV_BIN / "mpiexec"
LAUNCH_TIMEOUT = 240

pytestmark = pytest.mark.skipif(not MPIEXEC.exists(), reason="the venv has no mpiexec (mpich)")


# ------------------------------------------------------------------------------ helpers


@dataclass
class Launch:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    run = RunDir.create(tmp_path / "runs", "run")
    create_tls(run)
    return run


def write_app(tmp_path: Path, source: str, name: str = "app.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def bootstrap_argv(run: RunDir, *options: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "jobstrap.bootstrap",
        "--run-dir",
        str(run),
        "--death-timeout",
        "20",
        *options,
    ]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMI", "DASK_"))}
    env.update(extra)
    return env


def mpiexec(
    n: int, argv: Sequence[str], *, env: dict[str, str] | None = None, binding: str | None = None
) -> Launch:
    bind = ["-bind-to", binding] if binding else []
    result = subprocess.run(
        [str(MPIEXEC), *bind, "-n", str(n), *argv],
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT,
        env=env or clean_env(),
    )
    return Launch(result.returncode, result.stdout, result.stderr)


def plain_ranks(
    n: int, argv: Sequence[str], *, env: dict[str, str] | None = None
) -> list[subprocess.Popen[str]]:
    """Start ``n`` plain processes with Slurm's rank variables, as plain srun would."""
    procs = []
    for rank in range(n):
        rank_env = clean_env(
            SLURM_PROCID=str(rank), SLURM_NTASKS=str(n), SLURM_STEP_ID="0", **(env or {})
        )
        procs.append(
            subprocess.Popen(
                list(argv),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=rank_env,
                start_new_session=True,
            )
        )
    return procs


def finish(procs: Sequence[subprocess.Popen[str]], timeout: float = LAUNCH_TIMEOUT) -> list[Launch]:
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            results.append(Launch(proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    return results


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``signum`` (SigCgt)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    return False


def assert_quiet(launch: Launch) -> None:
    assert "Traceback" not in launch.stderr, launch.stderr
    assert "CommClosedError" not in launch.stderr, launch.stderr
    assert "BAD TERMINATION" not in launch.output, launch.output


COMPUTE_APP = """\
import sys
import dask.array as da
from distributed import Client

with Client() as client:
    workers = client.scheduler_info()["workers"]
    x = da.arange(1_000_000, chunks=100_000)
    print("workers", len(workers), "sum", int(x.sum().compute()), flush=True)
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
"""

EXPECTED_SUM = sum(range(1_000_000))


# -------------------------------------------------------------------------- the happy path


def test_app_computes_on_the_workers_and_the_launch_exits_zero(run: RunDir, tmp_path: Path) -> None:
    app = write_app(tmp_path, COMPUTE_APP)

    launch = mpiexec(4, [*bootstrap_argv(run), "--", str(app)])

    assert launch.returncode == 0, launch.output
    assert f"workers 2 sum {EXPECTED_SUM}" in launch.stdout
    assert_quiet(launch)


def test_app_exit_code_3_is_the_launch_exit_code(run: RunDir, tmp_path: Path) -> None:
    app = write_app(tmp_path, COMPUTE_APP)

    launch = mpiexec(3, [*bootstrap_argv(run), "--", str(app), "3"])

    assert launch.returncode == 3, launch.output
    assert run.read_exit_code() == 3
    assert_quiet(launch)


def test_app_runs_as_a_module_with_its_arguments(run: RunDir, tmp_path: Path) -> None:
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "main.py").write_text(
        "import sys\nif __name__ == '__main__':\n    print('argv', sys.argv[1:])\n"
    )
    env = clean_env(PYTHONPATH=str(tmp_path))

    launch = mpiexec(3, [*bootstrap_argv(run), "--", "-m", "mypkg.main", "a", "b"], env=env)

    assert launch.returncode == 0, launch.output
    assert "argv ['a', 'b']" in launch.stdout


def test_raising_app_leaves_its_traceback_and_fails(run: RunDir, tmp_path: Path) -> None:
    app = write_app(
        tmp_path,
        """\
        from distributed import Client

        def inner():
            raise ValueError("boom from the app")

        with Client() as client:
            client.submit(sum, [1, 2]).result()
            inner()
        """,
    )

    launch = mpiexec(3, [*bootstrap_argv(run), "--", str(app)])

    assert launch.returncode == 1, launch.output
    assert "ValueError: boom from the app" in launch.stderr
    traceback = launch.stderr[launch.stderr.index("Traceback") :]
    first_frame = traceback.splitlines()[1]
    assert str(app) in first_frame  # starts in the app, like `python app.py`
    assert "runpy" not in traceback
    assert "CommClosedError" not in launch.stderr


def test_client_on_scheduler_rank_needs_only_two_ranks(run: RunDir, tmp_path: Path) -> None:
    app = write_app(tmp_path, COMPUTE_APP)

    launch = mpiexec(2, [*bootstrap_argv(run, "--client-on-scheduler-rank"), "--", str(app), "4"])

    assert launch.returncode == 4, launch.output
    assert f"workers 1 sum {EXPECTED_SUM}" in launch.stdout
    assert_quiet(launch)


def test_several_worker_processes_per_rank_all_join(run: RunDir, tmp_path: Path) -> None:
    app = write_app(tmp_path, COMPUTE_APP)

    launch = mpiexec(
        3, [*bootstrap_argv(run, "--worker-processes", "2", "--nthreads", "1"), "--", str(app)]
    )

    assert launch.returncode == 0, launch.output
    assert f"workers 2 sum {EXPECTED_SUM}" in launch.stdout


LAYOUT_APP = """\
import json, os, sys
import psutil
from distributed import Client

def where():
    return {"cpus": sorted(os.sched_getaffinity(0))}

with Client() as client:
    placed = client.run(where)
    for address, pid in client.run(os.getpid, nanny=True).items():
        placed[address]["nanny"] = pid
    names = {w["name"]: w["id"] for w in client.scheduler_info()["workers"].values()}
    me = psutil.Process()
    scheduler = client.run_on_scheduler(os.getpid)
    ranks = [p for p in psutil.Process(me.ppid()).children() if p.pid not in (me.pid, scheduler)]
    maps = {}
    for rank in ranks:
        with open(f"/proc/{rank.pid}/maps") as f:
            maps[rank.pid] = "msgpack" in f.read()
    print("LAYOUT " + json.dumps({
        "names": sorted(str(n) for n in names),
        "nannies": sorted({p["nanny"] for p in placed.values()}),
        "worker_cpus": [p["cpus"] for p in placed.values()],
        "ranks": sorted(r.pid for r in ranks),
        "rank_cpus": sorted({c for r in ranks for c in r.cpu_affinity()}),
        "dask_loaded": maps,
    }), flush=True)
"""


def layout_of(launch: Launch) -> dict[str, Any]:
    lines = [line for line in launch.stdout.splitlines() if line.startswith("LAYOUT ")]
    assert lines, launch.output
    layout: dict[str, Any] = json.loads(lines[-1].removeprefix("LAYOUT "))
    return layout


def test_the_node_layout_forks_every_local_worker_rank_s_worker_from_one_rank(
    run: RunDir, tmp_path: Path
) -> None:
    app = write_app(tmp_path, LAYOUT_APP)

    # Each rank bound to a core of its own, round robin, as a site's launcher may.
    launch = mpiexec(6, [*bootstrap_argv(run, "--nthreads", "1"), "--", str(app)], binding="core")

    assert launch.returncode == 0, launch.output
    assert_quiet(launch)
    layout = layout_of(launch)
    # Named after the ranks they stand for, as in the rank layout.
    assert layout["names"] == ["2", "3", "4", "5"]
    # One nanny process (rank 2) for all four workers; it and the workers import
    # Dask, ranks 3 to 5 stand by without it.
    assert len(layout["nannies"]) == 1
    nanny = layout["nannies"][0]
    assert nanny in layout["ranks"]
    loaded = {int(pid): flag for pid, flag in layout["dask_loaded"].items()}
    assert [pid for pid in layout["ranks"] if loaded[pid]] == [nanny], layout
    # The workers may use the CPUs of every rank they stand for, not just rank 2's.
    assert all(cpus == layout["rank_cpus"] for cpus in layout["worker_cpus"]), layout
    assert len(layout["rank_cpus"]) == min(4, len(os.sched_getaffinity(0))), layout


def test_the_rank_layout_runs_each_worker_under_its_own_rank(run: RunDir, tmp_path: Path) -> None:
    app = write_app(tmp_path, LAYOUT_APP)

    launch = mpiexec(
        5, [*bootstrap_argv(run, "--nthreads", "1", "--worker-layout", "rank"), "--", str(app)]
    )

    assert launch.returncode == 0, launch.output
    layout = layout_of(launch)
    assert layout["names"] == ["2", "3", "4"]
    assert len(layout["nannies"]) == 3
    assert set(layout["nannies"]) <= set(layout["ranks"])
    assert all(layout["dask_loaded"].values())


def test_without_nannies_the_workers_live_in_the_rank_processes(
    run: RunDir, tmp_path: Path
) -> None:
    parents = (
        "    parents = client.run(lambda: psutil.Process().parent().name())\n"
        "    print('parents', sorted(set(parents.values())))\n"
    )
    app = write_app(
        tmp_path,
        COMPUTE_APP.replace("    x = da.arange", parents + "    x = da.arange").replace(
            "import sys", "import sys\nimport psutil"
        ),
    )

    launch = mpiexec(4, [*bootstrap_argv(run, "--no-nanny"), "--", str(app)])

    assert launch.returncode == 0, launch.output
    assert f"workers 2 sum {EXPECTED_SUM}" in launch.stdout
    # Each worker is its rank: its parent is the MPI launcher's proxy, not a nanny.
    line = next(x for x in launch.stdout.splitlines() if x.startswith("parents"))
    assert "python" not in line, line
    assert_quiet(launch)


def test_an_app_can_start_at_once_and_outlive_the_wait_for_a_worker(
    run: RunDir, tmp_path: Path
) -> None:
    # Started before any worker, the app must not be stopped once the death timeout
    # has passed: a worker did join, late or not.
    late_exit = "import time; time.sleep(4); sys.exit("
    app = write_app(tmp_path, COMPUTE_APP.replace("sys.exit(", late_exit))
    argv = bootstrap_argv(run, "--death-timeout", "3", "--start-after-workers", "0")

    launch = mpiexec(3, [*argv, "--", str(app)])

    assert launch.returncode == 0, launch.output
    assert f"sum {EXPECTED_SUM}" in launch.stdout
    assert "no worker joined" not in launch.output


def test_an_app_started_at_once_is_stopped_when_no_worker_joins() -> None:
    # In a process of its own: a scheduler's shutdown quiets loggers for good.
    probe = textwrap.dedent(
        """
        from distributed import Security
        from jobstrap.engines.dask.link import SchedulerLink
        from jobstrap.engines.dask.scheduler import SchedulerRunner

        runner = SchedulerRunner(
            host="127.0.0.1", protocol="tcp", security=Security(), dashboard=False
        )
        runner.start()
        said = []
        link = SchedulerLink(runner.address, Security(), death_timeout=30, on_lost=said.append)
        link.start(heartbeat=False)
        link.expect_a_worker(1.0, "no worker joined (test)")
        print(link.lost.wait(30), said, link.lost_message)
        link.stop()
        runner.finish(0)
        runner.wait(30)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True ['no worker joined (test)'] no worker joined (test)"


def test_an_app_can_start_after_the_first_worker(run: RunDir, tmp_path: Path) -> None:
    app = write_app(tmp_path, COMPUTE_APP)

    launch = mpiexec(4, [*bootstrap_argv(run, "--start-after-workers", "1"), "--", str(app)])

    assert launch.returncode == 0, launch.output
    assert f"sum {EXPECTED_SUM}" in launch.stdout


# --------------------------------------------------------------------- clear failures


def test_world_too_small_says_so_once_and_names_the_fix(run: RunDir, tmp_path: Path) -> None:
    app = write_app(tmp_path, COMPUTE_APP)

    launch = mpiexec(2, [*bootstrap_argv(run), "--", str(app)])

    assert launch.returncode == 2
    lines = [line for line in launch.stderr.splitlines() if "needs at least 3 ranks" in line]
    assert len(lines) == 1, launch.stderr
    assert "mpiexec -n 3" in lines[0]
    assert "--client-on-scheduler-rank" in lines[0]


def test_a_lone_process_names_the_mpi_launcher_fix(run: RunDir, tmp_path: Path) -> None:
    app = write_app(tmp_path, COMPUTE_APP)

    result = subprocess.run(
        [*bootstrap_argv(run), "--", str(app)],
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT,
        env=clean_env(),
    )

    assert result.returncode == 2
    assert "has 1" in result.stderr
    assert "srun --mpi=pmi2" in result.stderr


def test_missing_interface_fails_fast_listing_this_nodes_interfaces(
    run: RunDir, tmp_path: Path
) -> None:
    app = write_app(tmp_path, COMPUTE_APP)

    launch = mpiexec(3, [*bootstrap_argv(run, "--interface", "ib0"), "--", str(app)])

    assert launch.returncode == 2
    lines = [line for line in launch.stderr.splitlines() if "requested interface ib0" in line]
    assert len(lines) == 1, launch.stderr  # the scheduler rank; the others stop quietly
    assert "'ib0' not found" in lines[0]
    assert "lo 127.0.0.1/8 (loopback)" in lines[0]


def test_missing_worker_interface_fails_every_rank_fast(run: RunDir, tmp_path: Path) -> None:
    app = write_app(tmp_path, COMPUTE_APP)

    argv = bootstrap_argv(
        run, "--interface", "ib0", "--scheduler-interface", "lo", "--worker-layout", "rank"
    )
    launch = mpiexec(4, [*argv, "--", str(app)])

    assert launch.returncode == 2
    # Once per worker rank (in the rank layout each runs its own workers).
    assert launch.stderr.count("requested interface ib0") == 2, launch.stderr
    assert "workers" not in launch.stdout


def test_missing_worker_interface_is_reported_once_per_node_in_the_node_layout(
    run: RunDir, tmp_path: Path
) -> None:
    app = write_app(tmp_path, COMPUTE_APP)

    launch = mpiexec(
        5,
        [*bootstrap_argv(run, "--interface", "ib0", "--scheduler-interface", "lo"), "--", str(app)],
    )

    assert launch.returncode == 2
    # Three worker ranks on this host: the first looks, the others stand by (two
    # would be grouped as well).
    assert launch.stderr.count("requested interface ib0") == 1, launch.stderr
    assert "workers" not in launch.stdout


def test_missing_tls_material_names_the_opt_out(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "runs", "no-tls")
    app = write_app(tmp_path, COMPUTE_APP)

    launch = mpiexec(3, [*bootstrap_argv(run), "--", str(app)])

    assert launch.returncode == 2
    assert launch.stderr.count("no TLS material") == 1, launch.stderr
    assert "protocol tcp" in launch.stderr


def test_missing_app_is_a_usage_error(run: RunDir) -> None:
    launch = mpiexec(3, bootstrap_argv(run))

    assert launch.returncode == 2
    assert launch.stderr.count("mpi mode needs an app") == 1, launch.stderr


# ------------------------------------------------------------------------ network, TLS

LISTENERS_APP = """\
import json, os
import psutil
from distributed import Client

def services(dask_scheduler):
    return {k: v.port for k, v in dask_scheduler.services.items()}

with Client() as client:
    info = client.scheduler_info()
    job = psutil.Process(os.getppid())  # the launcher (or a shell): ranks are its children
    pids = {p.pid for p in job.children(recursive=True)}
    listening = {}
    for c in psutil.net_connections(kind="inet"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids:
            listening.setdefault(str(c.pid), []).append(f"{c.laddr.ip}:{c.laddr.port}")
    print("REPORT", json.dumps({
        "scheduler": info["address"],
        "scheduler_pid": client.run_on_scheduler(os.getpid),
        "scheduler_services": client.run_on_scheduler(services),
        "workers": sorted(info["workers"]),
        "worker_pids": {a: p for a, p in client.run(os.getpid).items()},
        "worker_services": {a: s["services"] for a, s in info["workers"].items()},
        "nannies": sorted(s["nanny"] for s in info["workers"].values()),
        "listening": listening,
    }), flush=True)
"""


def report_of(launch: Launch) -> dict[str, Any]:
    line = next(line for line in launch.stdout.splitlines() if line.startswith("REPORT "))
    report = json.loads(line.removeprefix("REPORT "))
    assert isinstance(report, dict)
    return report


def hide_mpi4py(tmp_path: Path) -> dict[str, str]:
    """Environment in which ``import mpi4py`` fails, so no MPI library opens sockets."""
    shadow = tmp_path / "no-mpi" / "mpi4py"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('mpi4py hidden for this test')\n")
    return {"PYTHONPATH": str(shadow.parent)}


def test_no_dashboard_binds_no_port_8787_and_serves_no_http(run: RunDir, tmp_path: Path) -> None:
    app = write_app(tmp_path, LISTENERS_APP)

    launch = mpiexec(4, [*bootstrap_argv(run, "--no-dashboard"), "--", str(app)])

    assert launch.returncode == 0, launch.output
    report = report_of(launch)
    every = [a for addresses in report["listening"].values() for a in addresses]
    assert not [a for a in every if a.endswith(":8787")], every
    assert not report["scheduler_services"], report
    assert all(not services for services in report["worker_services"].values()), report
    # Worker processes have no MPI inside: their only listener is the Dask comm.
    for address, pid in report["worker_pids"].items():
        assert report["listening"][str(pid)] == [address.removeprefix("tls://")]


def test_no_dashboard_job_listens_on_the_dask_comms_only(run: RunDir, tmp_path: Path) -> None:
    # Without MPI (plain ranks, mpi4py hidden) every listening socket is Dask's.
    app = write_app(tmp_path, LISTENERS_APP)
    env = hide_mpi4py(tmp_path)

    results = finish(
        plain_ranks(4, [*bootstrap_argv(run, "--no-dashboard"), "--", str(app)], env=env)
    )

    assert [r.returncode for r in results] == [0, 0, 0, 0], [r.output for r in results]
    report = report_of(results[1])
    every = sorted(a for addresses in report["listening"].values() for a in addresses)
    expected = sorted(
        a.removeprefix("tls://")
        for a in [report["scheduler"], *report["workers"], *report["nannies"]]
    )
    assert every == expected


def _an_interface() -> str:
    """A non-loopback interface with an IPv4 address that is up (skip without one)."""
    import socket as sockets

    import psutil

    stats = psutil.net_if_stats()
    for name, entries in psutil.net_if_addrs().items():
        up = name in stats and stats[name].isup
        if up and any(
            e.family == sockets.AF_INET and not e.address.startswith("127.") for e in entries
        ):
            return name
    pytest.skip("this machine has no non-loopback IPv4 interface that is up")


def test_dashboard_binds_the_node_s_loopback_not_the_scheduler_s_interface(
    run: RunDir, tmp_path: Path
) -> None:
    app = write_app(tmp_path, LISTENERS_APP)

    launch = mpiexec(3, [*bootstrap_argv(run, "--interface", _an_interface()), "--", str(app)])

    assert launch.returncode == 0, launch.output
    report = report_of(launch)
    host = str(report["scheduler"]).removeprefix("tls://").rsplit(":", 1)[0]
    assert not host.startswith("127.")
    port = report["scheduler_services"]["dashboard"]
    listening = report["listening"][str(report["scheduler_pid"])]
    assert f"127.0.0.1:{port}" in listening
    assert f"{host}:{port}" not in listening
    assert run.read_info().dashboard_address == f"http://127.0.0.1:{port}/status"


def test_dashboard_binds_the_scheduler_s_interface_when_asked(run: RunDir, tmp_path: Path) -> None:
    app = write_app(tmp_path, LISTENERS_APP)
    options = ("--interface", _an_interface(), "--dashboard-bind", "interface")

    launch = mpiexec(3, [*bootstrap_argv(run, *options), "--", str(app)])

    assert launch.returncode == 0, launch.output
    report = report_of(launch)
    host = str(report["scheduler"]).removeprefix("tls://").rsplit(":", 1)[0]
    port = report["scheduler_services"]["dashboard"]
    assert f"{host}:{port}" in report["listening"][str(report["scheduler_pid"])]
    assert run.read_info().dashboard_address == f"http://{host}:{port}/status"
    assert "dashboard_bind interface" in launch.output


def test_explicit_interface_is_used_by_scheduler_and_workers(run: RunDir, tmp_path: Path) -> None:
    app = write_app(tmp_path, LISTENERS_APP)

    launch = mpiexec(3, [*bootstrap_argv(run, "--interface", "lo"), "--", str(app)])

    assert launch.returncode == 0, launch.output
    report = report_of(launch)
    assert str(report["scheduler"]).startswith("tls://127.0.0.1:")
    workers = report["workers"]
    assert isinstance(workers, list)
    assert workers
    assert all(w.startswith("tls://127.0.0.1:") for w in workers)


def test_tls_is_required_and_a_client_without_certificates_is_refused(
    run: RunDir, tmp_path: Path
) -> None:
    app = write_app(
        tmp_path,
        """\
        import os, ssl, socket
        from distributed import Client

        with Client() as client:
            address = client.scheduler.address
            print("scheme", address.split("://")[0], flush=True)
        host, port = address.split("://")[1].rsplit(":", 1)
        ca = os.environ["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"]
        context = ssl.create_default_context(cafile=ca)
        context.check_hostname = False
        try:
            with socket.create_connection((host, int(port)), timeout=10) as raw:
                with context.wrap_socket(raw) as tls:
                    tls.sendall(b"\\0" * 8)
                    data = tls.recv(1)
            print("certless", "refused" if not data else "answered", flush=True)
        except (ssl.SSLError, ConnectionError) as error:
            print("certless", "refused", type(error).__name__, flush=True)
        """,
    )

    launch = mpiexec(3, [*bootstrap_argv(run), "--", str(app)])

    assert launch.returncode == 0, launch.output
    assert "scheme tls" in launch.stdout
    assert "certless refused" in launch.stdout
    assert run.read_info().scheduler_address.startswith("tls://")


def test_protocol_tcp_is_the_explicit_opt_out(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "runs", "tcp")
    app = write_app(tmp_path, COMPUTE_APP)

    launch = mpiexec(3, [*bootstrap_argv(run, "--protocol", "tcp"), "--", str(app)])

    assert launch.returncode == 0, launch.output
    assert run.read_info().scheduler_address.startswith("tcp://")


def test_run_dir_files_are_private(run: RunDir, tmp_path: Path) -> None:
    app = write_app(tmp_path, COMPUTE_APP)

    launch = mpiexec(3, [*bootstrap_argv(run), "--", str(app)])

    assert launch.returncode == 0, launch.output
    for path in (run.info_file, run.scheduler_file, run.exit_code_file):
        assert oct(path.stat().st_mode & 0o777) == oct(0o600), path
    info = json.loads(run.info_file.read_text())
    assert {"scheduler_address", "dashboard_address", "host", "job_id", "started", "pid"} <= set(
        info
    )
    assert json.loads(run.scheduler_file.read_text())["address"] == info["scheduler_address"]


# ------------------------------------------------------------------------------ faults

KILL_WORKER_APP = """\
import os, signal, time
from distributed import Client, wait

def slow(i):
    import time
    time.sleep(0.5)
    return i

with Client() as client:
    targets = client.run({target})  # worker address -> pid to kill
    futures = client.map(slow, range(40))
    while sum(f.done() for f in futures) < 4:
        time.sleep(0.05)
    victim_address, victim = sorted(targets.items())[0]
    os.kill(victim, signal.SIGKILL)
    print("killed", victim, flush=True)
    total = sum(client.gather(futures))
    print("total", total, flush=True)
"""


def test_killing_a_worker_process_mid_computation_still_completes(
    run: RunDir, tmp_path: Path
) -> None:
    # The Dask worker process of one rank dies (as under the OOM killer); the rank
    # itself lives on. (MPICH's mpiexec tears down every rank when one rank process
    # dies of a signal, so whole-rank death is tested with plain processes below.)
    app = write_app(tmp_path, KILL_WORKER_APP.format(target="os.getpid"))

    launch = mpiexec(4, [*bootstrap_argv(run, "--nthreads", "2"), "--", str(app)])

    assert launch.returncode == 0, launch.output
    assert "killed" in launch.stdout
    assert f"total {sum(range(40))}" in launch.stdout


def test_killing_a_whole_worker_rank_mid_computation_still_completes(
    run: RunDir, tmp_path: Path
) -> None:
    app = write_app(tmp_path, KILL_WORKER_APP.format(target="os.getppid"))

    procs = plain_ranks(4, [*bootstrap_argv(run, "--nthreads", "2"), "--", str(app)])
    results = finish(procs)

    scheduler, client, *workers = results
    assert client.returncode == 0, client.output
    assert "killed" in client.stdout
    assert f"total {sum(range(40))}" in client.stdout
    assert scheduler.returncode == 0, scheduler.output
    assert sorted(w.returncode for w in workers) == [-signal.SIGKILL, 0]


def test_plain_processes_that_each_see_an_mpi_world_of_one_are_named_and_still_run(
    run: RunDir, tmp_path: Path
) -> None:
    app = write_app(tmp_path, COMPUTE_APP)

    results = finish(plain_ranks(4, [*bootstrap_argv(run), "--", str(app), "5"]))

    warnings = [
        line
        for r in results
        for line in r.stderr.splitlines()
        if "every rank sees an MPI world of 1" in line
    ]
    assert len(warnings) == 1, [r.stderr for r in results]
    assert "SLURM_PROCID" in warnings[0]
    assert "srun --mpi=pmi2" in warnings[0]
    assert f"workers 2 sum {EXPECTED_SUM}" in results[1].stdout
    assert [r.returncode for r in results] == [5, 5, 0, 0]


def test_a_dead_client_rank_stops_the_run(run: RunDir, tmp_path: Path) -> None:
    marker = tmp_path / "client-started"
    app = write_app(
        tmp_path,
        f"""\
        import os, signal, time
        from pathlib import Path
        Path({str(marker)!r}).write_text(str(os.getpid()))
        time.sleep(600)
        """,
    )
    procs = plain_ranks(3, [*bootstrap_argv(run), "--death-timeout", "5", "--", str(app)])
    try:
        wait_until(marker.exists, 120, "the app to start")
        os.kill(int(marker.read_text()), signal.SIGKILL)
    finally:
        results = finish(procs, timeout=120)

    scheduler, _client, worker = results
    assert scheduler.returncode == 1, scheduler.output
    assert "the client rank has not responded for" in scheduler.stderr
    assert worker.returncode == 0, worker.output
    assert "Traceback" not in scheduler.stderr + worker.stderr


def test_a_dead_scheduler_rank_ends_every_other_rank(run: RunDir, tmp_path: Path) -> None:
    marker = tmp_path / "client-started"
    app = write_app(
        tmp_path,
        f"""\
        import time
        from pathlib import Path
        Path({str(marker)!r}).write_text("up")
        time.sleep(600)
        """,
    )
    procs = plain_ranks(3, [*bootstrap_argv(run), "--death-timeout", "5", "--", str(app)])
    try:
        wait_until(marker.exists, 120, "the app to start")
        os.kill(procs[0].pid, signal.SIGKILL)
        # Within the death timeout plus polling slack, every other rank is gone.
        wait_until(
            lambda: all(p.poll() is not None for p in procs[1:]),
            60,
            "the client and worker ranks to exit",
        )
    finally:
        results = finish(procs, timeout=60)

    _scheduler, client, worker = results
    assert client.returncode == 1, client.output
    assert "unreachable" in client.stderr
    assert worker.returncode in (0, 1), worker.output


def test_sigterm_tells_the_app_and_retires_a_worker_gracefully(run: RunDir, tmp_path: Path) -> None:
    app = write_app(
        tmp_path,
        """\
        import os, signal, time
        from distributed import Client
        from jobstrap.bootstrap import draining, on_drain, wait_for_drain, drain_file

        heard = []
        on_drain(lambda: heard.append("callback"))

        with Client() as client:
            ranks = client.run(os.getppid)  # worker address -> its rank's pid
            address, pid = sorted(ranks.items())[0]
            data = client.scatter(list(range(10)), workers=[address])
            os.kill(pid, signal.SIGTERM)  # the batch system drains one worker rank
            deadline = time.monotonic() + 60
            while address in client.scheduler_info()["workers"] and time.monotonic() < deadline:
                time.sleep(0.1)
            print("retired", address not in client.scheduler_info()["workers"], flush=True)
            print("data kept", client.gather(data) == list(range(10)), flush=True)

            os.kill(os.getpid(), signal.SIGTERM)  # and the client rank is told
            print("told", wait_for_drain(30), draining(), drain_file().exists(), flush=True)
            time.sleep(0.5)
            print("callbacks", heard, flush=True)
        """,
    )

    # One worker rank drains while another on this host keeps the data: a process
    # per worker rank (in the node layout the node's workers drain together).
    launch = mpiexec(4, [*bootstrap_argv(run, "--worker-layout", "rank"), "--", str(app)])

    assert launch.returncode == 0, launch.output
    assert "retired True" in launch.stdout
    assert "data kept True" in launch.stdout
    assert "told True True True" in launch.stdout
    assert "callbacks ['callback']" in launch.stdout
    assert run.drain_file.read_text().startswith("SIGTERM")


# ------------------------------------------------------------------- workers / scheduler


def test_scheduler_mode_publishes_info_and_stops_on_sigterm(run: RunDir) -> None:
    proc = subprocess.Popen(
        [*bootstrap_argv(run, "--mode", "scheduler", "--no-dashboard")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        wait_until(run.info_file.exists, 120, "info.json")
        info = run.read_info()
        proc.send_signal(signal.SIGUSR1)  # a walltime warning does not stop it
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == 0, err
    assert info.scheduler_address.startswith("tls://")
    assert info.dashboard_address is None
    assert info.pid == proc.pid
    assert "Traceback" not in err


def test_workers_mode_joins_the_scheduler_from_info_json_and_ends_with_it(
    run: RunDir, tmp_path: Path
) -> None:
    scheduler = subprocess.Popen(
        bootstrap_argv(run, "--mode", "scheduler"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    workers = subprocess.Popen(
        [*bootstrap_argv(run, "--mode", "workers", "--worker-processes", "2", "--name", "job7")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    check = write_app(
        tmp_path,
        """\
        import sys, time
        from distributed import Client
        from jobstrap.net.security import load_security
        from jobstrap.store.rundir import RunDir
        run = RunDir(sys.argv[1])
        with Client(run.read_info().scheduler_address, security=load_security(run)) as c:
            c.wait_for_workers(2, timeout=120)
            names = sorted(w["name"] for w in c.scheduler_info()["workers"].values())
            print("names", names, flush=True)
            c.shutdown()
        """,
        name="check.py",
    )
    try:
        wait_until(run.info_file.exists, 120, "info.json")
        result = subprocess.run(
            [sys.executable, str(check), str(run)],
            capture_output=True,
            text=True,
            timeout=180,
            env=clean_env(),
        )
        _, w_err = workers.communicate(timeout=120)
        _, s_err = scheduler.communicate(timeout=120)
    finally:
        for proc in (scheduler, workers):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    assert result.returncode == 0, result.stderr
    assert "names ['job7-0', 'job7-1']" in result.stdout
    assert workers.returncode == 0, w_err
    assert scheduler.returncode == 0, s_err


# ------------------------------------------------------------- dask-mpi compatibility

DASK_MPI_SCRIPT = """\
import sys
from jobstrap.mpi import initialize
from distributed import Client
import dask.array as da

if sys.argv[1] == "default":
    initialize(dashboard=False)
else:
    initialize(protocol=sys.argv[1], dashboard=False)
client = Client()
print("scheduler", client.scheduler.address, flush=True)
print("workers", len(client.scheduler_info()["workers"]), flush=True)
print("sum", int(da.arange(1_000_000, chunks=100_000).sum().compute()), flush=True)
sys.exit(int(sys.argv[2]))
"""


@pytest.mark.parametrize("protocol", ["tcp", "tls"])
def test_a_dask_mpi_script_runs_unchanged_but_for_the_import(tmp_path: Path, protocol: str) -> None:
    script = write_app(tmp_path, DASK_MPI_SCRIPT)

    launch = mpiexec(4, [sys.executable, str(script), protocol, "0"])

    assert launch.returncode == 0, launch.output
    assert f"scheduler {protocol}://" in launch.stdout
    assert "workers 2" in launch.stdout
    assert f"sum {EXPECTED_SUM}" in launch.stdout
    assert_quiet(launch)


def test_a_dask_mpi_script_gets_tls_by_default_and_a_warning_when_it_opts_out(
    tmp_path: Path,
) -> None:
    script = write_app(tmp_path, DASK_MPI_SCRIPT)

    default = mpiexec(4, [sys.executable, str(script), "default", "0"])
    plain = mpiexec(4, [sys.executable, str(script), "tcp", "0"])

    assert default.returncode == 0, default.output
    assert "scheduler tls://" in default.stdout
    assert "TLS is off" not in default.output
    assert plain.returncode == 0, plain.output
    assert plain.output.count("TLS is off") == 1, plain.output


def test_a_dask_mpi_scripts_exit_code_is_the_launch_exit_code(tmp_path: Path) -> None:
    script = write_app(tmp_path, DASK_MPI_SCRIPT)

    launch = mpiexec(3, [sys.executable, str(script), "tcp", "3"])

    assert launch.returncode == 3, launch.output
    assert_quiet(launch)


def test_initialize_in_a_world_too_small_raises_dask_mpis_exception(tmp_path: Path) -> None:
    script = write_app(
        tmp_path,
        """\
        from jobstrap.mpi import WorldTooSmallException, initialize
        try:
            initialize()
        except WorldTooSmallException as error:
            print(f"refused: {error}", flush=True)
        """,
    )

    launch = mpiexec(2, [sys.executable, str(script)])

    assert launch.returncode == 0, launch.output
    # Both ranks refuse (their lines may interleave, so count the message).
    assert launch.stdout.count("not enough MPI ranks: found 2, need at least 3") == 2


def test_the_batch_app_example_runs_in_batch_mode(run: RunDir) -> None:
    example = Path(__file__).resolve().parents[3] / "examples" / "batch_app.py"

    launch = mpiexec(4, [*bootstrap_argv(run), "--", str(example), "400"])

    assert launch.returncode == 0, launch.output
    assert "2 workers:" in launch.stdout
    assert "mean of diag(X X^T) for n=400" in launch.stdout
    assert_quiet(launch)


def test_ctrl_c_under_mpiexec_stops_the_run_in_order_with_130(run: RunDir, tmp_path: Path) -> None:
    app = write_app(
        tmp_path,
        """\
        import time
        from distributed import Client
        with Client() as client:
            print("running", flush=True)
            time.sleep(600)
        """,
    )
    proc = subprocess.Popen(
        [str(MPIEXEC), "-n", "4", *bootstrap_argv(run), "--", str(app)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # blocks until the app runs (or the launch died)
        proc.send_signal(signal.SIGINT)  # mpiexec passes Ctrl-C to every process
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert first.strip() == "running", err
    assert proc.returncode == 130, out + err
    # The app's own KeyboardInterrupt, as `python app.py` would show it; nothing else.
    assert err.count("Traceback") == 1, err
    assert "KeyboardInterrupt" in err
    assert "CommClosedError" not in err


def test_scheduler_mode_stops_by_itself_after_the_idle_timeout(run: RunDir) -> None:
    result = subprocess.run(
        bootstrap_argv(run, "--mode", "scheduler", "--no-dashboard", "--idle-timeout", "2"),
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )

    assert result.returncode == 0, result.stderr
    assert run.read_info().scheduler_address.startswith("tls://")
    assert "Traceback" not in result.stderr


def test_workers_mode_lifetime_retires_the_workers_and_ends_the_rank(run: RunDir) -> None:
    scheduler = subprocess.Popen(
        bootstrap_argv(run, "--mode", "scheduler", "--no-dashboard"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        wait_until(run.info_file.exists, 120, "info.json")
        workers = subprocess.run(
            bootstrap_argv(run, "--mode", "workers", "--lifetime", "3"),
            capture_output=True,
            text=True,
            timeout=120,
            env=clean_env(),
        )
    finally:
        scheduler.send_signal(signal.SIGTERM)
        scheduler.communicate(timeout=60)

    assert workers.returncode == 0, workers.stderr
    assert "lifetime" in workers.stderr.lower()
    assert "Traceback" not in workers.stderr


def test_a_drain_file_left_by_an_earlier_launch_is_not_a_drain(run: RunDir, tmp_path: Path) -> None:
    run.drain_file.write_text("SIGTERM 0\n")  # as a requeued job would find it
    app = write_app(
        tmp_path,
        "from jobstrap.bootstrap import draining\nprint('draining', draining(), flush=True)\n",
    )

    launch = mpiexec(3, [*bootstrap_argv(run), "--", str(app)])

    assert launch.returncode == 0, launch.output
    assert "draining False" in launch.stdout


def test_sigusr1_to_every_process_of_a_worker_rank_drains_it_without_tracebacks(
    run: RunDir,
) -> None:
    # Slurm signals every process of a step: the rank, its worker processes and
    # multiprocessing's helper processes alike.
    scheduler = subprocess.Popen(
        bootstrap_argv(run, "--mode", "scheduler", "--no-dashboard"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    workers = None
    try:
        wait_until(run.info_file.exists, 120, "info.json")
        log = run.path / "workers.err"
        with log.open("w") as sink:
            workers = subprocess.Popen(
                bootstrap_argv(run, "--mode", "workers", "--worker-processes", "2"),
                stdout=subprocess.DEVNULL,
                stderr=sink,
                text=True,
                env=clean_env(),
                start_new_session=True,
            )
        wait_until(lambda: "joined" in log.read_text(), 120, "the workers to join")
        os.killpg(workers.pid, signal.SIGUSR1)
        workers.communicate(timeout=120)
        err = log.read_text()
    finally:
        if workers is not None and workers.poll() is None:
            os.killpg(workers.pid, signal.SIGKILL)
            workers.communicate()
        scheduler.send_signal(signal.SIGTERM)
        scheduler.communicate(timeout=60)

    assert workers.returncode == 0, err
    assert "SIGUSR1: retiring" in err
    assert "Traceback" not in err
    assert "died unexpectedly" not in err


def test_workers_jobs_with_several_ranks_give_each_rank_its_own_names(run: RunDir) -> None:
    scheduler = subprocess.Popen(
        bootstrap_argv(run, "--mode", "scheduler", "--no-dashboard"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    ranks: list[subprocess.Popen[str]] = []
    try:
        wait_until(run.info_file.exists, 120, "info.json")
        ranks = plain_ranks(2, bootstrap_argv(run, "--mode", "workers", "--name", "job7"))
        address = run.read_info().scheduler_address
        code = (
            "import sys\n"
            "from distributed import Client\n"
            "from jobstrap.net.security import load_security\n"
            "with Client(sys.argv[1], security=load_security(sys.argv[2])) as c:\n"
            "    c.wait_for_workers(2, timeout=120)\n"
            "    print(sorted(w['name'] for w in c.scheduler_info()['workers'].values()))\n"
        )
        names = subprocess.run(
            [sys.executable, "-c", code, address, str(run)],
            capture_output=True,
            text=True,
            timeout=180,
            env=clean_env(),
        )
    finally:
        scheduler.send_signal(signal.SIGTERM)
        scheduler.communicate(timeout=60)
        results = finish(ranks, timeout=120)

    assert names.returncode == 0, names.stderr
    assert names.stdout.strip() == "['job7-0', 'job7-1']"
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]


def test_a_drain_signal_while_a_worker_rank_starts_ends_it_cleanly(run: RunDir) -> None:
    scheduler = subprocess.Popen(
        bootstrap_argv(run, "--mode", "scheduler", "--no-dashboard"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        wait_until(run.info_file.exists, 120, "info.json")
        workers = subprocess.Popen(
            bootstrap_argv(run, "--mode", "workers"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
            start_new_session=True,
        )
        # As soon as the rank catches SIGUSR1 at all (long before its workers are up).
        wait_until(lambda: catches(workers.pid, signal.SIGUSR1), 60, "a SIGUSR1 handler")
        os.killpg(workers.pid, signal.SIGUSR1)
        _, err = workers.communicate(timeout=120)
    finally:
        scheduler.send_signal(signal.SIGTERM)
        scheduler.communicate(timeout=60)

    assert workers.returncode == 0, err
    assert "SIGUSR1" in err
    assert "Traceback" not in err
