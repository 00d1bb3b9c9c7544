"""The README's Measured table from run histories (bench/report.py), against a golden file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import history
import pytest
import report

GOLDEN = Path(__file__).parent / "golden" / "report_table.md"
CURRENT = {
    "bench/bench_cluster.py": "h1",
    "bench/bench_tls.py": "h9",
    "bench/bench_lifetime.py": "l1",
}


def run(
    rev: str,
    measured: str | None,
    series: dict[str, dict[str, list[float | None]]],
    measures: dict[str, dict[str, str]],
    *,
    date: str = "2026-12-06T10:00:00+0000",
    finished: bool = True,
) -> dict[str, Any]:
    return {
        "date": date,
        "code": {"rev": rev, "measured": measured},
        "finished": finished,
        "series": series,
        "measures": measures,
    }


def results_file(script: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"benchmark": script, "script": script, "runs": runs, "summary": history.summarise(runs)}


SCALE = {"scale_12": {"series": "scale_12", "ours": "jobstrap", "anchor": "dask_jobqueue"}}
TLS = {
    "cpu_per_mib_tls_vs_tcp": {
        "series": "cpu",
        "ours": "tls",
        "anchor": "tcp",
        "unit": "ms/MiB",
    }
}
LIFETIME = {
    "starts_per_task_vs_dask_jobqueue": {
        "series": "starts",
        "ours": "jobstrap",
        "anchor": "dask_jobqueue",
        "unit": "starts/task",
    },
    "completion_vs_dask_jobqueue": {
        "series": "completion",
        "ours": "jobstrap",
        "anchor": "dask_jobqueue",
        "unit": "s",
    },
}


@pytest.fixture
def results() -> dict[str, dict[str, Any]]:
    def scale(ours: list[float | None], theirs: list[float | None]) -> dict[str, Any]:
        return {"scale_12": {"jobstrap": ours, "dask_jobqueue": theirs}}

    return {
        # Two runs of the current code (0.5x), one from before the history (2x).
        "cluster.json": results_file(
            "bench/bench_cluster.py",
            [
                run("aaaaaaa1", None, scale([2.0, 2.0, 2.0], [1.0, 1.0, 1.0]), SCALE),
                run("bbbbbbb2", "h1", scale([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]), SCALE),
                run("ccccccc3", "h1", scale([2.0, 4.0, 6.0], [4.0, 8.0, 12.0]), SCALE),
            ],
        ),
        # Only code older than what is checked out: not rerun.
        "tls.json": results_file(
            "bench/bench_tls.py",
            [
                run(
                    "ddddddd4",
                    "h0",
                    {"cpu": {"tls": [2.0, 2.0, 2.0], "tcp": [1.0, 1.0, 1.0]}},
                    TLS,
                    date="2026-12-01T08:00:00+0000",
                )
            ],
        ),
        # dask-jobqueue cut at the timeout: its completion has no paired round.
        "lifetime.json": results_file(
            "bench/bench_lifetime.py",
            [
                run(
                    "eeeeeee5",
                    "l1",
                    {
                        "starts": {"jobstrap": [1.0], "dask_jobqueue": [1.25]},
                        "completion": {"jobstrap": [270.0], "dask_jobqueue": [None]},
                    },
                    LIFETIME,
                    finished=False,
                )
            ],
        ),
    }


def test_the_table_matches_the_golden_file(results: dict[str, dict[str, Any]]) -> None:
    assert report.table(results, CURRENT.get) == GOLDEN.read_text()


def test_every_file_is_pending_when_nothing_is_current(results: dict[str, dict[str, Any]]) -> None:
    text = report.table(results, lambda script: None)
    assert text.startswith("Pending: no run of the current code yet in `cluster.json`, `tls.json`")
    assert "| current" not in text


def test_update_rewrites_only_between_the_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{report.BEGIN}\nold table\n{report.END}\nafter\n")
    report.update(readme, "new table\n")
    assert readme.read_text() == f"before\n{report.BEGIN}\nnew table\n{report.END}\nafter\n"


def test_files_without_runs_are_not_read(tmp_path: Path) -> None:
    (tmp_path / "faults.json").write_text('{"faults": []}')
    history.append_run(tmp_path / "tls.json", run("r", "h", {}, {}), script="bench/bench_tls.py")
    assert list(report.load_results(tmp_path)) == ["tls.json"]


def test_the_lifetime_rows_show_throughput_per_worker_second_and_the_peak() -> None:
    measures = {
        name: {"series": series, "ours": "jobstrap", "anchor": anchor, "unit": unit}
        for name, series, anchor, unit in [
            ("starts_per_task_vs_no_rotation", "starts", "no_rotation", "starts/task"),
            ("throughput_per_worker_s_vs_no_rotation", "tput", "no_rotation", "tasks/worker-s"),
            ("peak_workers_vs_target", "peak", "target", "workers"),
        ]
    }
    series: dict[str, dict[str, list[float | None]]] = {
        "starts": {"jobstrap": [1.01], "no_rotation": [1.0]},
        "tput": {"jobstrap": [0.075], "no_rotation": [0.08]},
        "peak": {"jobstrap": [4.0], "target": [3.0]},
    }
    data = results_file("bench/bench_lifetime.py", [run("fffffff6", "l1", series, measures)])
    text = report.table({"lifetime.json": data}, CURRENT.get)
    lines = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert (
        "jobstrap without rotation: 1 starts/task"
        in lines["| lifetime rotation: task starts per task"]
    )
    assert "0.075 tasks/worker-s" in lines["| lifetime rotation: tasks per worker-second"]
    peak = lines["| lifetime rotation: peak workers vs target"]
    assert "4 workers" in peak
    assert "target (workers asked for): 3 workers" in peak


TWO = {"scale_2": {"series": "scale_2", "ours": "jobstrap", "anchor": "dask_jobqueue"}}


def scale_then_two(*twelves: tuple[str, str, float]) -> dict[str, Any]:
    """cluster.json: runs measuring scale_12 (rev, hash, ours vs 6 s), then scale_2 on h1."""
    runs = [
        run(rev, measured, {"scale_12": {"jobstrap": [ours], "dask_jobqueue": [6.0]}}, SCALE)
        for rev, measured, ours in twelves
    ]
    two = run("ccccccc3", "h1", {"scale_2": {"jobstrap": [1.0], "dask_jobqueue": [2.0]}}, TWO)
    return results_file("bench/bench_cluster.py", [*runs, two])


def test_a_measure_of_the_current_code_from_an_earlier_workload_is_current() -> None:
    # bench_scale runs its parts separately: the newest run measured scale_2 only, on
    # the same code as the run before it, which measured scale_12. Both are current.
    data = scale_then_two(("aaaaaaa1", "h0", 3.0), ("bbbbbbb2", "h1", 1.5))

    text = report.table({"cluster.json": data}, CURRENT.get)

    lines = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    twelve = lines["| `scale(jobs=12)` until 12 workers are connected"]
    assert "| 0.25 |" in twelve
    assert "| current; earlier code: 0.50 (aaaaaaa) |" in twelve
    assert "not rerun" not in text


def test_a_measure_last_taken_on_older_code_is_not_rerun() -> None:
    data = scale_then_two(("aaaaaaa1", "h0", 3.0))

    text = report.table({"cluster.json": data}, CURRENT.get)

    assert "**not rerun on the current code** (last: aaaaaaa" in text
