"""Same-host links over Unix sockets: what TLS guarantees there, without its cost.

Two processes of one run on one node (the workers of a node, the scheduler and the
app's client on the first node of an allocation) would otherwise talk TLS over the
node's own interface, and TLS doubles the CPU a Dask comm spends per MiB moved
(``bench/bench_tls.py``): a shuffle between the workers of one node would pay for
encrypting bytes that never leave the kernel.

:func:`install` replaces ``distributed``'s ``tls`` comm backend, in this process
only, with one that keeps every address ``tls://host:port`` and every TLS listener
as it is, and adds a Unix socket next to each listener. A process connecting to an
address of *its own* network namespace uses that socket when it exists, and TLS
otherwise, so peers without this backend (a laptop's client, another tool) connect
over TLS as before. What the socket keeps of TLS's guarantees, and how:

* confidentiality and integrity: the bytes never leave the kernel; no other user
  can read them (the same holds for loopback TCP, but not for its *port*);
* authentication, of the user: the socket lives in a directory that only the user
  can enter (0700, owned by the user, checked before every use, never a symlink),
  and both ends check the other's user id with ``SO_PEERCRED``. A connector without
  a TLS context (one that could not connect over TLS either) never takes the socket.
* authentication, of the run: two runs of one user on one node must not talk by
  accident (a worker of run B reaching run A's scheduler on a reused port, say).
  Each run's TLS material has a CA of its own, and TLS accepts only peers whose
  certificate chains to it; the socket asks the same of both ends. The *run key* is
  a hash of the CA certificates in the endpoint's TLS context (the run's ``ca.pem``,
  0600 in its run directory or, for ``jobstrap.mpi``, only in the launch's memory;
  never sent over the network, where TLS sends the leaf certificate only). The
  socket's file name carries a tag derived from that key, so a process of another
  run looks for another name; and before the first byte of Dask's protocol the two
  ends prove to each other that they hold the key (:func:`_prove_connector`,
  :func:`_prove_listener`: a nonce from each, an HMAC-SHA256 of both from each), so a
  process that finds the file by listing the directory cannot connect by guessing.
  A connector that fails this (another run) closes the socket and connects over
  TLS, which then succeeds or fails by certificate exactly as without sockets. It
  costs one round trip on the node and four HMACs per connection. TLS material
  whose trust anchor is not a CA certificate (``distributed``'s
  ``Security.temporary()``; never a run of jobstrap's) gives no key: its sockets
  stay bound to the user only, under names no keyed endpoint uses.

The directory is ``$XDG_RUNTIME_DIR/jobstrap`` when that is the user's private
runtime directory, else ``<tmp>/jobstrap-<uid>`` (``$TMPDIR`` or ``/tmp``): local to
the node. Socket files are named after the listener's contact address and its run's
tag, and removed when it stops; a file left by a killed process is replaced by the
next listener of that run on that address, and connecting to it fails over to TLS.
Set ``JOBSTRAP_SAME_HOST_SOCKETS=0`` to keep every link on TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import os
import socket
import ssl
import stat
import struct
import tempfile
import weakref
from pathlib import Path
from typing import Any

import dask.config
from dask.utils import parse_timedelta
from distributed.comm import registry
from distributed.comm.addressing import parse_host_port, unparse_host_port
from distributed.comm.core import CommClosedError
from distributed.comm.tcp import (
    MAX_BUFFER_SIZE,
    TCP,
    TLSBackend,
    TLSConnector,
    TLSListener,
)
from tornado.iostream import IOStream
from tornado.netutil import add_accept_handler, bind_unix_socket

__all__ = [
    "ENV",
    "SameHostTLSBackend",
    "install",
    "installed",
    "run_key",
    "socket_dir",
    "socket_path",
]

logger = logging.getLogger("jobstrap.engines.dask.samehost")

#: ``0`` (or ``false``/``no``/``off``) keeps every link on TLS.
ENV = "JOBSTRAP_SAME_HOST_SOCKETS"
#: ``sun_path`` is 108 bytes on Linux, with its terminating NUL.
_MAX_PATH = 107
_PEERCRED = struct.Struct("3i")  # pid, uid, gid
#: What a connector sends first: this protocol's version, then its nonce.
_HELLO = b"jobstrap-samehost-1"
_NONCE = 16
_MAC = hashlib.sha256().digest_size


def enabled() -> bool:
    """False when ``JOBSTRAP_SAME_HOST_SOCKETS`` turns same-host sockets off."""
    return os.environ.get(ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def install() -> bool:
    """Make this process's ``tls://`` comms use Unix sockets to same-host peers.

    Idempotent. Returns whether the backend is in place (False when turned off with
    ``JOBSTRAP_SAME_HOST_SOCKETS=0`` or on a platform without Unix sockets).
    """
    if not enabled() or not hasattr(socket, "AF_UNIX"):
        return False
    if not installed():
        registry.backends["tls"] = SameHostTLSBackend()
    return True


def installed() -> bool:
    """Whether this process's ``tls`` backend is :class:`SameHostTLSBackend`."""
    return isinstance(registry.backends.get("tls"), SameHostTLSBackend)


