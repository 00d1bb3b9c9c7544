"""What the scale benchmark reports from its storms and launches: the done-means' fields."""

from __future__ import annotations

import bench_scale as bench


def storm_round(p50: float, p99: float, lost: int, **more: float) -> dict[str, float | int]:
    return {"workers": 1000, "registration_p50_s": p50, "registration_p99_s": p99,
            "lost_workers": lost, **more}  # fmt: skip


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert bench._percentile(values, 0.5) == 50.0
    assert bench._percentile(values, 0.99) == 99.0
    assert bench._percentile([3.0], 0.99) == 3.0
    assert bench._percentile([], 0.5) is None


def test_ours_are_at_the_top_and_the_anchors_beside_them() -> None:
    storm = {
        "jobstrap": [storm_round(0.2, 1.0, 0), storm_round(0.4, 3.0, 2)],
        "dask_mpi": [storm_round(0.5, 4.0, 0), {"side": "dask_mpi", "error": "boom"}],
    }
    fields = bench.summary_fields(storm, None)
    assert fields["workers"] == 1000
    assert fields["registration_p50_s"] == 0.3  # median of the rounds
    assert fields["registration_p99_s"] == 2.0
    assert fields["lost_workers"] == 2  # the worst round, never an average
    assert fields["dask_mpi_registration_p99_s"] == 4.0  # the failed round left out
    assert fields["dask_mpi_storm_failed_rounds"] == 1
    assert "ranks" not in fields


def test_launches_give_the_ranks_and_the_ratio_to_dask_mpi() -> None:
    ranks = {
        "256_srun": {
            "jobstrap": [{"launch_to_ready_s": 30.0, "pss_per_worker_mib": 40.0}],
            "dask_mpi": [{"launch_to_ready_s": 60.0, "pss_per_worker_mib": 52.0}],
        },
        "128_srun": {
            "jobstrap": [{"error": "RunFailedError: no report"}],
            "dask_mpi": [{"launch_to_ready_s": 30.0, "pss_per_worker_mib": 52.0}],
        },
    }
    fields = bench.summary_fields(None, ranks)
    assert fields["ranks"] == 256
    assert fields["launch_to_ready_s_256_srun"] == 30.0
    assert fields["dask_mpi_launch_to_ready_s_256_srun"] == 60.0
    assert fields["launch_to_ready_vs_dask_mpi_256_srun"] == 0.5
    assert fields["launch_to_ready_vs_dask_mpi_128_srun"] is None  # ours failed: no ratio


def test_every_series_pairs_jobstrap_with_dask_mpi() -> None:
    storm = {"jobstrap": [storm_round(0.2, 1.0, 0)], "dask_mpi": [storm_round(0.5, 4.0, 0)]}
    series, measures = bench.history_series(storm, None)
    assert series["storm_registration_p99_s"] == {"jobstrap": [1.0], "dask_mpi": [4.0]}
    assert measures["storm_registration_p99_s"]["anchor"] == "dask_mpi"
