"""Shipped site profiles and the foundation CLI (render, config, --version)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobstrap import __version__
from jobstrap.cli import cli
from jobstrap.config.profile import FIELD_NAMES, load_profile
from jobstrap.config.resources import configs_dir

SHIPPED = sorted(p.stem for p in configs_dir().glob("*.yaml"))


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("JOBSTRAP_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("JOBSTRAP_PROFILE",):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def test_the_expected_site_profiles_ship() -> None:
    assert {"default", "slurm-infiniband", "pbspro", "testcluster"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_validates(name: str, isolated: Path) -> None:
    load_profile(name)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_renders_every_role(name: str, isolated: Path) -> None:
    runner = CliRunner()
    for role in ("workers", "app", "scheduler"):
        args = ["render", "--profile", name, "--role", role] + (["app.py"] if role == "app" else [])
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert result.output.startswith("#!")


def test_render_shows_the_ray_app_job_that_submit_would_send(isolated: Path) -> None:
    # `render` takes submit's --engine, so what is printed is what --engine ray submits.
    args = ["render", "--system", "local", "--role", "app"]
    plain = CliRunner().invoke(cli, [*args, "app.py"])
    ray = CliRunner().invoke(cli, [*args, "--engine", "ray", "app.py"])
    assert plain.exit_code == ray.exit_code == 0, ray.output
    assert "--engine ray" in ray.output
    assert "--engine" not in plain.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "memory=10XB"], "memory: invalid value '10XB'"),
        (["--set", "walltime=25:61:00"], "minutes must be 0-59"),
        (["--set", "cores=0"], "cores: invalid value 0"),
        (["--set", "wallclock=1h"], "did you mean 'walltime'"),
        (["--set", "system=lsf"], "system: invalid value 'lsf'"),
        (["--set", "account=a\n#SBATCH --uid=0"], "account: invalid value"),
        (["--set", "job_name=$(touch pwned)"], "job_name: invalid value"),
        (["--profile", "testclustr"], "did you mean 'testcluster'"),
        (["--set", "novalue"], "expected key=value"),
    ],
)
def test_user_errors_exit_2_with_one_line_and_write_nothing(
    args: list[str], message: str, isolated: Path
) -> None:
    before = sorted(isolated.rglob("*"))
    result = CliRunner().invoke(cli, ["render", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert result.output.count("\n") == 1
    assert "Traceback" not in result.output
    assert sorted(isolated.rglob("*")) == before


def test_config_show_resolved_names_each_source(isolated: Path) -> None:
    result = CliRunner().invoke(
        cli, ["config", "show", "-p", "testcluster", "--resolved", "-s", "cores=2"]
    )
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()}
    assert lines["system"].endswith("# configs/testcluster.yaml")
    assert lines["cores"].endswith("# argument")
    assert lines["account"].endswith("# default")


def test_config_check_reports_a_bad_file(tmp_path: Path, isolated: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("system: slurm\nwallclock: 1h\n")
    result = CliRunner().invoke(cli, ["config", "check", str(bad)])
    assert result.exit_code == 2
    assert "did you mean 'walltime'" in result.output


def test_config_check_accepts_the_shipped_files(isolated: Path) -> None:
    files = [str(p) for p in configs_dir().glob("*.yaml")]
    result = CliRunner().invoke(cli, ["config", "check", *files])
    assert result.exit_code == 0, result.output


def test_version_and_module_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jobstrap", "--version"], capture_output=True, text=True, check=True
    )
    assert __version__ in result.stdout


def test_import_has_no_side_effects(tmp_path: Path) -> None:
    code = (
        "import signal, sys, threading; before = signal.getsignal(signal.SIGTERM);"
        "import jobstrap, jobstrap.config.profile, jobstrap.jobs.render, jobstrap.systems.slurm;"
        "assert signal.getsignal(signal.SIGTERM) == before;"
        "assert threading.active_count() == 1;"
        "assert 'distributed' not in sys.modules, 'distributed imported eagerly'"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=tmp_path,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "memory=.inf"], "memory: invalid value inf"),
        (["--set", "memory=.nan"], "memory: invalid value nan"),
        (["--set", "walltime=²"], "walltime: invalid value '²'"),
        (["--set", "walltime=100000000000000000000"], "at most 3650 days"),
        (["--set", "dashboard_port=99999"], "at most 65535"),
        (["--set", "interface="], "interface: invalid value ''"),
        (["--system", "slurm", "--set", "queue=debug --uid=0"], "queue: invalid value"),
        (["--system", "pbs", "--set", "account=a b"], "account: invalid value"),
        (["--system", "slurm", "--set", "qos=x;id"], "qos: invalid value"),
    ],
)
def test_values_that_used_to_crash_or_inject_exit_2_with_one_line(
    args: list[str], message: str, isolated: Path
) -> None:
    result = CliRunner().invoke(cli, ["render", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.output.count("\n") == 1


def test_a_profile_file_that_is_not_utf8_exits_2(isolated: Path) -> None:
    bad = isolated / "latin.yaml"
    bad.write_bytes("queue: d\xe9bogage\n".encode("latin-1"))
    for args in (["render", "--profile", str(bad)], ["config", "check", str(bad)]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        assert "not UTF-8" in result.output
        assert result.output.count("\n") == 1


@pytest.fixture
def registry_with_damage(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A registry holding only a file that is a JSON list, not a record."""
    monkeypatch.setenv("JOBSTRAP_STATE_DIR", str(isolated / "state"))
    runs = isolated / "state" / "runs"
    runs.mkdir(parents=True)
    (runs / "run-bad.json").write_text("[1, 2]")
    return runs


@pytest.mark.parametrize("args", [["status"], ["cancel", "--all"]])
def test_status_and_cancel_all_skip_a_damaged_record_naming_it(
    registry_with_damage: Path, args: list[str]
) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"{registry_with_damage / 'run-bad.json'}" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "args", [["status", "run-bad"], ["logs", "run-bad"], ["cancel", "run-bad"]]
)
def test_a_command_on_a_damaged_record_exits_2_naming_the_file(
    registry_with_damage: Path, args: list[str]
) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "run-bad.json: not a readable run record" in result.stderr
    assert result.stderr.count("\n") == 1


#: Texts YAML and Python read in surprising ways, mixed into the arbitrary ones.
AWKWARD = [".inf", "-.inf", ".nan", "²", "1-²", "١h", "1e400", "9" * 5000, "0x10", "1_000",
           "-1", "0", "99999", "", " ", "~", "null", "true", "[]", "{}", "[1, [2]]", "{a: 1}",
           "2001-01-01", "01:30:00", "a b", "a\nb", "\x00", "debug --uid=0", "$(id)"]  # fmt: skip


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    field=st.sampled_from(FIELD_NAMES),
    text=st.one_of(st.sampled_from(AWKWARD), st.text(max_size=40)),
    system=st.sampled_from(["local", "slurm", "pbs"]),
)
def test_any_text_for_any_setting_renders_or_exits_2(
    isolated: Path, field: str, text: str, system: str
) -> None:
    result = CliRunner().invoke(cli, ["render", "--system", system, "--set", f"{field}={text}"])
    assert result.exit_code in (0, 2), (result.output, result.exc_info)
    if result.exit_code == 2:
        assert result.output.startswith("error: ")
        assert "Traceback" not in result.output