def socket_dir() -> Path:
    """The user's node-local directory for same-host sockets (not created here)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and _private(Path(runtime)):
        return Path(runtime) / "jobstrap"
    return Path(tempfile.gettempdir()) / f"jobstrap-{os.getuid()}"


_keys: weakref.WeakKeyDictionary[ssl.SSLContext, bytes | None] = weakref.WeakKeyDictionary()


def run_key(context: ssl.SSLContext) -> bytes | None:
    """The run key of a TLS context: a hash of the CA certificates it trusts.

    ``None`` when it trusts no CA certificate it can show (``distributed``'s
    ``Security.temporary()`` trusts a self-signed leaf, which ``ssl`` does not list):
    see :func:`_socket_name`.
    """
    try:
        return _keys[context]
    except KeyError:
        pass
    authorities = sorted(context.get_ca_certs(binary_form=True))
    key = None
    if authorities:
        digest = hashlib.sha256(b"jobstrap same-host run key\0")
        for der in authorities:
            digest.update(len(der).to_bytes(4, "big") + der)
        key = digest.digest()
    _keys[context] = key
    return key


def _tag(key: bytes) -> str:
    """The part of a socket's file name that names its run (not the key itself)."""
    return hmac.new(key, b"socket name", hashlib.sha256).hexdigest()[:16]


def _socket_name(address: str, key: bytes | None) -> str:
    """``host-port-tag``, the tag naming the run; ``host-port`` without a run key.

    Every run jobstrap makes has a CA (:mod:`jobstrap.net.security`), so has a key.
    A context without one (TLS material not made by jobstrap, such as
    ``Security.temporary()``) has nothing a peer could prove knowledge of: its
    sockets are bound to the user only and never meet a keyed one (other names).
    """
    host, port = parse_host_port(address)
    return f"{host}-{port}" if key is None else f"{host}-{port}-{_tag(key)}"


def socket_path(address: str, context: ssl.SSLContext) -> Path:
    """The socket of a listener with TLS context ``context`` (the run's) whose
    contact address is ``address`` (``host:port``)."""
    return socket_dir() / _socket_name(address, run_key(context))


def _mac(key: bytes, role: bytes, nonces: bytes) -> bytes:
    return hmac.new(key, role + nonces, hashlib.sha256).digest()


async def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes: never more, the rest is Dask's."""
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        if not chunk:
            raise ConnectionResetError("the peer closed during the run check")
        data += chunk
    return data


async def _prove_connector(sock: socket.socket, key: bytes) -> bool:
    """The connector's side of the run check: whether the listener is of our run.

    Sends ``hello + nonce``, checks the listener's ``nonce + HMAC``, answers with
    its own HMAC. A listener of another run cannot produce the HMAC, so we learn it
    before anything of ours is sent; ours cannot be replayed (fresh nonces).
    """
    loop = asyncio.get_running_loop()
    ours = os.urandom(_NONCE)
    await loop.sock_sendall(sock, _HELLO + ours)
    answer = await _recv_exactly(sock, _NONCE + _MAC)
    theirs, proof = answer[:_NONCE], answer[_NONCE:]
    nonces = ours + theirs
    if not hmac.compare_digest(proof, _mac(key, b"listener", nonces)):
        return False
    await loop.sock_sendall(sock, _mac(key, b"connector", nonces))
    return True


