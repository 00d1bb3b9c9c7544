"""The client certificate a user's Prometheus presents to their runs' metrics endpoints.

Metrics endpoints speak HTTPS and require a client certificate (mutual TLS). Each
run has its own CA, but Prometheus takes one TLS configuration per scrape job, not
per target, so the scraper cannot present each run's certificate. Instead, once per
user (per run root), a small CA of its own signs one client certificate
(``<run_root>/.metrics/client/{ca,cert,key}.pem``, 0600 in 0700; the CA's key is
discarded at once, as for runs). Every metrics endpoint accepts a client
certificate that chains to its run's CA *or* to this CA; the Prometheus presents
this one and checks the endpoints against the runs' CAs (the aggregate
``ca-bundle.pem``) under the name every run certificate carries
(:data:`SERVER_NAME`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from jobstrap.metrics.targets import aggregate_dir
from jobstrap.net.security import TLSFiles, generate_tls_material
from jobstrap.store.rundir import atomic_write_bytes, check_private, ensure_private_dir

__all__ = ["CLIENT_NAME", "SERVER_NAME", "client_files", "ensure_client_pki", "trusted_client_ca"]

#: The DNS name in every run's certificate: the name a scraper verifies.
SERVER_NAME = "jobstrap-run"
#: The common name of the scraper's client certificate.
CLIENT_NAME = "jobstrap-metrics-client"


def client_files(run_root: str | os.PathLike[str]) -> TLSFiles:
    """Paths of the user's scraper certificate under ``run_root`` (nothing is created)."""
    where = aggregate_dir(run_root) / "client"
    return TLSFiles(ca=where / "ca.pem", cert=where / "cert.pem", key=where / "key.pem")


def ensure_client_pki(run_root: str | os.PathLike[str]) -> TLSFiles:
    """Create the scraper's CA and client certificate once; return their paths.

    Two processes racing here may both generate material; the last rename wins for
    each file, so the CA and the certificate could come from different runs of
    this function: the files are written key, certificate, CA and a mismatch is
    repaired by the next call (:func:`_consistent`).
    """
    files = client_files(run_root)
    if files.exist() and _consistent(files):
        return files
    material = generate_tls_material(valid_days=3650, common_name=CLIENT_NAME)
    ensure_private_dir(files.directory)
    atomic_write_bytes(files.key, material.key)
    atomic_write_bytes(files.cert, material.cert)
    atomic_write_bytes(files.ca, material.ca)
    return files


def _consistent(files: TLSFiles) -> bool:
    from cryptography import x509

    try:
        ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        cert.verify_directly_issued_by(ca)
    except Exception:  # unreadable, not PEM, not signed by that CA
        return False
    return True


def trusted_client_ca(run_dir: str | os.PathLike[str]) -> Path | None:
    """The scraper CA an endpoint of ``run_dir`` accepts, if it exists and is private.

    A CA file another user could have replaced would let them read the metrics:
    such a file is ignored (the run's own CA still works).
    """
    path = client_files(Path(run_dir).parent).ca
    with contextlib.suppress(Exception):
        check_private(path)
        return path
    return None
