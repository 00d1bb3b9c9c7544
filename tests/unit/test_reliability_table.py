"""scripts/reliability_table.py: the fault suite's JSON rendered as docs/reliability.md."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "reliability_table.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reliability_table", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


table = _load()


def entry(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "test": "tests/faults/test_batch_faults.py::test_a_frozen_scheduler_rank",
        "fault": "scheduler rank frozen (SIGSTOP)",
        "mode": "batch",
        "expected": "the job ends within death timeout + 30 s",
        "observed": "job 7 ended FAILED",
        "recovery_seconds": 20.66,
        "recovery": "freeze to job ended",
        "tasks_recomputed": 0,
        "jobs_left_over": 0,
        "result": "passed",
        "message": "",
    }
    base.update(changes)
    return base


def test_a_passed_fault_is_one_row_with_its_recovery_time() -> None:
    text = table.render({"faults": [entry()]})

    row = next(line for line in text.splitlines() if line.startswith("| scheduler rank"))
    assert row == (
        "| scheduler rank frozen (SIGSTOP) | the job ends within death timeout + 30 s "
        "| job 7 ended FAILED | 20.7 s (freeze to job ended) | 0 | 0 | passed |"
    )
    assert "1 faults: 1 passed." in text


def test_faults_are_grouped_by_mode_in_a_fixed_order() -> None:
    data = {"faults": [entry(mode="controller", fault="ctld"), entry(mode="batch", fault="b")]}

    text = table.render(data)

    assert text.index("## Batch mode") < text.index("## The batch system itself")


def test_a_failure_says_so_with_its_message_and_a_skip_with_its_reason() -> None:
    data = {
        "faults": [
            entry(fault="f1", result="failed", message="timed out after 40s"),
            entry(fault="f2", result="skipped", message="needs --cgroup-memory"),
        ]
    }

    text = table.render(data)

    assert "**FAILED**: timed out after 40s" in text
    assert "skipped: needs --cgroup-memory" in text


def test_pipes_in_messages_do_not_break_the_table() -> None:
    text = table.render({"faults": [entry(observed="a | b")]})

    assert "a \\| b" in text


def test_check_fails_when_the_document_is_out_of_date(tmp_path: Path) -> None:
    results = tmp_path / "faults.json"
    doc = tmp_path / "reliability.md"
    results.write_text(json.dumps({"faults": [entry()]}))
    argv = ["--results", str(results), "--output", str(doc)]

    assert table.main([*argv, "--check"]) == 1
    assert table.main(argv) == 0
    assert table.main([*argv, "--check"]) == 0


def test_missing_results_are_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = table.main(["--results", str(tmp_path / "none.json"), "--output", str(tmp_path / "x")])

    assert code == 2
    assert "run the fault suite first" in capsys.readouterr().err


def test_a_test_that_passed_only_on_its_rerun_is_flaky_with_its_first_failure() -> None:
    data = {"faults": [entry(result="flaky", first_failure="AssertionError: job 9 PENDING")]}
    text = table.render(data)
    assert "1 faults: 1 flaky." in text
    assert "**flaky** (passed on its rerun; first attempt: AssertionError: job 9 PENDING)" in text
    assert "| passed |" not in text