async def _prove_listener(sock: socket.socket, key: bytes) -> bool:
    """The listener's side of the run check: whether the connector is of our run."""
    loop = asyncio.get_running_loop()
    hello = await _recv_exactly(sock, len(_HELLO) + _NONCE)
    if not hmac.compare_digest(hello[: len(_HELLO)], _HELLO):
        return False
    theirs = hello[len(_HELLO) :]
    ours = os.urandom(_NONCE)
    nonces = theirs + ours
    await loop.sock_sendall(sock, ours + _mac(key, b"listener", nonces))
    proof = await _recv_exactly(sock, _MAC)
    return hmac.compare_digest(proof, _mac(key, b"connector", nonces))


def _private(directory: Path) -> bool:
    """A directory (not a symlink) owned by this user that nobody else may enter."""
    try:
        info = directory.lstat()
    except OSError:
        return False
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.getuid()
        and stat.S_IMODE(info.st_mode) & 0o077 == 0
    )


def _usable_dir(create: bool) -> Path | None:
    directory = socket_dir()
    if create:
        with contextlib.suppress(FileExistsError, OSError):
            directory.mkdir(mode=0o700)
    if _private(directory):
        return directory
    if directory.exists() or directory.is_symlink():
        _warn_once(f"{directory} is not a private directory of this user; same-host links use TLS")
    return None


@functools.cache
def _warn_once(message: str) -> None:
    logger.warning(message)


@functools.lru_cache(maxsize=1)
def _own_addresses() -> frozenset[str]:
    """This network namespace's IP addresses (a node's, on a cluster)."""
    import psutil

    return frozenset(
        entry.address.split("%", 1)[0]
        for entries in psutil.net_if_addrs().values()
        for entry in entries
        if entry.family in (socket.AF_INET, socket.AF_INET6)
    )


def _peer_uid(sock: socket.socket) -> int:
    _, uid, _ = _PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    )
    return int(uid)


class _UnixSocket(socket.socket):
    """A Unix stream socket that ignores TCP options.

    ``distributed`` sets TCP keep-alive and user-timeout options on every stream it
    wraps; they do not apply to a Unix socket (whose peer cannot vanish without the
    kernel closing it) and would fail there.
    """

    def setsockopt(self, level: int, option: int, *value: Any) -> None:
        if level == socket.IPPROTO_TCP:
            return
        super().setsockopt(level, option, *value)


class SameHostComm(TCP):
    """A ``distributed`` comm over a same-host Unix socket (framing as TCP's)."""

    @property
    def extra_info(self) -> dict[str, Any]:
        return {**self._extra, "same_host_socket": True}


def _comm(sock: socket.socket, local: str, peer: str, deserialize: bool) -> SameHostComm:
    unix = _UnixSocket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=sock.detach())
    stream = IOStream(unix, max_buffer_size=MAX_BUFFER_SIZE)
    return SameHostComm(stream, local, peer, deserialize)


class SameHostTLSConnector(TLSConnector):
    """TLS, or the listener's Unix socket when the address is this host's."""

    async def connect(self, address: str, deserialize: bool = True, **connection_args: Any) -> Any:
        # Only a process that could connect over TLS (it has a TLS context) may take
        # the socket: it must not widen who can connect.
        context = connection_args.get("ssl_context")
        if isinstance(context, ssl.SSLContext):
            # ... and only a peer of the same run (see the module's docstring).
            comm = await _connect_same_host(address, deserialize, run_key(context))
            if comm is not None:
                return comm
        return await super().connect(address, deserialize, **connection_args)  # type: ignore[no-untyped-call]


