"""``log_format``: a profile key (and ``--set``, ``JOBSTRAP_LOG_FORMAT``) that jobs obey.

The profile validates it like every closed setting; the job script carries it to the
job side as ``JOBSTRAP_LOG_FORMAT``, which the bootstrap's log tagging reads. The last
test submits a real run on the local backend and reads its JSON log lines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobstrap.config.profile import load_profile
from jobstrap.errors import ConfigError
from jobstrap.jobs.render import render_script
from jobstrap.jobs.spec import app_job, scheduler_job, worker_job
from jobstrap.systems import get_system
from support import local_backend_env

EXPORT = "export JOBSTRAP_LOG_FORMAT=json"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "config"
    config.mkdir()
    return {"JOBSTRAP_CONFIG_DIR": str(config), "HOME": str(tmp_path)}


def test_json_is_exported_to_every_kind_of_job_and_text_adds_nothing(
    env: dict[str, str],
) -> None:
    chosen = load_profile(None, {"log_format": "json"}, environ=env)
    default = load_profile(None, {}, environ=env)
    assert (default.log_format, chosen.log_format) == ("text", "json")
    assert chosen.sources["log_format"] == "argument"
    for profile, exported in ((chosen, True), (default, False)):
        for spec in (
            app_job(profile, "/runs/r", "t", ["app.py"]),
            worker_job(profile, "/runs/r", "t"),
            scheduler_job(profile, "/runs/r", "t"),
        ):
            script = render_script(spec, get_system(profile.system))
            assert (EXPORT in script.splitlines()) is exported, script


def test_the_environment_layer_and_a_profile_file_set_it(env: dict[str, str]) -> None:
    from_env = load_profile(None, {}, environ={**env, "JOBSTRAP_LOG_FORMAT": "JSON"})
    assert (from_env.log_format, from_env.sources["log_format"]) == ("json", "environment")

    (Path(env["JOBSTRAP_CONFIG_DIR"]) / "mine.yaml").write_text("log_format: json\n")
    from_file = load_profile("mine", {}, environ=env)
    assert from_file.log_format == "json"
    assert from_file.to_dict()["log_format"] == "json"


def test_the_profile_s_own_env_still_wins_as_before(env: dict[str, str]) -> None:
    # The older way (an env entry) keeps working: what the user wrote is exported.
    profile = load_profile(
        None, {"log_format": "json", "env": {"JOBSTRAP_LOG_FORMAT": "text"}}, environ=env
    )
    assert dict(worker_job(profile, "/runs/r", "t").env)["JOBSTRAP_LOG_FORMAT"] == "text"


@pytest.mark.parametrize(
    ("overrides", "environ"),
    [({"log_format": "jsn"}, {}), ({}, {"JOBSTRAP_LOG_FORMAT": "jsn"})],
)
def test_a_bad_value_names_the_field_and_suggests_the_near_one(
    env: dict[str, str], overrides: dict[str, object], environ: dict[str, str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_profile(None, overrides, environ={**env, **environ})
    message = str(caught.value)
    assert "log_format" in message
    assert "json" in message
    assert "did you mean" in message.lower()
    assert "\n" not in message


# --------------------------------------------------------------- the command line, for real


@pytest.fixture
def local_env(tmp_path: Path) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as patch:
        local_backend_env(patch, tmp_path)
        patch.delenv("JOBSTRAP_LOG_FORMAT", raising=False)
        yield tmp_path


def jobstrap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobstrap", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=dict(os.environ),
        check=False,
    )


def test_set_with_a_bad_value_is_one_line_exit_2_and_nothing_submitted(local_env: Path) -> None:
    app = local_env / "app.py"
    app.write_text("print('never')\n")
    done = jobstrap("submit", "--system", "local", "--set", "log_format=yaml", str(app))
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "log_format" in line
    assert "text, json" in line
    assert not (local_env / "runs").exists() or not any((local_env / "runs").iterdir())


def test_set_log_format_json_gives_json_log_lines_in_a_real_run(local_env: Path) -> None:
    app = local_env / "app.py"
    app.write_text("print('done')\n")
    done = jobstrap("submit", "--system", "local", "--set", "log_format=json", "--wait", str(app))
    assert done.returncode == 0, done.stderr

    [run_dir] = [p for p in (local_env / "runs").iterdir() if not p.name.startswith(".")]
    lines = [
        line
        for log in sorted((run_dir / "logs").glob("*.err"))
        for line in log.read_text().splitlines()
        if line.startswith("{")
    ]
    records = [json.loads(line) for line in lines]
    assert records, "no JSON log line in the job's stderr"
    assert {r["run"] for r in records} == {run_dir.name}
    assert {"scheduler", "worker"} <= {r["role"] for r in records}
