"""Results files as run histories (bench/history.py): every run kept, the current code pooled."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import history
import pytest

MEASURES = {"scale_12": {"series": "scale_12", "ours": "jobstrap", "anchor": "dask-jobqueue"}}


def run(
    measured: str | None,
    ours: list[float | None],
    theirs: list[float | None],
    *,
    rev: str = "r1",
    finished: bool = True,
) -> dict[str, Any]:
    return {
        "date": "2026-12-06T00:00:00+0000",
        "code": {"rev": rev, "measured": measured},
        "versions": {},
        "settings": {},
        "finished": finished,
        "series": {"scale_12": {"jobstrap": ours, "dask-jobqueue": theirs}},
        "measures": MEASURES,
        "detail": {},
    }


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return tmp_path / "results" / "cluster.json"


def test_append_keeps_every_run_in_order(results: Path) -> None:
    runs = [run("a", [1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) for _ in range(3)]
    runs[1]["date"] = "second"
    for each in runs:
        history.append_run(results, each, benchmark="scale", script="bench/bench_cluster.py")
    data = json.loads(results.read_text())
    assert data["runs"] == runs
    assert (data["benchmark"], data["script"]) == ("scale", "bench/bench_cluster.py")


def test_summary_pools_the_rounds_of_the_newest_runs_measured_code_only(results: Path) -> None:
    history.append_run(results, run("old", [2.0, 2.0, 2.0], [1.0, 1.0, 1.0]))
    history.append_run(results, run("new", [1.0, 2.0, 3.0], [2.0, 4.0, 6.0], rev="r2"))
    # Another commit with the same measured files (a README change): pooled.
    data = history.append_run(results, run("new", [2.0, 4.0, 6.0], [4.0, 8.0, 12.0], rev="r3"))
    figure = data["summary"]["scale_12"]
    assert (figure["runs"], figure["rounds"]) == (2, 6)
    assert (figure["ratio"], figure["ratio_of_means"], figure["ci"]) == (0.5, 0.5, [0.5, 0.5])
    assert (figure["ours"], figure["anchor"]) == ("jobstrap", "dask-jobqueue")
    assert (figure["ours_median"], figure["anchor_median"]) == (2.5, 5.0)
    # Back on the old code: the old code's runs alone.
    data = history.append_run(results, run("old", [2.0, 2.0, 2.0], [1.0, 1.0, 1.0]))
    assert (data["summary"]["scale_12"]["ratio"], data["summary"]["scale_12"]["runs"]) == (2.0, 2)
    assert len(data["runs"]) == 4


def test_runs_from_before_the_history_pool_only_within_their_commit(results: Path) -> None:
    history.append_run(results, run(None, [2.0, 2.0, 2.0], [1.0, 1.0, 1.0], rev="c1"))
    data = history.append_run(results, run(None, [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], rev="c2"))
    assert (data["summary"]["scale_12"]["ratio"], data["summary"]["scale_12"]["runs"]) == (1.0, 1)
    last = history.last_pooled(data["runs"], "scale_12")
    assert last is not None
    assert last["code"]["rev"] == "c2"


def test_an_unfinished_run_counts_its_finished_rounds_and_is_not_called_incorrect(
    results: Path,
) -> None:
    # dask-jobqueue was cut at the timeout in round 3: unfinished, not wrong.
    cut = run("a", [1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, None], finished=False)
    data = history.append_run(results, cut)
    figure = data["summary"]["scale_12"]
    assert (figure["rounds"], figure["unfinished_runs"], figure["ratio"]) == (3, 1, 0.5)
    assert data["runs"][0]["finished"] is False
    assert '"correct"' not in results.read_text()


def test_a_measure_with_no_paired_round_has_no_figure(results: Path) -> None:
    data = history.append_run(results, run("a", [1.0], [None], finished=False))
    assert data["summary"] == {}
    assert history.pool(data["runs"], "scale_12") is None


def test_fewer_than_three_rounds_give_a_ratio_without_interval(results: Path) -> None:
    figure = history.append_run(results, run("a", [1.0, 3.0], [2.0, 2.0]))["summary"]["scale_12"]
    assert (figure["ratio"], figure["ci"], figure["rounds"]) == (1.0, None, 2)


def test_a_failed_write_leaves_the_previous_file_whole(
    results: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    history.append_run(results, run("a", [1.0, 1.0, 1.0], [2.0, 2.0, 2.0]))
    results.chmod(0o644)
    before = results.read_text()

    def broken(source: str, target: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        history.append_run(results, run("a", [5.0, 5.0, 5.0], [1.0, 1.0, 1.0]))
    monkeypatch.undo()
    assert results.read_text() == before
    assert [p.name for p in results.parent.iterdir()] == ["cluster.json"]  # no temporary left
    history.append_run(results, run("a", [5.0, 5.0, 5.0], [1.0, 1.0, 1.0]))
    assert results.stat().st_mode & 0o777 == 0o644
    assert len(json.loads(results.read_text())["runs"]) == 2


def test_a_results_file_that_is_no_history_is_refused(results: Path) -> None:
    results.parent.mkdir(parents=True)
    results.write_text('{"scale": 1}')
    with pytest.raises(ValueError, match="no 'runs' list"):
        history.append_run(results, run("a", [1.0], [1.0]))


def test_the_measured_code_is_the_package_and_the_script_not_the_rest(tmp_path: Path) -> None:
    for name, text in {
        "src/jobstrap/core.py": "x = 1\n",
        "bench/bench_cluster.py": "run\n",
        "bench/slurm_phase.py": "phase\n",
        "bench/stats.py": "stats\n",
        "README.md": "readme\n",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)

    def measured() -> str:
        return str(history.code_identity("bench/bench_cluster.py", tmp_path)["measured"])

    first = measured()
    (tmp_path / "README.md").write_text("a new README\n")
    (tmp_path / "bench" / "stats.py").write_text("a new summary\n")
    (tmp_path / "src" / "jobstrap" / "__pycache__").mkdir()
    (tmp_path / "src" / "jobstrap" / "__pycache__" / "core.cpython-311.pyc").write_bytes(b"\0")
    assert measured() == first
    (tmp_path / "src" / "jobstrap" / "core.py").write_text("x = 2\n")
    assert measured() != first
    changed = measured()
    (tmp_path / "bench" / "bench_cluster.py").write_text("run faster\n")
    assert measured() != changed


def test_runs_of_another_workload_are_not_pooled(results: Path) -> None:
    small = run("a", [1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    small["workload"] = {"array": {"n": 1000}}
    large = run("a", [1.0, 1.0, 1.0], [2.0, 2.0, 2.0])
    large["workload"] = {"array": {"n": 10000}}
    history.append_run(results, small)
    data = history.append_run(results, large)
    assert (data["summary"]["scale_12"]["ratio"], data["summary"]["scale_12"]["runs"]) == (0.5, 1)