async def _connect_same_host(
    address: str, deserialize: bool, key: bytes | None
) -> SameHostComm | None:
    host, _ = parse_host_port(address)
    if host not in _own_addresses():
        return None
    directory = _usable_dir(create=False)
    if directory is None:
        return None
    path = directory / _socket_name(address, key)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # A Unix connect completes at once or fails at once (EAGAIN when the
        # listener's backlog is full): no waiting, and any failure means TLS.
        sock.setblocking(False)
        sock.connect(str(path))
        if _peer_uid(sock) != os.getuid():
            raise PermissionError(f"{path}: listener belongs to another user")
        if key is not None and not await _prove_connector(sock, key):
            raise PermissionError(f"{path}: listener belongs to another run")
    except OSError as error:
        sock.close()
        if not isinstance(error, (FileNotFoundError, ConnectionRefusedError)):
            logger.debug("same-host socket %s unusable (%s); using TLS", path, error)
        return None
    local = "tls://" + unparse_host_port(host, 0)
    return _comm(sock, local, "tls://" + address, deserialize)


class SameHostTLSListener(TLSListener):
    """A TLS listener with a Unix socket beside it for same-host peers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._unix: socket.socket | None = None
        self._unix_path: Path | None = None
        self._unix_inode = 0
        self._key = run_key(self.server_args["ssl_options"])
        self._stop_accepting: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await super().start()  # type: ignore[no-untyped-call]
        directory = _usable_dir(create=True)
        if directory is None:
            return
        path = directory / _socket_name(self.contact_address[len(self.prefix) :], self._key)
        if len(os.fsencode(path)) > _MAX_PATH:
            _warn_once(f"{directory}: path too long for Unix sockets; same-host links use TLS")
            return
        backlog = int(dask.config.get("distributed.comm.socket-backlog"))
        try:
            self._unix = bind_unix_socket(str(path), mode=0o600, backlog=backlog)
        except (OSError, ValueError) as error:
            logger.debug("no same-host socket at %s (%s); TLS only", path, error)
            return
        self._unix_path, self._unix_inode = path, path.lstat().st_ino
        self._stop_accepting = add_accept_handler(self._unix, self._accept)

    def _accept(self, connection: socket.socket, _address: Any) -> None:
        task = asyncio.ensure_future(self._handle_unix(connection))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle_unix(self, connection: socket.socket) -> None:
        try:
            uid = _peer_uid(connection)
        except OSError:
            connection.close()
            return
        if uid != os.getuid() or self.tcp_server is None:
            # Another user (impossible through a 0700 directory, checked anyway), or
            # stop() ran after the accept: closing lets the peer see it at once.
            connection.close()
            return
        same_run = True
        if self._key is not None:
            try:
                connection.setblocking(False)
                # As long as a TLS handshake may take: a peer that connected and went
                # silent must not hold a task forever, a busy one must not be cut off.
                timeout = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"))
                same_run = await asyncio.wait_for(_prove_listener(connection, self._key), timeout)
            except (OSError, asyncio.TimeoutError):
                same_run = False
        if not same_run:
            # Another run of this user (or a process guessing): it gets nothing of
            # ours and connects over TLS, where its certificate decides.
            logger.debug("same-host connection of another run refused on %s", self._unix_path)
            connection.close()
            return
        contact = self.contact_address
        host, _ = parse_host_port(contact[len(self.prefix) :])
        peer = self.prefix + unparse_host_port(host, 0)
        comm = _comm(connection, contact, peer, self.deserialize)
        comm.allow_offload = self.allow_offload
        try:
            await self.on_connection(comm)
        except CommClosedError:
            logger.info("same-host connection closed before its handshake completed")
            return
        await self.comm_handler(comm)

    def stop(self) -> None:
        if self._stop_accepting is not None:
            self._stop_accepting()
            self._stop_accepting = None
        if self._unix is not None:
            path, self._unix_path = self._unix_path, None
            with contextlib.suppress(OSError):
                # Remove the file only while it is still ours (a new listener on
                # the same address after a restart may have replaced it).
                if path is not None and path.lstat().st_ino == self._unix_inode:
                    path.unlink()
            self._unix.close()
            self._unix = None
        super().stop()  # type: ignore[no-untyped-call]


class SameHostTLSBackend(TLSBackend):
    """``distributed``'s TLS backend, with same-host Unix sockets."""

    _connector_class = SameHostTLSConnector
    _listener_class = SameHostTLSListener
