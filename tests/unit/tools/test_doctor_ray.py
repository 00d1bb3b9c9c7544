"""The doctor's Ray checks: Ray on the node, and a temp directory short enough for it."""

from __future__ import annotations

from typing import Any

from jobstrap.bootstrap.probe import ray_facts
from jobstrap.tools.doctor.ray import check_ray
from jobstrap.tools.doctor.report import Status

LONG = "/scratch/jobs/a-rather-long-user-name/job-123456789/tmp"


def _report(version: str | None, tmpdir: str = "", writable: dict[str, bool] | None = None) -> Any:
    seen = writable if writable is not None else {"/tmp": True, "/dev/shm": True}
    return {"host": "node7", "ray": {"version": version, "tmpdir": tmpdir, "writable": seen}}


def _by_name(checks: list[Any]) -> dict[str, Any]:
    return {c.name: c for c in checks}


def test_a_dask_profile_gets_no_ray_check() -> None:
    assert check_ray(_report(None), "dask", None) == []


def test_a_node_whose_python_has_no_ray_fails_naming_the_install() -> None:
    checks = _by_name(check_ray(_report(None), "ray", "2.60.0"))

    assert checks["ray"].status is Status.FAIL
    assert "node7" in checks["ray"].detail
    assert "jobstrap[ray]" in checks["ray"].fix


def test_different_ray_versions_on_the_two_sides_warn() -> None:
    checks = _by_name(check_ray(_report("2.59.0"), "ray", "2.60.0"))

    assert checks["ray"].status is Status.WARN
    assert "2.59.0" in checks["ray"].detail


def test_a_tmpdir_too_long_for_rays_sockets_falls_back_to_tmp() -> None:
    report = _report("2.60.0", LONG, {LONG: True, "/tmp": True, "/dev/shm": True})

    checks = _by_name(check_ray(report, "ray", "2.60.0"))

    assert checks["ray"].status is Status.OK
    assert checks["ray temp dir"].status is Status.OK
    assert checks["ray temp dir"].detail.startswith("/tmp on node7")
    assert "too long" in checks["ray temp dir"].detail


def test_no_short_writable_directory_fails_naming_tmpdir() -> None:
    report = _report("2.60.0", LONG, {LONG: True, "/tmp": False, "/dev/shm": False})

    checks = _by_name(check_ray(report, "ray", "2.60.0"))

    assert checks["ray temp dir"].status is Status.FAIL
    assert "TMPDIR" in checks["ray temp dir"].fix


def test_the_probe_reports_what_the_check_reads(tmp_path: Any) -> None:
    facts = ray_facts({"TMPDIR": str(tmp_path)})

    assert facts["tmpdir"] == str(tmp_path)
    assert facts["writable"][str(tmp_path)] is True
    assert "version" in facts
