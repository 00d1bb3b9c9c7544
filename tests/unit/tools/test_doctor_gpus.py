"""The doctor's GPU checks from probe facts (and the facts a probe collects)."""

from __future__ import annotations

from typing import Any

import pytest

from jobstrap.bootstrap.probe import gpu_facts
from jobstrap.tools.doctor.gpus import check_gpus
from jobstrap.tools.doctor.report import Status


def _report(env: dict[str, str], asked: int, files: dict[str, str] | None = None) -> dict[str, Any]:
    facts = gpu_facts(asked, env)
    facts["device_files"] = files or {}
    return {"host": "node1", "gpus": facts}


def _statuses(checks: list[Any]) -> dict[str, Status]:
    return {c.name: c.status for c in checks}


def test_the_gpus_asked_for_each_its_own_worker_and_fenced_devices_pass() -> None:
    files = {f"/dev/nvidia{i}": "usable" if i in (2, 3) else "denied" for i in range(4)}
    env = {"CUDA_VISIBLE_DEVICES": "0,1", "SLURM_STEP_GPUS": "2,3"}

    checks = check_gpus(_report(env, 2, files), 2)

    assert _statuses(checks) == {
        "gpus": Status.OK, "gpu workers": Status.OK, "gpu isolation": Status.OK,
    }  # fmt: skip
    assert "0,1 / 1,0" in next(c.detail for c in checks if c.name == "gpu workers")


def test_asking_for_gpus_and_seeing_none_fails_with_a_fix() -> None:
    checks = check_gpus(_report({"SLURM_GPUS_ON_NODE": "4"}, 2), 2)
    assert _statuses(checks) == {"gpus": Status.FAIL}
    assert checks[0].fix


def test_seeing_fewer_gpus_than_asked_fails() -> None:
    checks = check_gpus(_report({"CUDA_VISIBLE_DEVICES": "0"}, 2), 2)
    assert _statuses(checks)["gpus"] is Status.FAIL


def test_devices_not_fenced_off_are_a_warning() -> None:
    files = {f"/dev/nvidia{i}": "usable" for i in range(4)}
    checks = check_gpus(_report({"CUDA_VISIBLE_DEVICES": "2,3"}, 2, files), 2)
    assert _statuses(checks)["gpu isolation"] is Status.WARN


def test_gpus_seen_but_not_asked_for_are_a_warning() -> None:
    checks = check_gpus(_report({"CUDA_VISIBLE_DEVICES": "0,1"}, 0), 0)
    assert _statuses(checks)["gpus"] is Status.WARN


@pytest.mark.parametrize("report", [{"host": "n"}, {"host": "n", "gpus": gpu_facts(0, {})}])
def test_no_gpu_asked_and_none_seen_adds_no_check(report: dict[str, Any]) -> None:
    assert check_gpus(report, 0) == []


def test_a_probe_without_gpu_facts_warns_when_gpus_were_asked_for() -> None:
    assert _statuses(check_gpus({"host": "n"}, 2)) == {"gpus": Status.WARN}
