"""Per-run TLS material: a CA and one certificate for the whole run.

Before a run is submitted, :func:`create_tls` makes a fresh certificate authority
and one key/certificate pair signed by it, and writes ``ca.pem``, ``cert.pem`` and
``key.pem`` into ``<run_dir>/tls/`` (directory 0700, files 0600, created private
from the first byte). The CA's private key is never written anywhere: once the
run's certificate is signed nobody, including us, can mint another one.

Scheduler, workers and the submitting client all present the same certificate and
require the peer's to chain to the run's CA (mutual TLS, which is how
``distributed`` configures its SSL contexts), so a client without the run's files
cannot connect even if it can reach the port. Hostname checks are off in
``distributed`` (clusters use IP addresses); the CA being unique to the run is what
binds the certificate to it.

Three ways to use the files:

* :func:`load_security` returns a ``distributed.Security`` for code that builds
  scheduler/worker/client objects itself;
* :func:`tls_config` returns the same as dask config keys for ``dask.config.set``;
* :func:`tls_env` returns them as ``DASK_DISTRIBUTED__COMM__...`` environment
  variables, so a plain ``distributed.Client()`` in a user's app picks TLS up.

Opting out is explicit: run with protocol ``tcp`` and do not create the files (the
profile logs one warning when it resolves to ``tcp``). The files are used only if the
user owns them and nobody else could have replaced them
(:func:`jobstrap.store.rundir.check_private`).
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobstrap.errors import UserError
from jobstrap.store.rundir import atomic_write_bytes, check_private, ensure_private_dir

if TYPE_CHECKING:
    from distributed import Security

__all__ = [
    "INSECURE_CHOICES",
    "TLSFiles",
    "TLSMaterial",
    "create_tls",
    "generate_tls_material",
    "load_security",
    "security_from_material",
    "tls_config",
    "tls_config_from_material",
    "tls_env",
    "tls_files",
    "warn_insecure",
]

#: Subject/SAN of the run's certificate; ``distributed`` does not check hostnames.
_CERT_NAME = "jobstrap-run"
#: Accept certificates from nodes whose clocks are a little behind ours.
_CLOCK_SKEW = datetime.timedelta(minutes=10)


@dataclass(frozen=True)
class TLSFiles:
    """Paths of one run's TLS material.

    Attributes
    ----------
    ca
        ``tls/ca.pem``: the run's CA certificate (trust anchor).
    cert
        ``tls/cert.pem``: the run's certificate, signed by the CA.
    key
        ``tls/key.pem``: the private key of ``cert``.
    """

    ca: Path
    cert: Path
    key: Path

    @property
    def directory(self) -> Path:
        """The ``tls/`` directory."""
        return self.ca.parent

    def exist(self) -> bool:
        """Whether all three files are present."""
        return self.ca.is_file() and self.cert.is_file() and self.key.is_file()


def tls_files(run_dir: str | os.PathLike[str]) -> TLSFiles:
    """Return the TLS paths of ``run_dir`` (nothing is read or created)."""
    tls = Path(run_dir) / "tls"
    return TLSFiles(ca=tls / "ca.pem", cert=tls / "cert.pem", key=tls / "key.pem")


@dataclass(frozen=True)
class TLSMaterial:
    """One run's TLS material as PEM bytes (CA certificate, certificate, key)."""

    ca: bytes
    cert: bytes
    key: bytes


