"""What the lifetime benchmark derives from a run: occupancy, unfinished runs, measures."""

from __future__ import annotations

import bench_lifetime as bench


def test_worker_seconds_peak_and_time_above_target_from_samples() -> None:
    # Sampled at 1 s, 2 s, 3 s, 4 s: 0, 3, 4, 3 workers until 5 s; the target is 3.
    samples = [(1.0, 0), (2.0, 3), (3.0, 4), (4.0, 3)]
    used = bench.occupancy(samples, began=0.0, ended=5.0, target=3)
    assert used == {
        "worker_seconds": 10.0,
        "peak_workers": 4,
        "target_workers": 3,
        "seconds_above_target": 1.0,
    }


def test_a_run_cut_at_its_timeout_is_unfinished_with_what_it_did() -> None:
    results = {
        "jobstrap": {"finished": True, "tasks": 75, "tasks_completed": 75},
        "dask_jobqueue": {"finished": False, "tasks": 75, "tasks_completed": 52},
    }
    assert bench.unfinished(results) == {"dask_jobqueue": {"tasks_completed": 52, "tasks": 75}}


def test_the_series_hold_the_new_measures_and_the_target() -> None:
    entry = {
        "completion_s": 300.0,
        "starts_per_task": 1.0,
        "throughput_per_worker_s": 0.08,
        "worker_seconds": 930.0,
        "peak_workers": 4,
        "seconds_above_target": 20.0,
    }
    cut = {**entry, "completion_s": None}
    series = bench.lifetime_series({"jobstrap": entry, "dask_jobqueue": cut}, target=3)
    assert series["completion"] == {"jobstrap": [300.0], "dask_jobqueue": [None]}
    assert series["peak_workers"]["target"] == [3.0]
    measures = bench.lifetime_measures(series)
    assert set(measures) == {
        "starts_per_task_vs_dask_jobqueue",
        "completion_vs_dask_jobqueue",
        "throughput_per_worker_s_vs_dask_jobqueue",
        "peak_workers_vs_target",
    }


def test_the_default_scenario_is_three_chains_of_25_twelve_second_tasks_on_3_jobs() -> None:
    args = bench.arguments([])
    assert (args.jobs, args.walltime) == (3, 120)
    assert (args.shape, args.width, args.levels, args.seconds) == ("chains", 3, 25, 12.0)
    assert args.margin is None  # jobstrap's automatic margin
    # Chains: each task depends only on its own chain's previous task.
    assert bench.right_of(1, 3, "chains") == 1
    assert bench.right_of(1, 3, "grid") == 2
