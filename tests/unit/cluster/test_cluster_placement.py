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
