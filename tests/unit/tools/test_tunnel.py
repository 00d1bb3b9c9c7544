"""SSH tunnels: the pure plan by its argv, the keeper against a real sshd on loopback."""

from __future__ import annotations

import functools
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobstrap.cli import cli
from jobstrap.errors import UserError
from jobstrap.store import registry
from jobstrap.store.rundir import RunDir, SchedulerInfo
from jobstrap.tools.tunnel import (
    DEFAULT_SSH_OPTIONS,
    Backoff,
    Endpoint,
    Forward,
    RunTarget,
    TunnelKeeper,
    TunnelPlan,
    dashboard_link,
    find_target,
    free_local_port,
    parse_endpoint,
    plan_for,
    prometheus_plan,
    remote_target_argv,
    resolve_via,
    target_from_info,
)

INFO = {
    "scheduler_address": "tls://10.78.0.11:41234",
    "dashboard_address": "http://10.78.0.11:8787/status",
    "host": "node1",
    "job_id": "42",
    "started": 1.0,
    "pid": 7,
}


def fixed_ports(preferred: int | None) -> int:
    """A port picker that takes the preferred port, else 50000 (deterministic plans)."""
    return preferred or 50000


def target() -> RunTarget:
    return target_from_info(INFO, run_dir="/home/u/.jobstrap/runs/r1")


PlanTo = Callable[..., TunnelPlan]


@pytest.fixture
def plan_to() -> PlanTo:
    """``plan_for`` the recorded run through the given login node(s), with fixed ports."""
    return functools.partial(plan_for, target(), port_is_free=fixed_ports)


# ----------------------------------------------------------------------- plans


def test_the_plan_forwards_a_loopback_port_to_the_dashboard_through_the_login_node(
    plan_to: PlanTo,
) -> None:
    plan = plan_to(["login.example.org"])

    assert plan.argv() == [
        "ssh", "-N", "-L", "127.0.0.1:8787:10.78.0.11:8787",
        *[arg for option in DEFAULT_SSH_OPTIONS for arg in ("-o", option)],
        "--", "login.example.org",
    ]  # fmt: skip


def test_the_plan_exits_on_forward_failure_and_sends_keepalives(plan_to: PlanTo) -> None:
    argv = plan_to(["login"]).argv()

    assert "ExitOnForwardFailure=yes" in argv
    assert "ServerAliveInterval=15" in argv


def test_two_hops_jump_through_the_first_to_the_second(plan_to: PlanTo) -> None:
    argv = plan_to(["batchctl", "login"]).argv()

    assert argv[argv.index("-J") + 1] == "batchctl"
    assert argv[-2:] == ["--", "login"]


def test_the_scheduler_forward_is_added_on_request_and_its_address_is_local_tls(
    plan_to: PlanTo,
) -> None:
    plan = plan_to(["login"], scheduler=True)

    assert "127.0.0.1:41234:10.78.0.11:41234" in plan.argv()
    assert plan.scheduler_address == "tls://localhost:41234"


def test_the_scheduler_forward_never_shares_the_dashboard_port(plan_to: PlanTo) -> None:
    plan = plan_to(["login"], local_port=9000, scheduler=True, scheduler_local_port=9000)

    assert len(set(plan.local_ports)) == 2


def test_the_url_uses_the_local_port_and_the_dashboard_path(plan_to: PlanTo) -> None:
    plan = plan_to(["login"], local_port=18787)

    assert plan.dashboard_url == "http://localhost:18787/status"


def test_a_node_name_replaces_the_advertised_address(plan_to: PlanTo) -> None:
    plan = plan_to(["login"], node="node1")

    assert "127.0.0.1:8787:node1:8787" in plan.argv()


LOOPBACK_INFO = {**INFO, "dashboard_address": "http://127.0.0.1:8787/status"}


def test_a_loopback_dashboard_is_reached_by_ssh_to_its_node_through_the_login_node() -> None:
    plan = plan_for(target_from_info(LOOPBACK_INFO), ["login"], port_is_free=fixed_ports)

    argv = plan.argv()
    assert "127.0.0.1:8787:127.0.0.1:8787" in argv
    assert argv[argv.index("-J") + 1] == "login"
    assert argv[-2:] == ["--", "node1"]


