"""Per-run TLS: private files, and a real scheduler that only lets the run in."""

from __future__ import annotations

import asyncio
import copy
import os
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dask
import pytest
from cryptography import x509
from distributed import Client, Scheduler, Security
from distributed.comm.core import CommClosedError

from jobstrap.errors import UserError
from jobstrap.net.security import create_tls, load_security, tls_config, tls_env, tls_files
from jobstrap.store.rundir import RunDir


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    return RunDir.create(tmp_path, "run")


@pytest.fixture
def short_connect_timeout() -> Iterator[None]:
    # A refused TLS handshake is retried until the connect timeout; keep it short.
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        yield


def test_create_tls_writes_three_0600_files_in_a_0700_directory(run: RunDir) -> None:
    files = create_tls(run)

    assert files == tls_files(run)
    assert mode(run.tls_dir) == 0o700
    assert [mode(p) for p in (files.ca, files.cert, files.key)] == [0o600, 0o600, 0o600]


def test_create_tls_files_are_private_even_under_a_permissive_umask(run: RunDir) -> None:
    old = os.umask(0)
    try:
        files = create_tls(run)
    finally:
        os.umask(old)

    assert mode(files.directory) == 0o700
    assert [mode(p) for p in (files.ca, files.cert, files.key)] == [0o600, 0o600, 0o600]