def generate_tls_material(*, valid_days: int = 90, common_name: str = _CERT_NAME) -> TLSMaterial:
    """Make a fresh CA and one certificate signed by it, in memory.

    The CA's private key is discarded on return: nobody can sign another
    certificate for this run.

    Parameters
    ----------
    valid_days
        Lifetime of the CA and the certificate.
    common_name
        Subject common name and DNS SAN of the certificate.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    not_before = now - _CLOCK_SKEW
    not_after = now + datetime.timedelta(days=valid_days)

    # P-256 keys are generated in microseconds (RSA takes long enough to notice on a
    # login node) and every OpenSSL that distributed supports speaks ECDSA.
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(ca=True),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(ca=False),
            critical=True,
        )
        .add_extension(
            # Every process is both server and client of its peers.
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return TLSMaterial(
        ca=ca_cert.public_bytes(serialization.Encoding.PEM),
        cert=cert.public_bytes(serialization.Encoding.PEM),
        key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def create_tls(
    run_dir: str | os.PathLike[str],
    *,
    valid_days: int = 90,
    common_name: str = _CERT_NAME,
) -> TLSFiles:
    """Create the run's CA and certificate in ``<run_dir>/tls/``.

    Parameters
    ----------
    run_dir
        The run directory (a path or :class:`jobstrap.store.rundir.RunDir`).
    valid_days
        Lifetime of the CA and the certificate.
    common_name
        Subject common name and DNS SAN of the certificate.

    Returns
    -------
    TLSFiles
        The paths written.

    Raises
    ------
    FileExistsError
        If the run already has TLS material: replacing it would lock out the
        jobs that use the old one.
    """
    files = tls_files(run_dir)
    for path in (files.ca, files.cert, files.key):
        if path.exists():
            raise FileExistsError(f"{path} already exists; TLS material is created once per run")
    material = generate_tls_material(valid_days=valid_days, common_name=common_name)
    ensure_private_dir(files.directory)
    atomic_write_bytes(files.key, material.key)
    atomic_write_bytes(files.cert, material.cert)
    atomic_write_bytes(files.ca, material.ca)
    return files


def security_from_material(material: TLSMaterial) -> Security:
    """A ``distributed.Security`` holding ``material`` in memory (no files).

    For launches without a shared run directory (``jobstrap.engines.dask.mpi_compat.initialize``),
    where rank 0 generates the material and broadcasts it.
    """
    from jobstrap.net.dasktls import RunSecurity

    return RunSecurity(  # type: ignore[no-untyped-call]
        require_encryption=True, **_material_fields(material)
    )


def tls_config_from_material(material: TLSMaterial) -> dict[str, Any]:
    """:func:`tls_config` for in-memory material (PEM text as config values)."""
    fields = _material_fields(material)
    config: dict[str, Any] = {
        "distributed.comm.require-encryption": True,
        "distributed.comm.default-scheme": "tls",
        "distributed.comm.tls.ca-file": fields["tls_ca_file"],
    }
    for role in ("scheduler", "worker", "client"):
        config[f"distributed.comm.tls.{role}.cert"] = fields[f"tls_{role}_cert"]
        config[f"distributed.comm.tls.{role}.key"] = fields[f"tls_{role}_key"]
    return config


def _material_fields(material: TLSMaterial) -> dict[str, str]:
    # distributed treats a value containing a newline as PEM text, not a path.
    ca, cert, key = (material.ca.decode(), material.cert.decode(), material.key.decode())
    fields = {"tls_ca_file": ca}
    for role in ("scheduler", "worker", "client"):
        fields[f"tls_{role}_cert"] = cert
        fields[f"tls_{role}_key"] = key
    return fields


def _require_files(run_dir: str | os.PathLike[str]) -> TLSFiles:
    files = tls_files(run_dir)
    if not files.exist():
        raise UserError(
            f"{files.directory}: no TLS material (ca.pem, cert.pem, key.pem); create it "
            "with jobstrap.net.security.create_tls before submitting, or opt out with protocol tcp"
        )
    _check_files(files)
    return files


def _check_files(files: TLSFiles) -> None:
    # Whoever can replace these can stand in for our scheduler (and so run code as us).
    for path in (files.ca, files.cert, files.key):
        check_private(path)


def tls_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Return dask config keys that make every role use the run's TLS material.

    Raises
    ------
    UserError
        If the files do not exist.
    """
    files = _require_files(run_dir)
    config: dict[str, Any] = {
        "distributed.comm.require-encryption": True,
        "distributed.comm.default-scheme": "tls",
        "distributed.comm.tls.ca-file": str(files.ca),
    }
    for role in ("scheduler", "worker", "client"):
        config[f"distributed.comm.tls.{role}.cert"] = str(files.cert)
        config[f"distributed.comm.tls.{role}.key"] = str(files.key)
    return config