def test_a_loopback_dashboard_keeps_the_scheduler_forward_on_its_address() -> None:
    plan = plan_for(
        target_from_info(LOOPBACK_INFO), ["gw", "login"], scheduler=True, port_is_free=fixed_ports
    )

    argv = plan.argv()
    assert "127.0.0.1:41234:10.78.0.11:41234" in argv
    assert argv[argv.index("-J") + 1] == "gw,login"
    assert argv[-2:] == ["--", "node1"]


def test_a_loopback_dashboard_on_the_login_node_itself_needs_no_hop() -> None:
    info = {**LOOPBACK_INFO, "host": "login"}
    plan = plan_for(target_from_info(info), ["login"], port_is_free=fixed_ports)

    assert "-J" not in plan.argv()
    assert plan.argv()[-2:] == ["--", "login"]


def test_a_loopback_dashboard_of_an_unknown_node_asks_for_node() -> None:
    target = RunTarget(dashboard=Endpoint("127.0.0.1", 8787, "http"), scheduler=None)

    with pytest.raises(UserError, match="--node"):
        plan_for(target, ["login"], port_is_free=fixed_ports)


def test_the_node_option_names_the_host_of_a_loopback_dashboard() -> None:
    plan = plan_for(
        target_from_info(LOOPBACK_INFO), ["login"], node="n1.fast", port_is_free=fixed_ports
    )

    assert "127.0.0.1:8787:127.0.0.1:8787" in plan.argv()
    assert plan.argv()[-2:] == ["--", "n1.fast"]


def test_user_ssh_options_follow_the_defaults(plan_to: PlanTo) -> None:
    argv = plan_to(["login"], ssh_options=["BatchMode=yes"]).argv()

    assert argv.index("BatchMode=yes") > argv.index("ServerAliveCountMax=3")


def test_no_login_node_is_a_user_error_naming_the_setting(plan_to: PlanTo) -> None:
    with pytest.raises(UserError, match="--via LOGIN"):
        plan_to([])


def test_a_run_without_dashboard_needs_the_scheduler_flag() -> None:
    headless = target_from_info({**INFO, "dashboard_address": None})

    with pytest.raises(UserError, match="--scheduler"):
        plan_for(headless, ["login"], port_is_free=fixed_ports)


@pytest.mark.parametrize("host", ["-oProxyCommand=evil", "two words", ""])
def test_a_destination_that_ssh_could_misread_is_refused(host: str) -> None:
    forward = Forward(1, Endpoint("node1", 2), "dashboard")

    with pytest.raises(UserError, match="not a host"):
        TunnelPlan(destination=host, forwards=(forward,))


def test_the_destination_comes_after_a_double_dash(plan_to: PlanTo) -> None:
    argv = plan_to(["login"]).argv()

    assert argv[-2] == "--"


def test_the_printed_command_is_the_argv_shell_quoted(plan_to: PlanTo) -> None:
    plan = plan_to(["login"], ssh_options=["IdentityFile=~/my key"])

    assert "'IdentityFile=~/my key'" in plan.command()


# --------------------------------------------------------------------- targets


def test_the_target_is_the_advertised_dashboard_and_scheduler_address() -> None:
    found = target()

    assert found.dashboard == Endpoint("10.78.0.11", 8787, "http", "/status")
    assert found.scheduler == Endpoint("10.78.0.11", 41234, "tls", "")


def test_a_dashboard_on_every_interface_is_reached_through_the_host_name() -> None:
    found = target_from_info({**INFO, "dashboard_address": "http://0.0.0.0:8787/status"})

    assert found.dashboard is not None
    assert found.dashboard.host == "node1"


def test_an_address_without_a_path_gets_the_status_page() -> None:
    found = target_from_info({**INFO, "dashboard_address": "10.78.0.11:8787"})

    assert found.dashboard is not None
    assert found.dashboard.path == "/status"


@pytest.mark.parametrize("text", ["node1", "http://node1/status", "node1:http", "node1:70000"])
def test_an_address_without_a_usable_port_is_a_user_error(text: str) -> None:
    with pytest.raises(UserError, match="with a port"):
        parse_endpoint(text)


def test_the_target_round_trips_through_json() -> None:
    original = target()

    assert RunTarget.from_json(json.loads(json.dumps(original.to_json()))) == original


def write_run(tmp_path: Path) -> RunDir:
    run = RunDir.create(tmp_path / "runs", "run-1")
    run.write_info(SchedulerInfo.from_json(INFO))
    return run


def test_a_run_directory_is_found_by_its_path(tmp_path: Path) -> None:
    run = write_run(tmp_path)

    assert find_target(str(run.path)).dashboard == target().dashboard


