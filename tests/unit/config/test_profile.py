"""Profiles: layering, sources, validation and "did you mean"."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from jobstrap.config.profile import FIELD_NAMES, load_profile, parse_assignments
from jobstrap.config.units import GiB
from jobstrap.errors import ConfigError


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "config"
    directory.mkdir()
    return directory


def env_for(user_dir: Path, **variables: str) -> dict[str, str]:
    return {"JOBSTRAP_CONFIG_DIR": str(user_dir), "HOME": str(user_dir.parent), **variables}


def test_default_profile_is_the_local_backend(user_dir: Path) -> None:
    profile = load_profile(environ=env_for(user_dir))
    assert profile.system == "local"
    assert profile.sources["system"] == "configs/default.yaml"


def test_layers_apply_in_order_and_remember_their_source(user_dir: Path) -> None:
    (user_dir / "testcluster.yaml").write_text("walltime: 2h\ncores: 3\n")
    environ = env_for(user_dir, JOBSTRAP_CORES="4", JOBSTRAP_QUEUE="short")
    profile = load_profile("testcluster", {"queue": "debug"}, environ=environ)
    assert profile.system == "slurm"
    assert profile.sources["system"] == "configs/testcluster.yaml"
    assert (profile.walltime, profile.sources["walltime"]) == (
        7200,
        str(user_dir / "testcluster.yaml"),
    )
    assert (profile.cores, profile.sources["cores"]) == (4, "environment")
    assert (profile.queue, profile.sources["queue"]) == ("debug", "argument")
    assert profile.sources["account"] == "default"


def test_a_user_profile_can_extend_a_shipped_one(user_dir: Path) -> None:
    (user_dir / "mysite.yaml").write_text("extends: testcluster\nqueue: short\n")
    profile = load_profile("mysite", environ=env_for(user_dir))
    assert (profile.system, profile.queue) == ("slurm", "short")


def test_circular_extends_is_an_error(user_dir: Path) -> None:
    (user_dir / "a.yaml").write_text("extends: b\n")
    (user_dir / "b.yaml").write_text("extends: a\n")
    with pytest.raises(ConfigError, match=r"circular"):
        load_profile("a", environ=env_for(user_dir))


def test_a_profile_can_be_a_file_path(tmp_path: Path, user_dir: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("system: pbs\nqueue: workq\n")
    assert load_profile(str(path), environ=env_for(user_dir)).system == "pbs"


def test_unknown_key_suggests_the_field(user_dir: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"^wallclock: .*unknown setting.*did you mean 'walltime'"
    ):
        load_profile(None, {"wallclock": "1h"}, environ=env_for(user_dir))


def test_unknown_key_in_a_file_names_the_file(user_dir: Path) -> None:
    (user_dir / "site.yaml").write_text("memroy: 4GiB\n")
    with pytest.raises(ConfigError, match=r"memroy.*site.yaml.*did you mean 'memory'"):
        load_profile("site", environ=env_for(user_dir))


def test_unknown_profile_suggests_a_close_name(user_dir: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'testcluster'"):
        load_profile("testclustr", environ=env_for(user_dir))


def test_near_miss_environment_variable_is_an_error(user_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"JOBSTRAP_WALLTIM.*did you mean 'walltime'"):
        load_profile(environ=env_for(user_dir, JOBSTRAP_WALLTIM="1h"))


def test_internal_environment_variables_are_not_settings(user_dir: Path) -> None:
    # LOG_LEVEL is a near miss of log_directory: it must still not be read as a typo.
    env = env_for(user_dir, JOBSTRAP_RUN_DIR="/x", JOBSTRAP_TAG="t", JOBSTRAP_LOG_LEVEL="DEBUG")
    profile = load_profile(environ=env)
    assert profile.system == "local"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("memory", "10XB", r"^memory: invalid value '10XB': unknown unit"),
        ("memory", "-1GB", r"^memory: .*must be positive"),
        ("memory", "0", r"^memory: .*more than zero"),
        ("walltime", "25:61:00", r"^walltime: .*minutes must be 0-59"),
        ("walltime", "abc", r"^walltime: "),
        ("walltime", "-5m", r"^walltime: .*positive"),
        ("cores", 0, r"^cores: .*at least 1"),
        ("cores", -2, r"^cores: .*at least 1"),
        ("cores", "two", r"^cores: .*whole number"),
        ("nodes", 0, r"^nodes: .*at least 1"),
        ("system", "lsf", r"^system: .*must be one of local, slurm, pbs"),
        ("launcher", "aprun", r"^launcher: "),
        ("protocol", "ucx", r"^protocol: "),
        ("account", "a\n#SBATCH --uid=0", r"^account: .*single line"),
        ("queue", "debug\r", r"^queue: .*single line"),
        ("job_name", "$(touch /tmp/pwned)", r"^job_name: .*shell metacharacters"),
        ("job_name", "a b", r"^job_name: "),
        ("env", {"A B": "1"}, r"^env: "),
        ("env", {"OK": "x\ny"}, r"^env.OK: .*single line"),
        ("extra_directives", ["--exclusive\n#SBATCH --uid=0"], r"^extra_directives\[0\]: "),
        ("processes", 4, r"^processes: .*at least as many cores"),
        ("dashboard", "maybe", r"^dashboard: .*true or false"),
    ],
)
def test_bad_values_give_one_line_errors_naming_the_field(
    user_dir: Path, key: str, value: object, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_profile(None, {key: value}, environ=env_for(user_dir))
    assert "\n" not in str(caught.value).split(": invalid value")[0]


def test_prologue_as_a_string_is_split_into_lines(user_dir: Path) -> None:
    profile = load_profile(
        None, {"prologue": "module load a\nmodule load b\n"}, environ=env_for(user_dir)
    )
    assert profile.prologue == ("module load a", "module load b")


def test_interface_accepts_a_comma_separated_preference(user_dir: Path) -> None:
    profile = load_profile(None, {"interface": "ib0, eth0"}, environ=env_for(user_dir))
    assert profile.interface == ("ib0", "eth0")


def test_dask_jobqueue_keywords_are_aliases(user_dir: Path) -> None:
    profile = load_profile(
        None,
        {"job_extra_directives": ["--exclusive"], "job_script_prologue": ["source env"],
         "job_directives_skip": ["--mem"], "partition": "debug"},
        environ=env_for(user_dir),
    )  # fmt: skip
    assert profile.extra_directives == ("--exclusive",)
    assert profile.prologue == ("source env",)
    assert profile.skip_directives == ("--mem",)
    assert profile.queue == "debug"


def test_derived_worker_sizes(user_dir: Path) -> None:
    profile = load_profile(
        None, {"cores": 8, "processes": 4, "memory": "16GiB"}, environ=env_for(user_dir)
    )
    assert profile.threads_per_worker == 2
    assert profile.memory_per_worker == 4 * GiB


def test_with_overrides_validates_like_loading(user_dir: Path) -> None:
    profile = load_profile(environ=env_for(user_dir))
    assert profile.with_overrides({"cores": 4}).cores == 4
    with pytest.raises(ConfigError, match=r"^cores:"):
        profile.with_overrides({"cores": 0})


def test_to_dict_round_trips_through_loading(tmp_path: Path, user_dir: Path) -> None:
    import yaml

    original = load_profile("testcluster", environ=env_for(user_dir))
    path = tmp_path / "dump.yaml"
    path.write_text(yaml.safe_dump(original.to_dict()))
    assert load_profile(str(path), environ=env_for(user_dir)) == original
    assert set(original.to_dict()) == set(FIELD_NAMES)


def test_cli_assignments_keep_clock_times_as_text() -> None:
    assert parse_assignments(["walltime=01:30:00", "cores=4", "interface=[ib0, eth0]"]) == {
        "walltime": "01:30:00",
        "cores": 4,
        "interface": ["ib0", "eth0"],
    }


def test_cli_assignment_with_a_newline_is_kept_for_validation_to_reject() -> None:
    assert parse_assignments(["account=a\n#SBATCH --uid=0"]) == {"account": "a\n#SBATCH --uid=0"}


# --- TLS opt-out, directive values, bounds ---------------------------------------------


@pytest.fixture
def fresh_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget which risks this process already warned about."""
    monkeypatch.setattr("jobstrap.net.security._warned", set())


