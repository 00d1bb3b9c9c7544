"""The dashboard from a "laptop" through SSH, on the real test cluster.

Roles: ``head`` is the login node and runs a real ``sshd`` (started here, key-only,
on head's Ethernet address); a real scheduler runs in a batch job on a compute node
and publishes ``info.json``; ``node3`` plays the laptop: it runs ``jobstrap tunnel``
and fetches the dashboard through ``localhost``. The laptop and the scheduler are in
different network namespaces, so the only way between them is the tunnel.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from conftest import TESTCLUSTER, TestCluster, new_shared_dir, wait_for

from jobstrap.batchctl.control import BatchControl
from jobstrap.config.profile import load_profile
from jobstrap.jobs.spec import new_tag, scheduler_job
from jobstrap.net.network import list_interfaces
from jobstrap.net.security import create_tls
from jobstrap.store import registry
from jobstrap.store.rundir import RunDir

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(shutil.which("sbatch") is None, reason="needs the Slurm test cluster"),
]

LAPTOP = "node3"
SCHEDULER_NODE = "node1"


def login_address() -> str:
    """Head's Ethernet address as the kernel has it (this session runs on head)."""
    return next(i.address for i in list_interfaces() if i.name == "eth0" and i.address)


@dataclass
class Login:
    """The sshd on head and the key the laptop uses."""

    address: str
    port: int
    key: Path
    process: subprocess.Popen[bytes]

    def ssh_options(self) -> list[str]:
        options = [
            f"Port={self.port}",
            f"IdentityFile={self.key}",
            "IdentitiesOnly=yes",
            "BatchMode=yes",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "LogLevel=ERROR",
        ]
        return [arg for option in options for arg in ("-o", option)]


def ensure_sshd() -> str:
    """The sshd binary; installs openssh-server when it is missing."""
    binary = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(binary):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, timeout=300)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "openssh-server"],
            env=env, check=True, timeout=600,
        )  # fmt: skip
    return binary