def test_a_run_is_found_through_the_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBSTRAP_STATE_DIR", str(tmp_path / "state"))
    run = write_run(tmp_path)
    registry.save(registry.RunRecord("run-1", "cluster", "slurm", str(run.path)))

    found = find_target("run-1")

    assert found.run_dir == str(run.path)
    assert found.scheduler == target().scheduler


def test_a_run_computing_in_its_jobs_own_process_says_there_is_no_scheduler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBSTRAP_STATE_DIR", str(tmp_path / "state"))
    run = RunDir.create(tmp_path / "runs", "run-1")
    extra = {"in_process": True, "placement": "one node, no workers asked for"}
    registry.save(registry.RunRecord("run-1", "graph", "slurm", str(run.path), extra=extra))

    with pytest.raises(UserError, match=r"own process \(one node, no workers asked for\).*logs"):
        find_target("run-1")


def test_a_run_whose_scheduler_has_not_started_says_so(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "runs", "run-1")

    with pytest.raises(UserError, match="has not started"):
        find_target(str(run.path))


def test_an_address_is_a_target_of_its_own() -> None:
    found = find_target("node7:8787")

    assert found.dashboard == Endpoint("node7", 8787, "http", "")


def test_the_remote_lookup_quotes_the_reference_for_the_login_shell() -> None:
    argv = remote_target_argv("run; rm -rf ~", ["gw", "login"], remote_jobstrap="jobstrap")

    assert argv[-2:] == ["login", "jobstrap tunnel --target-json 'run; rm -rf ~'"]
    assert argv[argv.index("-J") + 1] == "gw"


# ------------------------------------------------------- configuration and links


@dataclass
class FakeProfile:
    tunnel_via: str | None = None


def test_via_prefers_the_flag_then_the_environment_then_the_profile() -> None:
    env = {"JOBSTRAP_TUNNEL_VIA": "envlogin"}
    profile = FakeProfile("proflogin")

    assert resolve_via("flag", profile=profile, environ=env) == ("flag",)
    assert resolve_via(None, profile=profile, environ=env) == ("envlogin",)
    assert resolve_via(None, profile=profile, environ={}) == ("proflogin",)
    assert resolve_via(None, profile=None, environ={}) == ()


def test_via_splits_a_chain_of_hosts() -> None:
    assert resolve_via("gw, login", environ={}) == ("gw", "login")


def test_the_dashboard_link_is_unchanged_without_a_tunnel() -> None:
    link = dashboard_link("http://10.78.0.11:8787/status", environ={})

    assert link == "http://10.78.0.11:8787/status"


def test_the_dashboard_link_points_at_the_laptop_when_a_tunnel_is_configured() -> None:
    link = dashboard_link("http://10.78.0.11:8787/status", environ={"JOBSTRAP_TUNNEL_VIA": "login"})

    assert link == "http://localhost:8787/status"


def test_the_dashboard_link_uses_a_given_local_port() -> None:
    link = dashboard_link("http://10.78.0.11:8787/status", via="login", local_port=9999)

    assert link == "http://localhost:9999/status"


def test_no_dashboard_stays_no_dashboard() -> None:
    assert dashboard_link(None, via="login") is None


def test_a_free_preferred_port_is_taken() -> None:
    port = free_local_port(None)

    assert free_local_port(port) == port


def test_a_busy_preferred_port_gives_another_one() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = busy.getsockname()[1]

        assert free_local_port(taken) != taken


def test_backoff_doubles_up_to_its_maximum() -> None:
    backoff = Backoff(initial=1, maximum=5, stable_after=30)

    delays = [backoff.next_delay(uptime=0) for _ in range(5)]

    assert delays == [1, 2, 4, 5, 5]


def test_backoff_starts_over_after_a_tunnel_that_stayed_up() -> None:
    backoff = Backoff(initial=1, maximum=60, stable_after=30)
    for _ in range(4):
        backoff.next_delay(uptime=0)

    assert backoff.next_delay(uptime=120) == 1


# ----------------------------------------------------- the keeper, with real ssh


