"""Prometheus ``file_sd`` targets: one file per run, one aggregate per user.

A run's scheduler side keeps ``<run_dir>/metrics/targets.json`` current as workers
come and go (:func:`write_run_targets`): one entry per metrics endpoint (the
scheduler's and each worker's), labelled with :data:`LABELS`. Every write also
refreshes the user's aggregate ``<run_root>/.metrics/targets.json``
(:func:`update_aggregate`), the one file a Prometheus on the login node reads for
all live runs, and ``ca-bundle.pem`` beside it (the CAs of those runs, which the
Prometheus checks the endpoints' certificates against).

Every file is written atomically (temporary file, then rename: Prometheus never
reads half a file) and 0600 in 0700 directories. The aggregate is rebuilt from the
run files under an exclusive lock, so two runs updating at once cannot lose each
other's targets. A run whose scheduler died without clearing its file stops being
refreshed (:data:`STALE_AFTER`) and drops out of the aggregate.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobstrap.store.rundir import atomic_write_json, atomic_write_text, ensure_private_dir

__all__ = [
    "LABELS",
    "REFRESH_EVERY",
    "STALE_AFTER",
    "Target",
    "aggregate_dir",
    "aggregate_files",
    "read_targets",
    "run_targets_file",
    "update_aggregate",
    "write_run_targets",
]

#: The labels every target carries (empty string when not known).
LABELS = (
    "run",
    "job_id",
    "array_task",
    "node",
    "rank",
    "role",
    "pool",
    "engine",
    "user",
    "worker",
)

#: Seconds between rewrites of a run's file while nothing changes (a heartbeat).
REFRESH_EVERY = 60.0
#: A run file not rewritten for this long belongs to a scheduler that died.
STALE_AFTER = 5 * REFRESH_EVERY

_AGGREGATE_DIR = ".metrics"  # run ids never start with a dot


@dataclass(frozen=True)
class Target:
    """One metrics endpoint: ``host:port`` and its labels.

    Attributes
    ----------
    address
        ``host:port`` of the HTTPS metrics endpoint.
    labels
        Values for (some of) :data:`LABELS`; the others are written empty.
    """

    address: str
    labels: Mapping[str, str] = field(default_factory=dict)

    def entry(self) -> dict[str, Any]:
        """The ``file_sd`` entry: ``{"targets": [address], "labels": {...}}``."""
        labels = {name: str(self.labels.get(name, "") or "") for name in LABELS}
        return {"targets": [self.address], "labels": labels}


def run_targets_file(run_dir: str | os.PathLike[str]) -> Path:
    """``<run_dir>/metrics/targets.json`` (nothing is created)."""
    return Path(run_dir) / "metrics" / "targets.json"


def aggregate_dir(run_root: str | os.PathLike[str]) -> Path:
    """``<run_root>/.metrics``: the user's aggregate, CA bundle and client certificate."""
    return Path(run_root) / _AGGREGATE_DIR


def aggregate_files(run_root: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The aggregate targets file and CA bundle of ``run_root`` (nothing is created)."""
    where = aggregate_dir(run_root)
    return where / "targets.json", where / "ca-bundle.pem"


def write_run_targets(
    run_dir: str | os.PathLike[str], targets: Sequence[Target], *, aggregate: bool = True
) -> Path:
    """Write a run's targets file (an empty list once the run ends); refresh the aggregate.

    Parameters
    ----------
    run_dir
        The run directory; the aggregate goes to its parent's ``.metrics``.
    targets
        The run's live endpoints.
    aggregate
        Also rebuild the user's aggregate (default).
    """
    path = run_targets_file(run_dir)
    ensure_private_dir(path.parent)
    atomic_write_json(path, [target.entry() for target in targets])
    if aggregate:
        update_aggregate(Path(run_dir).parent)
    return path


def _ours(info: os.stat_result) -> bool:
    # A file someone else could have written could point our Prometheus anywhere.
    return info.st_uid == os.geteuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _live_runs(run_root: Path, now: float) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
    try:
        children = sorted(run_root.iterdir())
    except OSError:
        return
    for run_dir in children:
        if run_dir.name.startswith("."):
            continue
        path = run_targets_file(run_dir)
        try:
            info = path.stat()
            if not _ours(info) or now - info.st_mtime > STALE_AFTER:
                continue
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(entries, list) and entries:
            yield run_dir, [e for e in entries if isinstance(e, dict) and e.get("targets")]


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def update_aggregate(run_root: str | os.PathLike[str], *, now: float | None = None) -> Path:
    """Rebuild the aggregate targets file and CA bundle from the live runs' files.

    Returns
    -------
    Path
        The aggregate targets file.
    """
    root = Path(run_root)
    where = ensure_private_dir(aggregate_dir(root))
    targets_file, bundle_file = aggregate_files(root)
    with _locked(where):
        entries: list[dict[str, Any]] = []
        cas: list[str] = []
        for run_dir, found in _live_runs(root, time.time() if now is None else now):
            entries.extend(found)
            with contextlib.suppress(OSError):
                ca = run_dir / "tls" / "ca.pem"
                if _ours(ca.stat()):
                    cas.append(ca.read_text(encoding="ascii"))
        # The scraper's own CA too (its key is gone: it signs no server): a bundle
        # is never empty, which Prometheus would take for a configuration error.
        with contextlib.suppress(OSError):
            scraper_ca = where / "client" / "ca.pem"
            if _ours(scraper_ca.stat()):
                cas.append(scraper_ca.read_text(encoding="ascii"))
        atomic_write_json(targets_file, entries)
        # Prometheus re-reads its CA file when it changes (checked at each scrape).
        atomic_write_text(bundle_file, "".join(cas))
    return targets_file


def read_targets(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The entries of a targets file; an empty list if it does not exist."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    return data if isinstance(data, list) else []
