"""The run's Ray secrets: an authentication token and, with TLS, per-node certificates.

Ray's gRPC checks that a server's certificate names the IP address it is dialled
at (``No match found for server name: 10.0.0.2``) and has no setting to check a
fixed name instead, so the run's one certificate (named ``jobstrap-run``, made
before anyone knows the nodes) cannot serve Ray. The head rank therefore makes a
CA for Ray at start-up, and every node signs a certificate for its own address
with it, in its private directory. The CA's key is in the run directory (0600,
like the token, which grants as much) only while nodes join: the head removes it
once all of them have (:func:`forget_ca_key`) and when the run ends.

Files in ``<run_dir>/ray/`` (0700): ``token``, ``ca.pem``, ``ca-key.pem``. Each is
read only if the current user owns it and nobody else could have replaced it
(:func:`jobstrap.store.rundir.read_private_bytes`).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import secrets
from pathlib import Path
from typing import Any

from jobstrap.engines.ray.plan import TLSPaths
from jobstrap.errors import UserError
from jobstrap.store.rundir import (
    UnsafePathError,
    atomic_write_bytes,
    ensure_private_dir,
    read_private_bytes,
)

__all__ = [
    "ClientFiles",
    "RunSecrets",
    "create_client_files",
    "create_run_secrets",
    "forget_ca_key",
    "head_secrets",
    "node_certificate",
    "secrets_dir",
    "write_node_files",
]

_CLOCK_SKEW = datetime.timedelta(minutes=10)


def secrets_dir(run_dir: str | os.PathLike[str]) -> Path:
    """``<run_dir>/ray``: where the head rank leaves the run's Ray secrets."""
    return Path(run_dir) / "ray"


class RunSecrets:
    """The token and (with TLS) the Ray CA, as the head rank made them."""

    def __init__(self, token: bytes, ca: bytes | None, ca_key: bytes | None) -> None:
        self.token = token
        self.ca = ca
        self.ca_key = ca_key

    @property
    def tls(self) -> bool:
        """Whether the run uses TLS (a CA exists)."""
        return self.ca is not None

    @classmethod
    def read(cls, run_dir: str | os.PathLike[str], *, tls: bool) -> RunSecrets:
        """Read what the head rank wrote (a worker node's rank, after the rendezvous).

        Raises
        ------
        UserError
            A file is missing or another user could have replaced it.
        """
        where = secrets_dir(run_dir)
        try:
            token = read_private_bytes(where / "token")
            ca = read_private_bytes(where / "ca.pem") if tls else None
            ca_key = read_private_bytes(where / "ca-key.pem") if tls else None
        except FileNotFoundError as error:
            raise UserError(
                f"ray: {error.filename}: missing (the head rank writes it before it "
                "publishes its address; is the run directory shared with this node?)"
            ) from None
        except UnsafePathError as error:
            raise UserError(f"ray: {error}") from None
        return cls(token, ca, ca_key)


def create_run_secrets(run_dir: str | os.PathLike[str], *, tls: bool) -> RunSecrets:
    """Make the run's token and (with ``tls``) its Ray CA; write them 0600."""
    where = ensure_private_dir(secrets_dir(run_dir))
    token = secrets.token_hex(32).encode()  # Ray's own token: 256 random bits
    atomic_write_bytes(where / "token", token)
    ca = ca_key = None
    if tls:
        ca, ca_key = _make_ca()
        atomic_write_bytes(where / "ca-key.pem", ca_key)
        atomic_write_bytes(where / "ca.pem", ca)
    return RunSecrets(token, ca, ca_key)


def head_secrets(run_dir: str | os.PathLike[str], *, tls: bool) -> RunSecrets:
    """The secrets the head starts with: the submitting side's, when it made them.

    A Ray cluster job (``jobstrap.RayCluster``) has its token, CA and the
    submitting machine's certificate made before it is submitted, so the driver
    there holds them before any node exists. Anything incomplete (no secrets yet,
    or a requeued run whose CA key is gone) gets a new set.
    """
    where = secrets_dir(run_dir)
    needed = ["token", "ca.pem", "ca-key.pem"] if tls else ["token"]
    if all((where / name).exists() for name in needed):
        try:
            return RunSecrets.read(run_dir, tls=tls)
        except UserError:
            pass  # unreadable: replaced below (an unsafe directory still stops there)
    return create_run_secrets(run_dir, tls=tls)


