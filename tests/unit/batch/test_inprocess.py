"""Where a graph job computes (pure), and the in-process path's pieces without a job."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import pytest

from jobstrap.batch.inprocess import graph_placement, names_distributed
from jobstrap.batch.submit import graph_argv
from jobstrap.bootstrap.options import parse_args
from jobstrap.config.profile import load_profile
from jobstrap.engines.dask.threads import compute_here, thread_counter
from jobstrap.errors import ConfigError, UserError
from jobstrap.jobs.spec import in_process_job
from jobstrap.store.rundir import RunDir

GRAPH: dict[str, Any] = {"kind": "collection", "obj": None}


def placement(**settings: Any) -> Any:
    return graph_placement(load_profile("default", settings), GRAPH)


# ------------------------------------------------------------------------- the decision


def test_a_one_node_graph_asking_for_nothing_runs_in_process_on_the_jobs_cores() -> None:
    where = placement(cores=6)

    assert (where.in_process, where.threads) == (True, 6)


def test_threads_size_the_in_process_pool_as_they_size_a_worker() -> None:
    assert placement(cores=8, threads=3).threads == 3


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        pytest.param({"graph_scheduler": "distributed"}, "graph_scheduler", id="override"),
        pytest.param({"nodes": 2}, "nodes: 2", id="nodes"),
        pytest.param({"processes": 2}, "processes: 2", id="processes"),
        pytest.param({"workers_per_rank": 2}, "workers_per_rank: 2", id="workers-per-rank"),
        pytest.param({"tasks_per_node": 3}, "tasks_per_node: 3", id="rank-layout"),
        pytest.param({"gpus": 1}, "gpus: 1", id="gpus"),
        pytest.param({"worker_class": "distributed.Worker"}, "worker_class", id="worker-class"),
    ],
)
def test_what_asks_for_distributed_workers_gets_them(settings: dict[str, Any], reason: str) -> None:
    where = placement(cores=4, **settings)

    assert where.in_process is False
    assert reason in where.reason


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"nanny": False}, id="nanny"),
        pytest.param({"protocol": "tcp"}, id="protocol"),
        pytest.param({"dashboard": False}, id="dashboard"),
        pytest.param({"worker_layout": "rank"}, id="worker-layout"),
    ],
)
def test_settings_that_only_shape_the_distributed_path_do_not_ask_for_it(
    settings: dict[str, Any],
) -> None:
    assert placement(**settings).in_process is True


def test_the_override_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBSTRAP_GRAPH_SCHEDULER", "distributed")

    assert placement().in_process is False


def test_an_unknown_graph_scheduler_is_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match="graph_scheduler"):
        load_profile("default", {"graph_scheduler": "threads"})


def uses_the_cluster() -> int:
    from distributed import get_client

    return len(get_client().scheduler_info()["workers"])


def nested_use() -> Any:
    def inner() -> Any:
        import distributed

        return distributed.worker_client

    return inner


def plain(x: int) -> int:
    return x * 2


class CallsTheCluster:
    def __call__(self) -> Any:
        from distributed import worker_client

        return worker_client


def test_a_function_that_names_distributeds_client_api_gets_a_cluster() -> None:
    profile = load_profile("default")
    work = {"kind": "function", "function": uses_the_cluster}

    assert graph_placement(profile, work).in_process is False


@pytest.mark.parametrize(
    ("function", "names"),
    [
        pytest.param(uses_the_cluster, True, id="get_client"),
        pytest.param(nested_use, True, id="nested-function"),
        pytest.param(functools.partial(uses_the_cluster), True, id="partial"),
        pytest.param(CallsTheCluster(), True, id="callable-object"),
        pytest.param(plain, False, id="plain"),
        pytest.param(divmod, False, id="builtin"),
        pytest.param(functools.partial(plain, 3), False, id="plain-partial"),
    ],
)
def test_functions_naming_distributed_are_told_apart(function: Any, names: bool) -> None:
    assert names_distributed(function) is names


# ------------------------------------------------------------------- the job it becomes


def test_the_in_process_job_is_one_task_with_every_core_and_no_mpi(tmp_path: Path) -> None:
    profile = load_profile("default", {"cores": 4})
    run = RunDir.create(tmp_path, "graph-x")

    spec = in_process_job(profile, str(run.path), "tag", graph_argv(4)(run))

    assert (spec.nodes, spec.ntasks, spec.cpus_per_task, spec.mpi, spec.launcher) == (
        1,
        1,
        4,
        False,
        "none",
    )
    command = list(spec.command)
    assert command[command.index("--mode") + 1] == "in-process"
    assert command[command.index("--threads") + 1] == "4"


def test_the_bootstrap_runs_an_app_in_process_mode_only_with_an_app() -> None:
    options = parse_args(["--run-dir", "/r", "--mode", "in-process", "--", "-m", "mod"])

    assert (options.mode, options.app is not None) == ("in-process", True)
    with pytest.raises(UserError, match="an app"):
        parse_args(["--run-dir", "/r", "--mode", "workers", "--", "-m", "mod"])


# ------------------------------------------------------- computing here, without a job


def test_a_graph_computed_here_counts_every_task_once() -> None:
    counter = thread_counter(3)
    graph = {"total": da.ones((40, 40), chunks=10).sum(), "n": dask.delayed(len)("abcd")}

    value = compute_here({"kind": "collection", "obj": graph}, 3, counter)

    counts = counter()
    assert value == {"total": 1600, "n": 4}
    assert (counts["done"] == counts["total"] > 16, counts["erred"]) == (True, 0)
    assert (counts["workers"], counts["threads"]) == (1, 3)


def threads_configured() -> Any:
    return dask.config.get("num_workers"), dask.config.get("scheduler")


def test_a_function_and_what_it_computes_use_the_jobs_threads() -> None:
    counter = thread_counter(5)

    value = compute_here({"kind": "function", "function": threads_configured}, 5, counter)

    assert value == (5, "threads")
    assert (counter()["total"], counter()["done"]) == (1, 1)


def fails() -> None:
    raise ValueError("no good")


def test_a_failing_task_counts_as_erred_and_raises_its_own_exception() -> None:
    counter = thread_counter(2)
    graph = dask.delayed(fails)()

    with pytest.raises(ValueError, match="no good"):
        compute_here({"kind": "collection", "obj": graph}, 2, counter)

    assert counter()["erred"] == 1


def asks_for_a_client() -> None:
    from distributed import get_client

    get_client()


def test_a_get_client_without_a_cluster_says_how_to_get_one() -> None:
    counter = thread_counter(1)

    with pytest.raises(ValueError, match="No global client") as caught:
        compute_here({"kind": "function", "function": asks_for_a_client}, 1, counter)

    notes = getattr(caught.value, "__notes__", [])
    assert any("graph_scheduler='distributed'" in note for note in notes)
