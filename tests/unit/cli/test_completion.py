"""Shell completion through click's protocol, as bash drives it (``_JOBSTRAP_COMPLETE``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobstrap.store import registry
from jobstrap.store.registry import RunRecord


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("JOBSTRAP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("JOBSTRAP_CONFIG_DIR", str(tmp_path / "config"))
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "mylab.yaml").write_text("system: local\n")
    for run_id, kind in (
        ("run-20260101T120000-aaaaaa", "app"),
        ("graph-20260102T0900-bbbbbb", "graph"),
    ):
        registry.save(RunRecord(run_id=run_id, kind=kind, system="local", run_dir=str(tmp_path)))
    return dict(os.environ)


def complete(env: dict[str, str], line: str) -> list[str]:
    """The candidates bash would offer with the cursor at the end of ``line``."""
    words = line.split(" ")
    done = subprocess.run(
        [sys.executable, "-m", "jobstrap"],
        env={
            **env,
            "_JOBSTRAP_COMPLETE": "bash_complete",
            "COMP_WORDS": line,
            "COMP_CWORD": str(len(words) - 1),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # completion never prints anything but candidates
    return [line.split(",", 1)[1] for line in done.stdout.splitlines()]


def test_command_names_complete(env: dict[str, str]) -> None:
    assert complete(env, "jobstrap s") == ["status", "submit"]


def test_profile_names_complete_from_the_shipped_and_the_user_profiles(
    env: dict[str, str],
) -> None:
    assert complete(env, "jobstrap submit --profile test") == [
        "testcluster",
        "testcluster-gpu",
        "testcluster-pbs",
    ]
    assert complete(env, "jobstrap run -p my") == ["mylab"]
    assert "default" in complete(env, "jobstrap config show -p ")


def test_run_ids_complete_newest_first_for_every_command_that_takes_a_run(
    env: dict[str, str],
) -> None:
    newest_first = ["graph-20260102T0900-bbbbbb", "run-20260101T120000-aaaaaa"]
    for command in ("status", "cancel", "logs", "result"):
        assert complete(env, f"jobstrap {command} ") == newest_first, command
    assert complete(env, "jobstrap logs gr") == ["graph-20260102T0900-bbbbbb"]


def test_a_damaged_record_costs_a_candidate_not_an_error(env: dict[str, str]) -> None:
    (registry.registry_dir() / "broken.json").write_text("{not json")

    assert complete(env, "jobstrap cancel run-") == ["run-20260101T120000-aaaaaa"]


def test_the_bash_recipe_in_the_docs_produces_a_completion_function(env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jobstrap"],
        env={**env, "_JOBSTRAP_COMPLETE": "bash_source"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "complete -o nosort -F _jobstrap_completion jobstrap" in done.stdout
    docs = (Path(__file__).resolve().parents[3] / "docs" / "cli.md").read_text()
    assert 'eval "$(_JOBSTRAP_COMPLETE=bash_source jobstrap)"' in docs
