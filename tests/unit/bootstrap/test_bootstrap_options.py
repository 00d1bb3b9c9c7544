"""The bootstrap command line: ``python -m jobstrap.bootstrap`` options and the app."""

from __future__ import annotations

import pytest

from jobstrap.bootstrap.options import parse_args
from jobstrap.errors import UserError


def test_options_split_the_app_after_the_double_dash() -> None:
    options = parse_args(["--run-dir", "/r", "--nthreads", "2", "--", "app.py", "--nthreads", "9"])

    assert options.nthreads == 2
    assert options.app is not None
    assert options.app.argv == ["app.py", "--nthreads", "9"]


def test_options_accept_a_module_app() -> None:
    options = parse_args(["--run-dir", "/r", "--", "-m", "pkg.main", "x"])

    assert options.app is not None
    assert (options.app.kind, options.app.target, options.app.args) == (
        "module",
        "pkg.main",
        ("x",),
    )


def test_options_accept_durations_with_units() -> None:
    options = parse_args(["--run-dir", "/r", "--death-timeout", "2 minutes", "--lifetime", "90"])

    assert options.death_timeout == 120
    assert options.lifetime == 90


def test_options_for_nannies_and_the_app_start() -> None:
    assert parse_args(["--run-dir", "/r"]).nanny is True
    assert parse_args(["--run-dir", "/r"]).start_after_workers is None
    options = parse_args(["--run-dir", "/r", "--no-nanny", "--start-after-workers", "1"])
    assert options.nanny is False
    assert options.start_after_workers == 1


def test_options_scheduler_interface_defaults_to_interface() -> None:
    options = parse_args(["--run-dir", "/r", "--interface", "ib0,eth0"])

    assert options.effective_scheduler_interface == "ib0,eth0"


@pytest.mark.parametrize(
    "argv",
    [
        ["--run-dir", "/r", "--mode", "nope"],
        ["--run-dir", "/r", "--protocol", "udp"],
        ["--run-dir", "/r", "--worker-processes", "0"],
        ["--run-dir", "/r", "--death-timeout", "soon"],
        ["--run-dir", "/r", "--mode", "workers", "--", "app.py"],
        ["--run-dir", "/r", "--", "-m"],
    ],
)
def test_invalid_options_are_one_line_user_errors(argv: list[str]) -> None:
    with pytest.raises(UserError) as error:
        parse_args(argv)

    assert "\n" not in str(error.value)


def test_run_dir_comes_from_the_environment_when_not_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOBSTRAP_RUN_DIR", "/from/env")

    assert parse_args([]).run_dir == "/from/env"


def test_the_dashboard_binds_loopback_unless_the_interface_is_asked_for() -> None:
    assert parse_args(["--run-dir", "/r"]).dashboard_bind == "loopback"
    assert parse_args(["--run-dir", "/r", "--dashboard-bind", "interface"]).dashboard_bind == (
        "interface"
    )
    with pytest.raises(UserError, match="dashboard-bind"):
        parse_args(["--run-dir", "/r", "--dashboard-bind", "everywhere"])
