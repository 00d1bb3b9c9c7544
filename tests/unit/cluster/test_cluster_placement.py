"""What the cluster asks of the batch system object instead of comparing its name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobstrap.cluster.book import JobBook
from jobstrap.cluster.options import split_options
from jobstrap.cluster.orphans import OrphanGuard
from jobstrap.cluster.scheduler import SchedulerPlacement
from jobstrap.cluster.submit import WorkerSubmitter
from jobstrap.config.profile import Profile, load_profile
from jobstrap.store.rundir import RunDir
from jobstrap.systems import get_system


@pytest.fixture
def run_dir(tmp_path: Path) -> RunDir:
    return RunDir.create(str(tmp_path), "cluster-1")


def profile_for(system: str) -> Profile:
    return load_profile(None, {"system": system}, environ={})


def submitter(profile: Profile, run_dir: RunDir) -> WorkerSubmitter:
    _, options = split_options({})
    owner: Any = type("Owner", (), {})()
    return WorkerSubmitter(
        profile=profile,
        options=options,
        system=get_system(profile.system),
        batchctl=None,  # type: ignore[arg-type]  # building a spec submits nothing
        run_dir=run_dir,
        book=JobBook(max_failures=3, python="python3"),
        guard=OrphanGuard(owner, profile.system),
        prefix="c",
        signal_seconds=30,
        watch=lambda job_id, old, record: None,
        submitted=lambda: None,
        scheduler_address=lambda: "tls://10.0.0.1:8786",
    )


def test_a_local_cluster_s_scheduler_binds_to_loopback(run_dir: RunDir) -> None:
    profile = profile_for("local")
    _, options = split_options({})

    placement = SchedulerPlacement(profile, options, get_system("local"), run_dir, None)  # type: ignore[arg-type]

    assert placement.host() == "127.0.0.1"


@pytest.mark.parametrize(("system", "signal"), [("slurm", ("USR1", 30)), ("pbs", None)])
def test_only_systems_that_warn_before_the_walltime_get_the_usr1_backstop(
    system: str, signal: tuple[str, int] | None, run_dir: RunDir
) -> None:
    spec = submitter(profile_for(system), run_dir).spec("js0")

    assert spec.signal == signal


def _spec_dashboard(run_dir: RunDir, overrides: dict[str, Any], **kwargs: Any) -> str:
    profile = load_profile(None, {"system": "slurm", **overrides}, environ={})
    _, options = split_options(kwargs)
    placement = SchedulerPlacement(profile, options, get_system("slurm"), run_dir, None)  # type: ignore[arg-type]
    spec = placement.spec(None)
    assert spec is not None
    return str(spec["options"]["dashboard_address"])


def test_an_in_process_dashboard_listens_on_loopback_by_default(run_dir: RunDir) -> None:
    assert _spec_dashboard(run_dir, {}, host="10.0.0.7") == "127.0.0.1:0"
    # dask-jobqueue's ":8787" means every interface to distributed: the bind decides.
    assert _spec_dashboard(run_dir, {}, host="10.0.0.7", dashboard_address=":8787") == (
        "127.0.0.1:8787"
    )


def test_an_in_process_dashboard_listens_on_the_scheduler_s_address_when_asked(
    run_dir: RunDir,
) -> None:
    overrides = {"dashboard_bind": "interface", "dashboard_port": 8787}
    assert _spec_dashboard(run_dir, overrides, host="10.0.0.7") == "10.0.0.7:8787"


def test_an_explicit_dashboard_host_is_used_and_warned_about(
    run_dir: RunDir, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    monkeypatch.setattr("jobstrap.net.security._warned", set())
    caplog.set_level(logging.WARNING, logger="jobstrap")

    address = _spec_dashboard(run_dir, {}, host="10.0.0.7", dashboard_address="0.0.0.0:8787")

    assert address == "0.0.0.0:8787"
    assert any("plain HTTP without a login" in r.getMessage() for r in caplog.records)