def tls_env(run_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Return :func:`tls_config` as ``DASK_...`` environment variables.

    dask reads these when it is imported, so they must be in the environment of
    the process before ``dask`` is imported (or call ``dask.config.refresh()``).
    """
    env: dict[str, str] = {}
    for key, value in tls_config(run_dir).items():
        name = "DASK_" + "__".join(part.replace("-", "_").upper() for part in key.split("."))
        env[name] = "True" if value is True else str(value)
    return env


def load_security(run_dir: str | os.PathLike[str], *, require: bool = True) -> Security:
    """Return a ``distributed.Security`` for the run's TLS material.

    Parameters
    ----------
    run_dir
        The run directory.
    require
        If true (default), missing files are an error. If false, missing files
        give a ``Security()`` without TLS (the explicit ``tcp`` opt-out).

    Returns
    -------
    distributed.Security
        With ``require_encryption=True`` and the same certificate for the
        scheduler, worker and client roles.

    Raises
    ------
    UserError
        If ``require`` and the files do not exist, or if another user owns them or
        could have replaced them (:class:`~jobstrap.store.rundir.UnsafePathError`).
    """
    from distributed import Security

    from jobstrap.net.dasktls import RunSecurity

    files = tls_files(run_dir)
    if not files.exist():
        if require:
            _require_files(run_dir)
        return Security(require_encryption=False)  # type: ignore[no-untyped-call]
    _check_files(files)
    paths = {"ca": str(files.ca), "cert": str(files.cert), "key": str(files.key)}
    return RunSecurity(  # type: ignore[no-untyped-call]
        require_encryption=True,
        tls_ca_file=paths["ca"],
        tls_scheduler_cert=paths["cert"],
        tls_scheduler_key=paths["key"],
        tls_worker_cert=paths["cert"],
        tls_worker_key=paths["key"],
        tls_client_cert=paths["cert"],
        tls_client_key=paths["key"],
    )


def _key_usage(*, ca: bool) -> Any:
    """What a key may do: a CA signs certificates; a process's key signs handshakes."""
    from cryptography import x509  # heavy: only where certificates are made

    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


#: The insecure choices a user can make, and the risk each warning names.
INSECURE_CHOICES = {
    "plaintext": (
        "protocol tcp (from {source}): TLS is off, so anyone who can reach the scheduler's "
        "or workers' ports can run code as you; use protocol tls unless that network is yours"
    ),
    "dashboard": (
        "dashboard_bind interface (from {source}): the dashboard is plain HTTP without a "
        "login, so anyone who can reach the scheduler's address reads your tasks, logs and "
        "stack traces; keep the default (loopback) and use `jobstrap tunnel` unless that "
        "network is yours"
    ),
}

#: The choices already warned about in this process (each warning is given once).
_warned: set[str] = set()


def warn_insecure(choice: str, source: str) -> None:
    """Say once per process that an insecure choice is in force, naming its risk.

    Parameters
    ----------
    choice
        A key of :data:`INSECURE_CHOICES`: ``"plaintext"`` (``protocol: tcp``, or
        ``jobstrap.mpi.initialize(protocol="tcp")``) or ``"dashboard"``
        (``dashboard_bind: interface``, or an explicit dashboard host).
    source
        Where the choice came from, for the message.
    """
    if choice in _warned:
        return
    _warned.add(choice)
    logging.getLogger("jobstrap").warning(INSECURE_CHOICES[choice].format(source=source))
