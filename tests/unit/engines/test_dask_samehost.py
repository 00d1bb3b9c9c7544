"""Same-host Unix sockets beside TLS listeners: used when they may be, TLS otherwise."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import Client, Scheduler, Security, Worker
from distributed.comm import registry
from distributed.comm.core import connect, listen
from distributed.comm.tcp import TLS, TLSBackend, TLSListener

from jobstrap.engines.dask import samehost
from jobstrap.engines.dask.samehost import SameHostComm, SameHostTLSBackend
from jobstrap.net.security import generate_tls_material, security_from_material


@pytest.fixture(scope="module")
def security() -> Security:
    return security_from_material(generate_tls_material())


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short private temporary directory, and the process's tls backend restored."""
    base = Path(tempfile.mkdtemp(prefix="sh", dir="/tmp"))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv(samehost.ENV, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    stock = registry.backends["tls"]
    try:
        yield base
    finally:
        registry.backends["tls"] = stock
        shutil.rmtree(base, ignore_errors=True)


def socket_of(contact: str, security: Security) -> Path:
    """The socket file a listener of ``security``'s run at ``contact`` has."""
    context = security.get_listen_args("scheduler")["ssl_context"]
    return samehost.socket_path(contact.removeprefix("tls://"), context)


async def echo(comm: Any) -> None:
    while True:
        try:
            message = await comm.read()
        except Exception:  # the peer closed: the test is over
            return
        await comm.write(message)


async def round_trip(security: Security, *, stock_client: bool = False) -> tuple[Any, str, bool]:
    """Listen on 127.0.0.1 with TLS, connect, echo 4 MiB; (comm, contact, socket existed).

    ``stock_client``: connect as a process without the backend would.
    """
    listener = listen("tls://127.0.0.1:0", echo, **security.get_listen_args("scheduler"))  # type: ignore[no-untyped-call]
    await listener.start()
    contact = listener.contact_address
    existed = socket_of(contact, security).exists()
    if stock_client:
        registry.backends["tls"] = TLSBackend()
    comm = await connect(contact, **security.get_connection_args("worker"))  # type: ignore[no-untyped-call]
    payload = os.urandom(4 * 2**20)
    await comm.write({"data": payload})
    assert (await comm.read())["data"] == payload
    await comm.close()
    listener.stop()
    return comm, contact, existed


def test_same_host_peers_talk_over_a_private_unix_socket(
    security: Security, caplog: pytest.LogCaptureFixture
) -> None:
    assert samehost.install()
    assert samehost.install()  # idempotent
    assert isinstance(registry.backends["tls"], SameHostTLSBackend)
    caplog.set_level(logging.DEBUG)

    comm, contact, existed = asyncio.run(round_trip(security))

    assert existed
    assert isinstance(comm, SameHostComm)
    assert comm.peer_address == contact  # addresses stay tls://host:port
    assert comm.extra_info["same_host_socket"] is True
    directory = samehost.socket_dir()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert not socket_of(contact, security).exists()  # removed on stop
    # distributed's TCP keep-alive options are not tried (and failed) on the socket.
    assert "Could not set timeout" not in caplog.text


def test_the_socket_file_is_0600_in_a_0700_directory(security: Security) -> None:
    samehost.install()

    async def main() -> tuple[int, int]:
        listener = listen("tls://127.0.0.1:0", echo, **security.get_listen_args("scheduler"))  # type: ignore[no-untyped-call]
        await listener.start()
        path = socket_of(listener.contact_address, security)
        modes = stat.S_IMODE(path.stat().st_mode), stat.S_IMODE(path.parent.stat().st_mode)
        assert stat.S_ISSOCK(path.stat().st_mode)
        listener.stop()
        return modes

    assert asyncio.run(main()) == (0o600, 0o700)


def test_a_peer_without_the_backend_still_connects_over_tls(security: Security) -> None:
    samehost.install()

    comm, _, existed = asyncio.run(round_trip(security, stock_client=True))

    assert existed  # the listener offered the socket; the stock connector used TLS
    assert type(comm) is TLS
    assert comm.extra_info["peercert"]


def test_a_connector_without_tls_credentials_never_takes_the_socket(security: Security) -> None:
    samehost.install()

    async def main() -> None:
        listener = listen("tls://127.0.0.1:0", echo, **security.get_listen_args("scheduler"))  # type: ignore[no-untyped-call]
        await listener.start()
        try:
            connector = registry.get_backend("tls").get_connector()
            with pytest.raises(TypeError, match="ssl_context"):
                await connector.connect(listener.contact_address.removeprefix("tls://"))
        finally:
            listener.stop()

    asyncio.run(main())


def test_an_address_of_another_host_is_reached_over_tls(
    security: Security, monkeypatch: pytest.MonkeyPatch
) -> None:
    samehost.install()
    # As seen from a node whose interfaces do not include 127.0.0.1.
    monkeypatch.setattr(samehost, "_own_addresses", lambda: frozenset({"10.9.9.9"}))

    comm, _, existed = asyncio.run(round_trip(security))

    assert existed
    assert type(comm) is TLS


@pytest.mark.parametrize("problem", ["group-writable", "symlink", "not-ours"])
def test_a_directory_others_could_enter_is_never_used(
    security: Security,
    isolated: Path,
    problem: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    samehost.install()
    directory = samehost.socket_dir()
    if problem == "group-writable":
        directory.mkdir(mode=0o700)
        directory.chmod(0o770)
    elif problem == "symlink":
        target = isolated / "elsewhere"
        target.mkdir(mode=0o700)
        directory.symlink_to(target)
    else:
        directory.mkdir(mode=0o700)
        real_uid = os.getuid()
        monkeypatch.setattr(samehost.os, "getuid", lambda: real_uid + 1)
        directory = samehost.socket_dir()  # named for the "other" uid: make that one exist
        directory.mkdir(mode=0o700)

    with caplog.at_level(logging.WARNING, logger="jobstrap.engines.dask.samehost"):
        samehost._warn_once.cache_clear()
        comm, _, existed = asyncio.run(round_trip(security))

    assert not existed
    assert type(comm) is TLS
    assert "not a private directory" in caplog.text


def test_a_socket_left_by_a_killed_listener_falls_back_to_tls(security: Security) -> None:
    samehost.install()

    async def main() -> Any:
        # A stock TLS listener (no socket of its own) and a stale socket file at the
        # path its address names, as a killed process would leave.
        listener = TLSListener("127.0.0.1:0", echo, **security.get_listen_args("scheduler"))  # type: ignore[no-untyped-call]
        await listener.start()
        contact = listener.contact_address
        path = socket_of(contact, security)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(path))
        stale.close()
        comm = await connect(contact, **security.get_connection_args("worker"))  # type: ignore[no-untyped-call]
        await comm.write("ping")
        assert await comm.read() == "ping"
        await comm.close()
        listener.stop()
        return comm

    assert type(asyncio.run(main())) is TLS


def test_the_environment_can_turn_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    stock = registry.backends["tls"]
    for value in ("0", "false", "off", "No"):
        monkeypatch.setenv(samehost.ENV, value)
        assert not samehost.install()
        assert registry.backends["tls"] is stock
    monkeypatch.setenv(samehost.ENV, "1")
    assert samehost.install()


def test_workers_of_one_host_move_data_over_the_socket_and_stay_tls_for_others(
    security: Security,
) -> None:
    """A real scheduler, two workers and a client: the transfer between the workers
    runs over a same-host socket; a client without the backend still gets in."""
    samehost.install()

    async def main() -> tuple[list[type], int]:
        kwargs: dict[str, Any] = {"security": security, "host": "127.0.0.1"}
        async with (
            Scheduler(protocol="tls", dashboard_address=":0", **kwargs) as scheduler,
            Worker(scheduler.address, nthreads=1, **kwargs) as a,
            Worker(scheduler.address, nthreads=1, **kwargs) as b,
            Client(scheduler.address, security=security, asynchronous=True) as client,
        ):
            data = client.submit(os.urandom, 8 * 2**20, workers=[a.address], pure=False)
            size = await client.submit(len, data, workers=[b.address])
            pooled = [
                type(comm)
                for comms in (*b.rpc.available.values(), *b.rpc.occupied.values())
                for comm in comms
            ]
            return pooled, size

    pooled, size = asyncio.run(main())
    assert size == 8 * 2**20
    assert SameHostComm in pooled
    assert TLS not in pooled  # every peer of b is on this host


# ------------------------------------------------------- two runs of one user on one node


def test_a_peer_of_another_run_never_reaches_the_listener_over_the_socket() -> None:
    """Run B (its own CA) connecting to run A's listener on this host: before, the
    socket took it straight to A's handler; now it goes over TLS, which refuses it."""
    samehost.install()
    run_a = security_from_material(generate_tls_material())
    run_b = security_from_material(generate_tls_material())
    reached: list[Any] = []

    async def handler(comm: Any) -> None:
        reached.append(comm)
        await echo(comm)

    async def main() -> object:
        listener = listen("tls://127.0.0.1:0", handler, **run_a.get_listen_args("scheduler"))  # type: ignore[no-untyped-call]
        await listener.start()
        try:
            comm = await connect(  # type: ignore[no-untyped-call]
                listener.contact_address, timeout=3, **run_b.get_connection_args("worker")
            )
        except OSError as error:  # TLS: B's certificate is not signed by A's CA
            return error
        finally:
            listener.stop()
        await comm.close()
        return comm

    outcome = asyncio.run(main())

    assert not isinstance(outcome, SameHostComm)
    assert not [comm for comm in reached if isinstance(comm, SameHostComm)]
    assert isinstance(outcome, OSError), f"run B got a connection to run A: {outcome!r}"


def test_peers_of_one_run_with_contexts_of_their_own_still_use_the_socket() -> None:
    samehost.install()
    material = generate_tls_material()
    listening, connecting = security_from_material(material), security_from_material(material)

    comm, _, existed = asyncio.run(round_trip_between(listening, connecting))

    assert existed
    assert isinstance(comm, SameHostComm)


async def round_trip_between(listening: Security, connecting: Security) -> tuple[Any, str, bool]:
    listener = listen("tls://127.0.0.1:0", echo, **listening.get_listen_args("scheduler"))  # type: ignore[no-untyped-call]
    await listener.start()
    contact = listener.contact_address
    existed = socket_of(contact, listening).exists()
    comm = await connect(contact, **connecting.get_connection_args("worker"))  # type: ignore[no-untyped-call]
    await comm.write("ping")
    assert await comm.read() == "ping"
    await comm.close()
    listener.stop()
    return comm, contact, existed


def test_the_socket_of_another_run_has_another_name(security: Security) -> None:
    other = security_from_material(generate_tls_material())

    assert socket_of("127.0.0.1:8786", security) != socket_of("127.0.0.1:8786", other)
    assert socket_of("127.0.0.1:8786", security).name.startswith("127.0.0.1-8786-")


@pytest.mark.parametrize("attempt", ["another run's key", "nothing", "garbage"])
def test_a_process_that_finds_the_socket_file_cannot_connect_by_guessing(
    security: Security, attempt: str
) -> None:
    """Listing the user's socket directory gives the file; without the run's key the
    listener hands nothing to Dask and closes."""
    samehost.install()
    other_run = security_from_material(generate_tls_material())
    wrong_key = samehost.run_key(other_run.get_connection_args("worker")["ssl_context"])
    assert wrong_key is not None
    reached: list[Any] = []

    async def handler(comm: Any) -> None:
        reached.append(comm)

    async def main() -> bool | bytes:
        listener = listen("tls://127.0.0.1:0", handler, **security.get_listen_args("scheduler"))  # type: ignore[no-untyped-call]
        await listener.start()
        path = socket_of(listener.contact_address, security)
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, str(path))
            if attempt == "another run's key":
                return await samehost._prove_connector(sock, wrong_key)
            if attempt == "garbage":
                await loop.sock_sendall(sock, os.urandom(200))
            else:
                sock.shutdown(socket.SHUT_WR)
            # The listener closes: the read ends with EOF (or a reset), never Dask's bytes.
            try:
                return await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 15)
            except ConnectionResetError:
                return b""
        finally:
            sock.close()
            await asyncio.sleep(0.05)
            listener.stop()

    outcome = asyncio.run(main())

    assert outcome in (False, b"")
    assert not reached


def test_material_without_a_ca_uses_the_socket_and_never_meets_a_run_s() -> None:
    """``Security.temporary()`` (a self-signed leaf, no CA to key on) keeps the socket
    between its own ends; a jobstrap run connecting to it goes over TLS."""
    samehost.install()
    keyless = Security.temporary()  # type: ignore[no-untyped-call]
    run = security_from_material(generate_tls_material())

    comm, _, existed = asyncio.run(round_trip(keyless))
    assert existed
    assert isinstance(comm, SameHostComm)

    async def cross() -> object:
        listener = listen("tls://127.0.0.1:0", echo, **keyless.get_listen_args("scheduler"))  # type: ignore[no-untyped-call]
        await listener.start()
        try:
            return await connect(  # type: ignore[no-untyped-call]
                listener.contact_address, timeout=3, **run.get_connection_args("worker")
            )
        except OSError as error:
            return error
        finally:
            listener.stop()

    assert not isinstance(asyncio.run(cross()), SameHostComm)
