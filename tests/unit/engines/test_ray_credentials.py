"""The run's Ray secrets: a token, a CA for Ray, a certificate per node address."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from jobstrap.engines.ray import credentials
from jobstrap.errors import UserError


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir(mode=0o700, parents=True)
    return run


def test_the_head_writes_a_private_token_and_ca_and_a_node_reads_them(tmp_path: Path) -> None:
    run = _run(tmp_path)
    made = credentials.create_run_secrets(run, tls=True)
    for name in ("token", "ca.pem", "ca-key.pem"):
        assert stat.S_IMODE(os.stat(run / "ray" / name).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(run / "ray").st_mode) == 0o700
    read = credentials.RunSecrets.read(run, tls=True)
    assert (read.token, read.ca, read.ca_key) == (made.token, made.ca, made.ca_key)
    assert len(read.token) == 64


def test_each_run_gets_its_own_token(tmp_path: Path) -> None:
    a = credentials.create_run_secrets(_run(tmp_path / "a"), tls=False)
    b = credentials.create_run_secrets(_run(tmp_path / "b"), tls=False)
    assert a.token != b.token
    assert a.ca is None


def test_a_node_certificate_names_its_address_and_chains_to_the_runs_ca(tmp_path: Path) -> None:
    made = credentials.create_run_secrets(_run(tmp_path), tls=True)
    assert made.ca is not None
    assert made.ca_key is not None
    cert_pem, _ = credentials.node_certificate(made.ca, made.ca_key, ["10.1.0.7", "127.0.0.1"])
    cert = x509.load_pem_x509_certificate(cert_pem)
    ca = x509.load_pem_x509_certificate(made.ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("10.1.0.7") in names.get_values_for_type(x509.IPAddress)
    assert "10.1.0.7" in names.get_values_for_type(x509.DNSName)
    assert cert.issuer == ca.subject
    public = ca.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    cert.verify_directly_issued_by(ca)


def test_a_secret_another_user_could_replace_is_refused(tmp_path: Path) -> None:
    run = _run(tmp_path)
    credentials.create_run_secrets(run, tls=False)
    os.chmod(run / "ray", 0o777)
    with pytest.raises(UserError, match="ray"):
        credentials.RunSecrets.read(run, tls=False)


def test_a_missing_secret_says_the_run_directory_may_not_be_shared(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="shared"):
        credentials.RunSecrets.read(_run(tmp_path), tls=False)


def test_once_the_ca_key_is_forgotten_no_node_can_be_certified(tmp_path: Path) -> None:
    run = _run(tmp_path)
    credentials.create_run_secrets(run, tls=True)
    credentials.forget_ca_key(run)
    assert not (run / "ray" / "ca-key.pem").exists()
    with pytest.raises(UserError, match=r"ca-key\.pem"):
        credentials.RunSecrets.read(run, tls=True)


def test_node_files_go_to_the_nodes_private_directory(tmp_path: Path) -> None:
    made = credentials.create_run_secrets(_run(tmp_path), tls=True)
    node_dir = tmp_path / "node"
    node_dir.mkdir(mode=0o700)
    token, tls = credentials.write_node_files(str(node_dir), made, "10.1.0.7")
    assert Path(token).read_bytes() == made.token
    assert tls is not None
    for path in (token, tls.ca, tls.cert, tls.key):
        assert Path(path).parent == node_dir / "secrets"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_the_head_starts_with_the_secrets_a_ray_cluster_client_made_before_submitting(
    tmp_path: Path,
) -> None:
    run = _run(tmp_path)
    client = credentials.create_client_files(run, ["127.0.0.1", "10.1.2.3"], tls=True)

    head = credentials.head_secrets(run, tls=True)

    assert head.token == Path(client.token).read_bytes()
    assert client.tls is not None
    assert head.ca == Path(client.tls.ca).read_bytes()
    # The driver's certificate is the run CA's and names the submitting machine.
    cert = x509.load_pem_x509_certificate(Path(client.tls.cert).read_bytes())
    ca = x509.load_pem_x509_certificate(head.ca or b"")
    assert cert.issuer == ca.subject
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("10.1.2.3") in names.get_values_for_type(x509.IPAddress)
    for path in (client.token, client.tls.cert, client.tls.key):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(run / "ray" / "client").st_mode) == 0o700


def test_the_head_makes_new_secrets_when_none_or_only_part_of_them_exist(tmp_path: Path) -> None:
    run = _run(tmp_path)
    first = credentials.head_secrets(run, tls=True)
    assert first.ca_key is not None
    credentials.forget_ca_key(run)  # a requeued run: its nodes could not be certified

    second = credentials.head_secrets(run, tls=True)

    assert second.ca_key is not None
    assert second.token != first.token
