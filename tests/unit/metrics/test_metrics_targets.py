"""Targets files: one per run, one aggregate per user, private and atomic; the scraper PKI."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

from jobstrap.metrics.pki import client_files, ensure_client_pki, trusted_client_ca
from jobstrap.metrics.targets import (
    LABELS,
    STALE_AFTER,
    Target,
    aggregate_files,
    run_targets_file,
    update_aggregate,
    write_run_targets,
)
from jobstrap.net.security import create_tls
from jobstrap.store.rundir import RunDir


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _run(root: Path, name: str) -> RunDir:
    run = RunDir.create(root, name)
    create_tls(run)
    return run


def test_a_run_s_targets_are_private_and_carry_every_label(tmp_path: Path) -> None:
    run = _run(tmp_path, "run-a")
    write_run_targets(run, [Target("10.0.0.1:9000", {"run": "run-a", "role": "worker"})])

    path = run_targets_file(run)
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    [entry] = json.loads(path.read_text())
    assert entry["targets"] == ["10.0.0.1:9000"]
    assert set(entry["labels"]) == set(LABELS)
    assert entry["labels"]["role"] == "worker"
    assert entry["labels"]["job_id"] == ""


def test_the_aggregate_holds_the_live_runs_and_their_cas_only(tmp_path: Path) -> None:
    a, b, ended = _run(tmp_path, "run-a"), _run(tmp_path, "run-b"), _run(tmp_path, "run-c")
    write_run_targets(a, [Target("10.0.0.1:1", {"run": "run-a"})])
    write_run_targets(b, [Target("10.0.0.2:2", {"run": "run-b"}), Target("10.0.0.2:3")])
    write_run_targets(ended, [Target("10.0.0.3:4", {"run": "run-c"})])
    write_run_targets(ended, [])  # its scheduler closed

    targets, bundle = aggregate_files(tmp_path)
    addresses = sorted(e["targets"][0] for e in json.loads(targets.read_text()))
    assert addresses == ["10.0.0.1:1", "10.0.0.2:2", "10.0.0.2:3"]
    assert _mode(targets) == 0o600
    assert _mode(targets.parent) == 0o700
    cas = bundle.read_text()
    assert a.ca_file.read_text() in cas
    assert b.ca_file.read_text() in cas
    assert ended.ca_file.read_text() not in cas


def test_a_run_whose_scheduler_died_drops_out_of_the_aggregate(tmp_path: Path) -> None:
    alive, dead = _run(tmp_path, "run-a"), _run(tmp_path, "run-b")
    write_run_targets(alive, [Target("10.0.0.1:1")])
    write_run_targets(dead, [Target("10.0.0.2:2")])
    old = time.time() - STALE_AFTER - 1
    os.utime(run_targets_file(dead), (old, old))

    targets = update_aggregate(tmp_path)

    assert [e["targets"][0] for e in json.loads(targets.read_text())] == ["10.0.0.1:1"]


def test_a_run_file_others_could_write_is_not_aggregated(tmp_path: Path) -> None:
    mine, tampered = _run(tmp_path, "run-a"), _run(tmp_path, "run-b")
    write_run_targets(mine, [Target("10.0.0.1:1")])
    write_run_targets(tampered, [Target("203.0.113.9:80")])
    run_targets_file(tampered).chmod(0o622)

    targets = update_aggregate(tmp_path)

    assert [e["targets"][0] for e in json.loads(targets.read_text())] == ["10.0.0.1:1"]


def test_the_bundle_is_never_empty_once_the_scraper_pki_exists(tmp_path: Path) -> None:
    ensure_client_pki(tmp_path)
    _, bundle = aggregate_files(tmp_path)

    update_aggregate(tmp_path)  # no run at all

    assert "BEGIN CERTIFICATE" in bundle.read_text()


def test_the_scraper_pki_is_made_once_private_and_consistent(tmp_path: Path) -> None:
    files = ensure_client_pki(tmp_path)
    first = files.cert.read_bytes()
    for path in (files.ca, files.cert, files.key):
        assert _mode(path) == 0o600
    assert _mode(files.directory) == 0o700

    assert ensure_client_pki(tmp_path).cert.read_bytes() == first  # kept

    other = tmp_path / "other"
    files.ca.write_bytes(ensure_client_pki(other).ca.read_bytes())  # a torn race
    repaired = ensure_client_pki(tmp_path)
    assert repaired.cert.read_bytes() != first


def test_an_endpoint_ignores_a_scraper_ca_others_could_replace(tmp_path: Path) -> None:
    run = _run(tmp_path, "run-a")
    ensure_client_pki(tmp_path)
    assert trusted_client_ca(run) == client_files(tmp_path).ca

    client_files(tmp_path).ca.chmod(0o666)

    assert trusted_client_ca(run) is None