class ClientFiles:
    """What a driver outside the run's nodes needs: the token and its own certificate."""

    def __init__(self, token: Path, tls: TLSPaths | None) -> None:
        self.token = token
        self.tls = tls


def create_client_files(
    run_dir: str | os.PathLike[str], addresses: list[str], *, tls: bool
) -> ClientFiles:
    """Make the run's secrets now, and a certificate for a driver at ``addresses``.

    For a Ray cluster job, before it is submitted: the head then starts with these
    secrets (:func:`head_secrets`), and a driver on this machine connects with the
    token and (with ``tls``) ``ray/client/cert.pem`` naming ``addresses``, all 0600
    in the run's 0700 directory.
    """
    run_secrets = create_run_secrets(run_dir, tls=tls)
    where = secrets_dir(run_dir)
    if run_secrets.ca is None or run_secrets.ca_key is None:
        return ClientFiles(where / "token", None)
    client = ensure_private_dir(where / "client")
    cert, key = node_certificate(run_secrets.ca, run_secrets.ca_key, addresses)
    paths = TLSPaths(
        ca=str(where / "ca.pem"),
        cert=str(atomic_write_bytes(client / "cert.pem", cert)),
        key=str(atomic_write_bytes(client / "key.pem", key)),
    )
    return ClientFiles(where / "token", paths)


def forget_ca_key(run_dir: str | os.PathLike[str]) -> None:
    """Remove the CA's key: no node can be certified for this run any more."""
    with contextlib.suppress(FileNotFoundError):
        (secrets_dir(run_dir) / "ca-key.pem").unlink()


def _make_ca() -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jobstrap-ray CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _pem(cert, key)


def node_certificate(ca: bytes, ca_key: bytes, addresses: list[str]) -> tuple[bytes, bytes]:
    """A certificate (and its key) naming ``addresses``, signed by the run's Ray CA.

    Each address goes in both as an IP address and as a DNS name: gRPC matches an
    IP target against either, depending on its version.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    issuer = x509.load_pem_x509_certificate(ca)
    signer = serialization.load_pem_private_key(ca_key, password=None)
    assert isinstance(signer, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for address in dict.fromkeys(addresses):
        names.append(x509.IPAddress(ipaddress.ip_address(address)))
        names.append(x509.DNSName(address))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, addresses[0])]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            # Every Ray process is both a server and a client of its peers.
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(signer, hashes.SHA256())
    )
    return _pem(cert, key)


def write_node_files(
    temp_dir: str, run_secrets: RunSecrets, node_ip: str
) -> tuple[str, TLSPaths | None]:
    """Put the token (and this node's certificate) in the node's private directory.

    Every Ray process reads them at start: from the node's own disk, not the
    shared file system. Returns the token file and the TLS paths (or None).
    """
    secret_dir = ensure_private_dir(Path(temp_dir) / "secrets")
    token_file = atomic_write_bytes(secret_dir / "token", run_secrets.token)
    if run_secrets.ca is None or run_secrets.ca_key is None:
        return str(token_file), None
    cert, key = node_certificate(run_secrets.ca, run_secrets.ca_key, [node_ip, "127.0.0.1"])
    paths = TLSPaths(
        ca=str(atomic_write_bytes(secret_dir / "ca.pem", run_secrets.ca)),
        cert=str(atomic_write_bytes(secret_dir / "cert.pem", cert)),
        key=str(atomic_write_bytes(secret_dir / "key.pem", key)),
    )
    return str(token_file), paths


def _pem(cert: Any, key: Any) -> tuple[bytes, bytes]:
    """``cert`` and its unencrypted ``key`` as PEM (callers write the key 0600)."""
    from cryptography.hazmat.primitives import serialization

    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