def test_create_tls_signs_the_run_certificate_with_the_run_ca(run: RunDir) -> None:
    files = create_tls(run)
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())

    cert.verify_directly_issued_by(ca)

    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_create_tls_never_writes_the_ca_private_key(run: RunDir) -> None:
    files = create_tls(run)

    assert sorted(p.name for p in files.directory.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
    assert b"PRIVATE KEY" not in files.ca.read_bytes()
    assert b"PRIVATE KEY" not in files.cert.read_bytes()


def test_create_tls_gives_each_run_its_own_ca(tmp_path: Path) -> None:
    first = create_tls(RunDir.create(tmp_path, "a"))
    second = create_tls(RunDir.create(tmp_path, "b"))

    assert first.ca.read_bytes() != second.ca.read_bytes()


def test_create_tls_refuses_to_replace_existing_material(run: RunDir) -> None:
    create_tls(run)

    with pytest.raises(FileExistsError, match="once per run"):
        create_tls(run)


def test_load_security_requires_encryption_with_the_run_files(run: RunDir) -> None:
    files = create_tls(run)

    security = load_security(run)

    assert security.require_encryption is True
    assert security.tls_ca_file == str(files.ca)
    for role in ("scheduler", "worker", "client"):
        assert getattr(security, f"tls_{role}_cert") == str(files.cert)
        assert getattr(security, f"tls_{role}_key") == str(files.key)


def handshake_session(server: ssl.SSLContext, client: ssl.SSLContext) -> ssl.SSLSession:
    """One real handshake over a socket pair; the client's session once it has read."""
    import socket
    import threading

    left, right = socket.socketpair()

    def serve() -> None:
        with server.wrap_socket(left, server_side=True) as tls:
            tls.sendall(b"y")  # TLS 1.3 tickets, if any, arrive before this byte
            tls.recv(1)

    thread = threading.Thread(target=serve)
    thread.start()
    with client.wrap_socket(right) as tls:
        assert tls.recv(1) == b"y"
        session = tls.session
        tls.sendall(b"x")
    thread.join(10)
    assert session is not None
    return session


def test_the_run_s_listeners_issue_no_session_tickets(run: RunDir) -> None:
    # distributed never resumes a session; a ticket is work for the listener (the
    # scheduler, under a connection storm) and for every client that parses it.
    create_tls(run)
    ours = load_security(run)
    plain = Security(  # type: ignore[no-untyped-call]
        require_encryption=True, tls_ca_file=ours.tls_ca_file,
        tls_scheduler_cert=ours.tls_scheduler_cert, tls_scheduler_key=ours.tls_scheduler_key,
    )  # fmt: skip
    client = ours.get_connection_args("worker")["ssl_context"]

    with_tickets = handshake_session(plain.get_listen_args("scheduler")["ssl_context"], client)
    without = handshake_session(ours.get_listen_args("scheduler")["ssl_context"], client)

    assert with_tickets.has_ticket  # distributed's own context: the check can fail
    assert not without.has_ticket


def test_the_run_s_security_survives_pickling_into_a_worker_process(run: RunDir) -> None:
    # A nanny hands its Security to the worker process it starts.
    import pickle

    create_tls(run)
    security = load_security(run)

    copy_ = pickle.loads(pickle.dumps(security))

    assert type(copy_) is type(security)
    assert copy_.get_listen_args("worker")["ssl_context"].num_tickets == 0


def test_load_security_without_files_fails_naming_the_opt_out(run: RunDir) -> None:
    with pytest.raises(UserError, match="protocol tcp"):
        load_security(run)


def test_load_security_without_files_and_not_required_is_plain_tcp(run: RunDir) -> None:
    security = load_security(run, require=False)

    assert security.require_encryption is False
    assert security.tls_ca_file is None


def test_tls_env_names_dask_config_variables(run: RunDir) -> None:
    files = create_tls(run)

    env = tls_env(run)

    assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
    assert env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"] == str(files.ca)
    assert env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT"] == str(files.cert)
    assert env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"] == str(files.key)


def test_tls_env_is_understood_by_dask_config(run: RunDir) -> None:
    create_tls(run)
    collected = dask.config.collect_env(tls_env(run))
    merged = dask.config.update(copy.deepcopy(dask.config.config), collected)

    with dask.config.set(merged):
        security = Security()

    assert security.require_encryption is True
    assert security.tls_client_cert == str(tls_files(run).cert)
    assert security.tls_ca_file == str(tls_files(run).ca)


def _run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_client_with_the_run_certificates_connects(run: RunDir) -> None:
    async def scenario() -> str:
        create_tls(run)
        security = load_security(run)
        async with (
            Scheduler(
                host="127.0.0.1", port=0, protocol="tls", security=security, dashboard=False
            ) as scheduler,
            Client(scheduler.address, security=security, asynchronous=True) as client,
        ):
            info = await client.scheduler.identity()
            return str(info["address"])

    address = _run(scenario())

    assert str(address).startswith("tls://127.0.0.1:")


def test_client_without_a_certificate_is_refused_during_the_handshake(run: RunDir) -> None:
    # distributed cannot even build a client context without a certificate, so
    # speak TLS directly: trust the run's CA, present no certificate of our own.
    async def scenario() -> BaseException | bytes:
        create_tls(run)
        async with Scheduler(
            host="127.0.0.1", port=0, protocol="tls", security=load_security(run), dashboard=False
        ) as scheduler:
            context = ssl.create_default_context(cafile=str(tls_files(run).ca))
            context.check_hostname = False
            host, port = scheduler.address.removeprefix("tls://").rsplit(":", 1)
            try:
                reader, writer = await asyncio.open_connection(host, int(port), ssl=context)
                writer.write(b"\x00" * 8)
                await writer.drain()
                data = await asyncio.wait_for(reader.read(1), timeout=30)
                writer.close()
                return data
            except (ssl.SSLError, ConnectionError) as error:
                return error

    outcome = _run(scenario())

    # Refused: an alert ("certificate required") or the connection closed unread.
    assert outcome == b"" or isinstance(outcome, (ssl.SSLError, ConnectionError)), outcome
    if isinstance(outcome, ssl.SSLError):
        assert "CERTIFICATE_REQUIRED" in str(outcome).upper() or "ALERT" in str(outcome).upper()


def test_client_with_another_runs_certificates_cannot_connect(
    tmp_path: Path, short_connect_timeout: None
) -> None:
    ours = RunDir.create(tmp_path, "ours")
    theirs = RunDir.create(tmp_path, "theirs")
    create_tls(ours)
    create_tls(theirs)

    async def scenario() -> None:
        async with Scheduler(
            host="127.0.0.1", port=0, protocol="tls", security=load_security(ours), dashboard=False
        ) as scheduler:
            with pytest.raises(CommClosedError, match="TLS certificate does not match"):
                async with Client(
                    scheduler.address,
                    security=load_security(theirs),
                    asynchronous=True,
                    timeout="2s",
                ):
                    pass

    _run(scenario())


def test_plain_tcp_client_cannot_talk_to_a_tls_scheduler(
    run: RunDir, short_connect_timeout: None
) -> None:
    async def scenario() -> None:
        create_tls(run)
        async with Scheduler(
            host="127.0.0.1", port=0, protocol="tls", security=load_security(run), dashboard=False
        ) as scheduler:
            plain = scheduler.address.replace("tls://", "tcp://")
            with pytest.raises(CommClosedError):
                async with Client(plain, asynchronous=True, timeout="2s"):
                    pass

    _run(scenario())


def test_a_plain_client_in_a_fresh_process_connects_through_the_tls_environment(
    run: RunDir,
) -> None:
    async def scenario() -> subprocess.CompletedProcess[str]:
        create_tls(run)
        async with Scheduler(
            host="127.0.0.1", port=0, protocol="tls", security=load_security(run), dashboard=False
        ) as scheduler:
            env = {**os.environ, **tls_env(run), "DASK_SCHEDULER_ADDRESS": scheduler.address}
            code = (
                "from distributed import Client\n"
                "with Client(timeout='20s') as c:\n"
                "    print(c.scheduler_info()['address'])\n"
            )
            return await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-c", code],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )

    result = _run(scenario())

    assert isinstance(result, subprocess.CompletedProcess)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("tls://127.0.0.1:")


def test_tls_config_covers_every_role(run: RunDir) -> None:
    create_tls(run)

    config = tls_config(run)

    assert config["distributed.comm.require-encryption"] is True
    assert {k for k in config if k.endswith(".cert")} == {
        "distributed.comm.tls.scheduler.cert",
        "distributed.comm.tls.worker.cert",
        "distributed.comm.tls.client.cert",
    }
