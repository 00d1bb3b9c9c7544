"""Fixtures of the batch control tests: the fake Slurm on PATH and a run directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fakeslurm import FakeSlurm

from jobstrap.batchctl.control import BatchControl


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeSlurm:
    fake = FakeSlurm(tmp_path / "fake")
    monkeypatch.setenv("PATH", f"{fake.bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKESLURM_DIR", str(fake.dir))
    monkeypatch.setattr(BatchControl, "_array_limits", {})
    return fake


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    path = tmp_path / "run"
    (path / "logs").mkdir(parents=True)
    return path