def test_protocol_tcp_warns_once_naming_the_risk(
    user_dir: Path, fresh_warning: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jobstrap")
    profile = load_profile(None, {"protocol": "tcp"}, environ=env_for(user_dir))
    profile.with_overrides({"cores": 2})
    load_profile(None, {"protocol": "tcp"}, environ=env_for(user_dir))

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "anyone who can reach" in warnings[0].getMessage()
    assert "run code as you" in warnings[0].getMessage()


def test_protocol_tls_does_not_warn(
    user_dir: Path, fresh_warning: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jobstrap")
    load_profile(None, {"protocol": "tls"}, environ=env_for(user_dir))

    assert not caplog.records


def test_security_false_on_a_cluster_warns_that_tls_is_off(
    fresh_warning: None, caplog: pytest.LogCaptureFixture
) -> None:
    from jobstrap.cluster.options import split_options

    caplog.set_level(logging.WARNING, logger="jobstrap")
    overrides, _ = split_options({"security": False})
    load_profile("default", overrides, environ={})

    assert "TLS is off" in caplog.text


@pytest.mark.parametrize("name", ["queue", "account", "qos"])
@pytest.mark.parametrize(
    "value", ["debug --uid=0", "debug\t-A x", "a;id", "$(id)", "`id`", "-x", "a|b", "a'b"]
)
def test_directive_values_are_plain_site_names(user_dir: Path, name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name}: invalid value") as caught:
        load_profile(None, {name: value}, environ=env_for(user_dir))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("value", ["debug", "gpu_a100", "workq@pbs01", "short,long", "p.1-x+y:z"])
def test_site_names_as_batch_systems_spell_them_are_accepted(user_dir: Path, value: str) -> None:
    assert load_profile(None, {"queue": value}, environ=env_for(user_dir)).queue == value


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("memory", float("inf")),
        ("memory", float("nan")),
        ("memory", 2**70),
        ("walltime", "²"),
        ("walltime", "1-²"),
        ("walltime", 10**20),
        ("walltime", "9" * 5000),
        ("death_timeout", "99999999999999999999s"),
        ("dashboard_port", 99999),
        ("cores", 2**40),
        ("nodes", "9" * 5000),
        ("interface", ""),
        ("interface", []),
        ("scheduler_interface", " , "),
        ("template", "t" * 5000),
    ],
)
def test_out_of_range_values_are_one_line_errors(user_dir: Path, name: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"^{name}: invalid value") as caught:
        load_profile(None, {name: value}, environ=env_for(user_dir))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("text", ["memory: .inf\n", "memory: .nan\n", "walltime: ²\n"])
