"""The registry of batch systems: built-in ones, and plugins under ``jobstrap.systems``."""

from __future__ import annotations

from pathlib import Path

import pytest

import jobstrap.systems as systems
from jobstrap.config import plugins
from jobstrap.config.profile import load_profile
from jobstrap.errors import ConfigError
from jobstrap.jobs.spec import resolve_launcher, worker_job


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch) -> str:
    """A system registered as a plugin would be: here, Slurm's module under a new name."""
    found = {**plugins._BUILTIN, "mysite": "jobstrap.systems.slurm"}
    monkeypatch.setattr(plugins, "_systems", lambda: found)
    return "mysite"


def environ(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "config").mkdir(exist_ok=True)
    return {"JOBSTRAP_CONFIG_DIR": str(tmp_path / "config"), "HOME": str(tmp_path)}


def test_built_in_systems_come_first() -> None:
    assert systems.available()[:3] == ["local", "slurm", "pbs"]


def test_a_plugin_system_passes_profile_validation(plugin: str, tmp_path: Path) -> None:
    profile = load_profile(None, {"system": plugin}, environ=environ(tmp_path))

    assert profile.system == plugin
    assert resolve_launcher(profile) == "srun"  # the system's own default, not a name table


def test_an_unknown_system_names_every_registered_one(plugin: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be one of local, slurm, pbs, mysite"):
        load_profile(None, {"system": "lsf"}, environ=environ(tmp_path))


@pytest.mark.parametrize(("system", "launcher"), [("slurm", "srun"), ("pbs", "none")])
def test_a_workers_job_uses_the_system_s_node_launcher(
    system: str, launcher: str, tmp_path: Path
) -> None:
    profile = load_profile(None, {"system": system}, environ=environ(tmp_path))

    spec = worker_job(profile, str(tmp_path), "js0123456789")

    assert spec.launcher == launcher