@dataclass
class Sshd:
    """A real sshd on loopback that accepts one generated key for the current user."""

    port: int
    key: Path
    user: str
    process: subprocess.Popen[bytes]

    @property
    def destination(self) -> str:
        return f"{self.user}@127.0.0.1"

    def options(self, key: Path | None = None) -> list[str]:
        return [
            f"Port={self.port}",
            f"IdentityFile={key or self.key}",
            "IdentitiesOnly=yes",
            "BatchMode=yes",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "LogLevel=ERROR",
        ]


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = condition()  # type: ignore[operator]
        if last:
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last saw {last!r}")


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    binary = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(binary) or shutil.which("ssh") is None:
        pytest.skip("openssh-server and openssh-client are needed (scripts/testcluster install)")
    if os.geteuid() == 0:
        # Debian's sshd refuses to start as root without its privilege-separation dir.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    host_key = keygen(tmp_path / "host_key")
    user_key = keygen(tmp_path / "user_key")
    shutil.copy(tmp_path / "user_key.pub", tmp_path / "authorized_keys")
    port = free_local_port(None)
    # The session's HOME is an empty directory: the login shell must not read the
    # user's own ~/.bashrc (a stale pyenv rehash lock there stalls every ssh
    # command for 60 s), so the test sees sshd and jobstrap, not this account.
    home = tmp_path / "home"
    home.mkdir()
    config = tmp_path / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}\nUsePAM no\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nStrictModes no\nPidFile none\n"
        f"AllowTcpForwarding yes\nSetEnv HOME={home}\n"
    )
    process = subprocess.Popen([binary, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
    try:
        wait_for(lambda: process.poll() is not None or port_answers(port), 10, "sshd")
        if process.poll() is not None:
            raise AssertionError(f"sshd exited: {process.stderr.read().decode()}")  # type: ignore[union-attr]
        yield Sshd(port, user_key, getpass.getuser(), process)
    finally:
        process.terminate()
        process.wait(10)


def port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Dashboard(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok" if self.path == "/health" else b"dashboard"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def dashboard() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Dashboard)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def get(url: str) -> int | str:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return int(response.status)
    except OSError as error:
        return f"{type(error).__name__}: {error}"


def dashboard_target(port: int, node: str) -> RunTarget:
    """A dashboard on the loopback of ``node`` (the sshd's host, so no hop is needed)."""
    return RunTarget(
        dashboard=Endpoint("127.0.0.1", port, "http", "/health"), scheduler=None, node=node
    )


def test_the_keeper_brings_the_tunnel_up_and_the_dashboard_answers(
    sshd: Sshd, dashboard: int
) -> None:
    plan = plan_for(
        dashboard_target(dashboard, sshd.destination),
        [sshd.destination],
        ssh_options=sshd.options(),
    )

    with TunnelKeeper(plan, backoff=Backoff(initial=0.2)) as keeper:
        assert keeper.wait_up(20), "tunnel never came up"

        assert get(f"http://127.0.0.1:{plan.local_ports[0]}/health") == 200


def test_the_keeper_reconnects_after_ssh_is_killed(sshd: Sshd, dashboard: int) -> None:
    plan = plan_for(
        dashboard_target(dashboard, sshd.destination),
        [sshd.destination],
        ssh_options=sshd.options(),
    )
    url = f"http://127.0.0.1:{plan.local_ports[0]}/health"
    with TunnelKeeper(plan, backoff=Backoff(initial=0.2)) as keeper:
        assert keeper.wait_up(20), "tunnel never came up"
        first = keeper.pid
        assert first is not None

        os.kill(first, 9)

        wait_for(lambda: keeper.pid not in (None, first) and keeper.is_up(), 30, "a new ssh")
        assert get(url) == 200
        assert keeper.starts == 2


def test_the_keeper_gives_up_when_ssh_refuses_the_key(sshd: Sshd, tmp_path: Path) -> None:
    stranger = keygen(tmp_path / "stranger")
    plan = plan_for(
        dashboard_target(9, sshd.destination),
        [sshd.destination],
        ssh_options=sshd.options(key=stranger),
    )
    keeper = TunnelKeeper(plan, backoff=Backoff(initial=0.1))

    with pytest.raises(UserError, match="Permission denied"):
        keeper.run()
    assert keeper.starts == 1


def test_a_keeper_thread_that_gives_up_says_why_and_never_comes_up(
    sshd: Sshd, tmp_path: Path
) -> None:
    stranger = keygen(tmp_path / "stranger")
    plan = plan_for(
        dashboard_target(9, sshd.destination),
        [sshd.destination],
        ssh_options=sshd.options(key=stranger),
    )

    with TunnelKeeper(plan, backoff=Backoff(initial=0.1)) as keeper:
        assert not keeper.wait_up(20)

    assert keeper.error is not None
    assert "Permission denied" in keeper.error


def test_the_cli_prints_the_command_without_running_it(tmp_path: Path) -> None:
    run = write_run(tmp_path)

    result = CliRunner().invoke(
        cli, ["tunnel", str(run.path), "--via", "login", "--local-port", "18787", "--print"]
    )

    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("-- login")
    assert "127.0.0.1:18787:10.78.0.11:8787" in result.stdout


def test_the_cli_prints_the_plan_as_json(tmp_path: Path) -> None:
    run = write_run(tmp_path)

    result = CliRunner().invoke(
        cli, ["tunnel", str(run.path), "--via", "login", "--print", "--json", "--scheduler"]
    )

    plan = json.loads(result.stdout)
    assert [f["label"] for f in plan["forwards"]] == ["dashboard", "scheduler"]
    assert plan["destination"] == "login"


def test_the_laptop_looks_the_run_up_on_the_login_node_over_ssh(
    sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The "login node" knows the run (its own state dir); the "laptop" does not.
    login_state = tmp_path / "login-state"
    monkeypatch.setenv("JOBSTRAP_STATE_DIR", str(login_state))
    run = write_run(tmp_path)
    registry.save(registry.RunRecord("run-1", "cluster", "slurm", str(run.path)))
    monkeypatch.setenv("JOBSTRAP_STATE_DIR", str(tmp_path / "laptop-state"))
    remote = f"env JOBSTRAP_STATE_DIR={login_state} {sys.executable} -m jobstrap"
    options = [arg for option in sshd.options() for arg in ("-o", option)]

    result = CliRunner().invoke(
        cli,
        ["tunnel", "run-1", "--via", sshd.destination, "--print", "--json",
         "--remote-jobstrap", remote, *options],
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["forwards"][0]["host"] == "10.78.0.11"


# ------------------------------------------------- a Prometheus on the login node's loopback


def test_the_prometheus_forward_goes_to_the_login_node_s_own_loopback() -> None:
    result = CliRunner().invoke(
        cli, ["tunnel", "--prometheus", "--via", "gw,login", "--print", "--json"]
    )

    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    # 127.0.0.1 is resolved by the destination: the login node, never a compute node.
    assert (plan["destination"], plan["jumps"]) == ("login", ["gw"])
    [forward] = plan["forwards"]
    assert (forward["label"], forward["host"], forward["port"]) == ("prometheus", "127.0.0.1", 9090)
    assert plan["prometheus_url"] == f"http://localhost:{forward['local_port']}/"


def test_the_prometheus_port_and_the_laptop_port_can_be_given() -> None:
    result = CliRunner().invoke(
        cli,
        ["tunnel", "--prometheus", "9091", "--via", "login", "--local-port", "19091", "--print"],
    )

    assert result.exit_code == 0, result.output
    assert "-L 127.0.0.1:19091:127.0.0.1:9091" in result.stdout
    assert result.stdout.strip().endswith("-- login")


@pytest.mark.parametrize(
    "args",
    [
        ["--prometheus", "9090", "run-1"],
        ["--prometheus", "--scheduler"],
        ["--prometheus", "port"],
        ["--prometheus", "70000"],
    ],
)
def test_a_prometheus_tunnel_refuses_what_it_cannot_do_in_one_line(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["tunnel", *args, "--via", "login", "--print"])

    assert result.exit_code == 2
    assert "--prometheus" in result.output


def test_without_a_run_or_prometheus_the_run_is_asked_for() -> None:
    result = CliRunner().invoke(cli, ["tunnel", "--via", "login", "--print"])

    assert result.exit_code == 2
    assert "RUN|CLUSTER|DIR|ADDRESS" in result.output


def test_a_prometheus_on_the_login_node_s_loopback_answers_through_the_tunnel(
    sshd: Sshd, dashboard: int
) -> None:
    # The sshd's host is the login node; the HTTP server on its loopback stands for
    # the Prometheus started as docs/metrics.md says (127.0.0.1 only).
    plan = prometheus_plan([sshd.destination], remote_port=dashboard, ssh_options=sshd.options())

    with TunnelKeeper(plan, backoff=Backoff(initial=0.2)) as keeper:
        assert keeper.wait_up(20), "tunnel never came up"

        assert get(f"{plan.prometheus_url}health") == 200