def test_bad_values_in_a_profile_file_are_config_errors(user_dir: Path, text: str) -> None:
    (user_dir / "bad.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"from .*bad\.yaml"):
        load_profile("bad", environ=env_for(user_dir))


def test_a_profile_file_that_is_not_utf8_is_a_config_error(user_dir: Path) -> None:
    (user_dir / "latin.yaml").write_bytes("queue: d\xe9bogage\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_profile("latin", environ=env_for(user_dir))


def test_invalid_yaml_is_reported_on_one_line(user_dir: Path) -> None:
    (user_dir / "broken.yaml").write_text("queue: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as caught:
        load_profile("broken", environ=env_for(user_dir))
    assert "\n" not in str(caught.value)


def test_an_integer_too_long_for_python_in_set_is_kept_as_text() -> None:
    assert parse_assignments(["nodes=" + "9" * 5000]) == {"nodes": "9" * 5000}


# --- where the dashboard listens ----------------------------------------------------------


def test_the_dashboard_listens_on_loopback_unless_asked_and_asking_warns(
    user_dir: Path, fresh_warning: None, caplog: pytest.LogCaptureFixture
) -> None:
    from jobstrap.jobs.spec import scheduler_job

    caplog.set_level(logging.WARNING, logger="jobstrap")
    default = load_profile(None, {}, environ=env_for(user_dir))
    assert default.dashboard_bind == "loopback"
    assert "--dashboard-bind" not in scheduler_job(default, "/runs/r", "t").command
    assert not caplog.records

    opted = load_profile(None, {"dashboard_bind": "interface"}, environ=env_for(user_dir))
    argv = scheduler_job(opted, "/runs/r", "t").command
    assert argv[argv.index("--dashboard-bind") + 1] == "interface"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "plain HTTP without a login" in warnings[0]


def test_an_unknown_dashboard_bind_is_an_error_naming_the_field(user_dir: Path) -> None:
    with pytest.raises(ConfigError, match="dashboard_bind"):
        load_profile(None, {"dashboard_bind": "everywhere"}, environ=env_for(user_dir))