def free_port(address: str) -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def login(testcluster: TestCluster) -> Iterator[Login]:
    """A real sshd on the login node: generated host and user keys, root by key only."""
    binary = ensure_sshd()
    keys = new_shared_dir("tunnel-keys")
    for name in ("host_key", "user_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True
        )
    shutil.copy(keys / "user_key.pub", keys / "authorized_keys")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    address = login_address()
    port = free_port(address)
    # An empty HOME for the session: the account's own shell rc files stay out of it.
    home = keys / "home"
    home.mkdir()
    config = keys / "sshd_config"
    config.write_text(
        textwrap.dedent(f"""\
        Port {port}
        ListenAddress {address}
        HostKey {keys / "host_key"}
        AuthorizedKeysFile {keys / "authorized_keys"}
        UsePAM no
        PermitRootLogin prohibit-password
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        StrictModes no
        PidFile none
        AllowTcpForwarding yes
        SetEnv HOME={home}
        """)
    )
    # This session runs on head, so a plain child process is head's sshd.
    process = subprocess.Popen([binary, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
    try:
        wait_for(
            lambda: process.poll() is not None or port_open(address, port),
            15,
            f"sshd on {address}:{port}",
        )
        assert process.poll() is None, process.stderr.read()  # type: ignore[union-attr]
        yield Login(address, port, keys / "user_key", process)
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(keys, ignore_errors=True)


def port_open(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class ScheduledRun:
    run_id: str
    run_dir: Path
    state_dir: Path
    job_id: str


@pytest.fixture
def scheduler_run(
    testcluster: TestCluster, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ScheduledRun]:
    """A real scheduler in a batch job on a compute node (``scheduler: job``), with TLS."""
    root = new_shared_dir("tunnel-run")
    state = root / "state"
    monkeypatch.setenv("JOBSTRAP_STATE_DIR", str(state))
    # The test cluster's compute nodes run no sshd, so the default dashboard (on the
    # node's loopback, reached by ``ssh -J login node``) has no live path here; its
    # plan is tested in tests/unit/tools. The opt-in keeps the tunnel's mechanics
    # (login node, reconnects, the scheduler forward) tested for real.
    profile = load_profile("testcluster", {"walltime": "00:10:00", "dashboard_bind": "interface"})
    run = RunDir.create(root / "runs", f"tunnel-{new_tag()}")
    create_tls(run)
    spec = scheduler_job(profile, str(run.path), new_tag())
    # Pinned to one node so the laptop (node3) is certainly another host.
    spec = replace(spec, extra_directives=(*spec.extra_directives, f"--nodelist={SCHEDULER_NODE}"))
    batchctl = BatchControl.for_system("slurm")
    submission = batchctl.submit(spec, None)
    job_id = submission.job_ids[0]
    registry.save(registry.RunRecord(run.run_id, "cluster", "slurm", str(run.path), [job_id]))
    try:
        wait_for(lambda: run.info_file.exists(), 120, f"info.json of scheduler job {job_id}")
        yield ScheduledRun(run.run_id, run.path, state, job_id)
    finally:
        batchctl.cancel([job_id])
        shutil.rmtree(root, ignore_errors=True)


class Tunnel:
    """``jobstrap tunnel`` running on the laptop host, its stderr in a file."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.log = log
        self._handle = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [os.fspath(TESTCLUSTER), "on", LAPTOP, *argv],
            stdout=self._handle, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text()

    def ssh_pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"ssh started \(pid (\d+)\)", self.output())]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._handle.close()


def laptop_get(url: str) -> str:
    """HTTP GET from the laptop host; returns the status code or the error."""
    code = (
        "import sys, urllib.request\n"
        "try:\n"
        "    print(urllib.request.urlopen(sys.argv[1], timeout=5).status)\n"
        "except Exception as error:\n"
        "    print(type(error).__name__, error)\n"
    )
    done = subprocess.run(
        [os.fspath(TESTCLUSTER), "on", LAPTOP, sys.executable, "-c", code, url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return (done.stdout + done.stderr).strip()


@pytest.fixture
def tunnel_env(scheduler_run: ScheduledRun) -> dict[str, str]:
    env = dict(os.environ)
    env["JOBSTRAP_STATE_DIR"] = str(scheduler_run.state_dir)
    return env


def start_tunnel(
    login: Login, run: ScheduledRun, env: dict[str, str], log: Path, *extra: str
) -> Tunnel:
    jobstrap = str(Path(sys.executable).parent / "jobstrap")
    argv = [jobstrap, "tunnel", run.run_id, "--via", f"root@{login.address}",
            *login.ssh_options(), *extra]  # fmt: skip
    return Tunnel(argv, log, env)


def test_the_dashboard_answers_on_the_laptop_and_survives_a_killed_ssh(
    login: Login, scheduler_run: ScheduledRun, tunnel_env: dict[str, str], tmp_path: Path
) -> None:
    local_port = "18787"
    url = f"http://127.0.0.1:{local_port}/health"
    tunnel = start_tunnel(
        login, scheduler_run, tunnel_env, tmp_path / "tunnel.log", "--local-port", local_port
    )
    try:
        # The laptop cannot reach the scheduler's node without the tunnel.
        wait_for(lambda: "tunnel up" in tunnel.output(), 60, "the tunnel: " + tunnel.log.name)
        assert wait_for(lambda: laptop_get(url) == "200", 30, f"GET {url} on {LAPTOP}")
        first = tunnel.ssh_pids()[-1]

        os.kill(first, signal.SIGKILL)

        wait_for(
            lambda: len(tunnel.ssh_pids()) >= 2 and tunnel.output().count("tunnel up") >= 2,
            60,
            f"ssh to be started again; output so far:\n{tunnel.output()}",
        )
        assert wait_for(lambda: laptop_get(url) == "200", 30, f"GET {url} after reconnect")
        assert f"Dashboard: http://localhost:{local_port}/status" in tunnel.output()
    finally:
        tunnel.stop()


def test_a_laptop_client_reaches_the_scheduler_through_the_tunnel_with_the_runs_tls(
    login: Login, scheduler_run: ScheduledRun, tunnel_env: dict[str, str], tmp_path: Path
) -> None:
    tunnel = start_tunnel(
        login, scheduler_run, tunnel_env, tmp_path / "tunnel.log", "--scheduler",
        "--scheduler-port", "18786",
    )  # fmt: skip
    client_code = textwrap.dedent("""\
        import sys
        from distributed import Client
        from jobstrap.net.security import load_security
        with Client(sys.argv[1], security=load_security(sys.argv[2]), timeout=30,
                    direct_to_workers=False) as client:
            print("scheduler", client.scheduler_info()["id"])
        """)
    try:
        wait_for(lambda: "tunnel up" in tunnel.output(), 60, "the tunnel")
        assert "Scheduler: tls://localhost:18786" in tunnel.output()

        done = subprocess.run(
            [os.fspath(TESTCLUSTER), "on", LAPTOP, sys.executable, "-c", client_code,
             "tls://localhost:18786", str(scheduler_run.run_dir)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.startswith("scheduler Scheduler-")
    finally:
        tunnel.stop()


def test_print_gives_the_command_for_the_laptop_without_running_ssh(
    scheduler_run: ScheduledRun, tunnel_env: dict[str, str]
) -> None:
    info = RunDir(scheduler_run.run_dir).read_info()
    node_address = info.dashboard_address.split("//")[1].split(":")[0]  # type: ignore[union-attr]

    done = subprocess.run(
        [str(Path(sys.executable).parent / "jobstrap"), "tunnel", scheduler_run.run_id,
         "--print", "--via", "login.example.org"],
        capture_output=True, text=True, timeout=60, env=tunnel_env,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert f":{node_address}:" in done.stdout
    assert done.stdout.strip().endswith("-- login.example.org")
    assert "ssh started" not in done.stderr
