"""``jobstrap tunnel`` and a Ray run: nothing to forward, said in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobstrap.errors import UserError
from jobstrap.store.rundir import RunDir
from jobstrap.tools.tunnel import RunTarget, find_target, plan_for

INFO = {"scheduler_address": "10.78.0.11:41234", "dashboard_address": None, "host": "node1",
        "job_id": "42", "started": 1.0, "pid": 7}  # fmt: skip


def _ray_run(tmp_path: Path) -> RunDir:
    run = RunDir.create(tmp_path / "runs", "run-ray")
    run.write_json("info.json", INFO)
    run.write_json("scheduler.json", {"type": "ray", "address": "10.78.0.11:41234"})
    return run


def test_a_ray_run_without_a_dashboard_says_so_and_its_gcs_is_not_forwarded(
    tmp_path: Path,
) -> None:
    target = find_target(str(_ray_run(tmp_path).path))

    assert target.engine == "ray"
    with pytest.raises(UserError, match=r"Ray run has no dashboard.*dashboard: true"):
        plan_for(target, ["login"], port_is_free=lambda p: p or 5)
    with pytest.raises(UserError, match="GCS port is of no use"):
        plan_for(target, ["login"], scheduler=True, port_is_free=lambda p: p or 5)


def test_a_ray_dashboard_is_forwarded_to_its_nodes_loopback_at_its_root(tmp_path: Path) -> None:
    run = _ray_run(tmp_path)
    run.write_json("info.json", {**INFO, "dashboard_address": "http://127.0.0.1:8265/"})

    plan = plan_for(find_target(str(run.path)), ["login"], port_is_free=lambda p: p or 5)

    assert plan.destination == "node1"  # through the login node to the head's node
    assert plan.dashboard_url == "http://localhost:8265/"


def test_the_engine_survives_the_login_nodes_lookup(tmp_path: Path) -> None:
    target = find_target(str(_ray_run(tmp_path).path))

    assert RunTarget.from_json(target.to_json()).engine == "ray"


def test_a_dask_run_without_a_dashboard_still_offers_its_scheduler(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "runs", "run-dask")
    run.write_json("info.json", INFO)

    target = find_target(str(run.path))

    assert target.engine == "dask"
    plan = plan_for(target, ["login"], scheduler=True, port_is_free=lambda p: p or 5)
    assert [f.label for f in plan.forwards] == ["scheduler"]


def test_the_cli_names_the_token_file_a_ray_dashboard_asks_for(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from jobstrap.cli import cli

    run = _ray_run(tmp_path)
    run.write_json("info.json", {**INFO, "dashboard_address": "http://127.0.0.1:8265/"})

    result = CliRunner().invoke(
        cli, ["tunnel", str(run.path), "--via", "login", "--local-port", "18265", "--print"]
    )

    assert result.exit_code == 0, result.output
    assert f"{run.path}/ray/token" in result.stderr
