"""Worker pools: one scheduler, several job shapes, each validated like the cluster's keywords."""

from __future__ import annotations

import ast
import math
import shlex

import pytest

from jobstrap.batchctl.submit import tagged
from jobstrap.cluster.jobs import name_jobs, worker_job_spec
from jobstrap.cluster.options import ClusterOptions
from jobstrap.cluster.pools import (
    DEFAULT_POOL,
    RESOURCES_VARIABLE,
    build_pools,
    pick_pool,
    pool_bounds,
    pop_resources,
    provides,
    resources_env,
)
from jobstrap.cluster.scaling import job_of_worker, worker_names
from jobstrap.config.profile import Profile, load_profile
from jobstrap.errors import ConfigError
from jobstrap.jobs.render import render_script
from jobstrap.systems import get_system

GIB = 2**30
TWO = {"cpu": {"cores": 8, "memory": "32GiB"}, "gpu": {"queue": "gpu", "gpus": 2, "cores": 8}}


def slurm_profile(**overrides: object) -> Profile:
    return load_profile("testcluster", {"cores": 2, "memory": "4GiB", **overrides}, environ={})


def test_without_pools_a_cluster_is_one_default_pool_of_its_profile() -> None:
    profile = slurm_profile()
    pools = build_pools(profile, ClusterOptions(), "jobstrap")
    assert list(pools) == [DEFAULT_POOL]
    only = pools[DEFAULT_POOL]
    assert only.profile == profile
    assert only.prefix == "jobstrap"  # today's job names, unchanged
    assert only.resources == {}


def test_each_pool_overrides_the_profile_and_keeps_the_rest() -> None:
    profile = slurm_profile(account="proj", walltime="2h")
    pools = build_pools(profile, ClusterOptions(), "jobstrap", TWO)
    cpu, gpu = pools["cpu"], pools["gpu"]
    # The profile's queue (testcluster: debug) unless the pool names its own.
    assert (cpu.profile.cores, cpu.profile.memory, cpu.profile.queue) == (8, 32 * GIB, "debug")
    assert (gpu.profile.queue, gpu.profile.gpus) == ("gpu", 2)
    assert gpu.profile.memory == 4 * GIB  # not given for the pool: the profile's
    assert {p.profile.account for p in pools.values()} == {"proj"}
    assert {p.profile.walltime for p in pools.values()} == {7200}
    # One worker per GPU: the gpu pool's 8 cores go to 2 workers of 4 threads.
    assert (cpu.shape.processes, cpu.shape.threads) == (1, 8)
    assert (gpu.shape.processes, gpu.shape.threads) == (2, 4)


def test_the_first_pool_is_the_default_unless_one_is_called_default() -> None:
    profile = slurm_profile()
    assert next(iter(build_pools(profile, ClusterOptions(), "js", TWO))) == "cpu"
    named = {"gpu": {"gpus": 1}, "default": {}}
    assert list(build_pools(profile, ClusterOptions(), "js", named)) == ["default", "gpu"]
    assert pick_pool(build_pools(profile, ClusterOptions(), "js", TWO), None).name == "cpu"


def test_pool_names_are_in_job_and_worker_names_and_map_back() -> None:
    pools = build_pools(slurm_profile(), ClusterOptions(), "jobstrap", TWO)
    assert pools["gpu"].prefix == "jobstrap-gpu"
    spec = worker_job_spec(pools["gpu"].profile, "/runs/c", "jsabc", scheduler_address=None)
    _, names = name_jobs(spec, pools["gpu"].prefix, 3)
    assert names == ["jobstrap-gpu-3.0"]
    for worker in worker_names(names[0], pools["gpu"].shape):
        assert worker.startswith("jobstrap-gpu-3.0")
        assert job_of_worker(worker) == "jobstrap-gpu-3.0"


@pytest.mark.parametrize(
    ("pools", "field", "words"),
    [
        ({"gpu": {"quue": "gpu"}}, "pools['gpu'].quue", "did you mean 'queue'?"),
        ({"gpu": {"cores": 0}}, "pools['gpu'].cores", "invalid value 0"),
        ({"gpu": {"walltime": "soon"}}, "pools['gpu'].walltime", "invalid value 'soon'"),
        ({"gpu": {"n_workers": 2}}, "pools['gpu'].n_workers", "a cluster setting"),
        ({"gpu": {"worker_resources": {"GPU": -1}}}, "worker_resources.GPU", "positive"),
        ({"gpu": {"worker_resources": "GPU=1"}}, "pools['gpu'].worker_resources", "a dict"),
        ({"GPU pool": {}}, "pools", "pool names are lower-case"),
        ({"gpu": ["queue=gpu"]}, "pools['gpu']", "expected a dict of settings"),
        (["gpu"], "pools", "expected a dict of pools"),
    ],
)
def test_a_bad_pool_setting_is_one_line_naming_the_pool_and_field(
    pools: object, field: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        build_pools(slurm_profile(), ClusterOptions(), "js", pools)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message
    assert field in message
    assert words in message


def test_dask_jobqueue_spellings_work_inside_a_pool() -> None:
    pools = build_pools(
        slurm_profile(),
        ClusterOptions(job_mem=GIB),
        "js",
        {"big": {"job_extra_directives": ["--constraint=bigmem"], "job_cpu": 4}},
    )
    big = pools["big"]
    assert "--constraint=bigmem" in big.profile.extra_directives
    assert (big.options.job_cpu, big.options.job_mem) == (4, GIB)


def test_worker_resources_reach_every_worker_through_its_job_environment() -> None:
    pools = build_pools(
        slurm_profile(),
        ClusterOptions(),
        "js",
        {"cpu": {}, "gpu": {"worker_resources": {"GPU": 1, "VRAM": 16e9}}},
    )
    assert pools["gpu"].resources == {"GPU": 1, "VRAM": 16e9}
    assert RESOURCES_VARIABLE not in dict(pools["cpu"].profile.env)
    env = dict(pools["gpu"].profile.env)
    # dask turns the variable into distributed.worker.resources: a literal dict,
    # keys kept as written (dask lower-cases nested variable names, not values).
    assert ast.literal_eval(env[RESOURCES_VARIABLE]) == {"GPU": 1, "VRAM": 16e9}
    spec = worker_job_spec(pools["gpu"].profile, "/runs/c", "jsabc", scheduler_address=None)
    script = render_script(tagged(spec), get_system("slurm"))
    exported = [ln for ln in script.splitlines() if RESOURCES_VARIABLE in ln]
    assert exported
    assert shlex.split(exported[0].split("export ", 1)[-1]) == [
        f"{RESOURCES_VARIABLE}={env[RESOURCES_VARIABLE]}"
    ]


def test_a_gpu_pool_provides_one_gpu_per_worker_unless_it_says_otherwise() -> None:
    pools = build_pools(slurm_profile(), ClusterOptions(), "js", TWO)
    assert pools["gpu"].resources == {"GPU": 1}
    assert pools["cpu"].resources == {}
    # The job side gives each per-GPU worker GPU=1: nothing is added to the job here.
    assert RESOURCES_VARIABLE not in dict(pools["gpu"].profile.env)


def test_cluster_level_worker_resources_are_the_default_pools() -> None:
    settings: dict[str, object] = {"resources": {"GPU": 2}, "cores": 4}
    resources = pop_resources(settings)
    assert settings == {"cores": 4}
    pools = build_pools(slurm_profile(), ClusterOptions(), "js", None, resources)
    assert pools[DEFAULT_POOL].resources == {"GPU": 2}
    with pytest.raises(ConfigError, match="each pool its own"):
        build_pools(slurm_profile(), ClusterOptions(), "js", TWO, resources)


def test_resources_env_is_empty_without_resources() -> None:
    assert resources_env({}) == {}


def test_an_unknown_pool_is_named_with_a_suggestion() -> None:
    pools = build_pools(slurm_profile(), ClusterOptions(), "js", TWO)
    with pytest.raises(ConfigError, match=r"pool: invalid value 'gpus': no such pool.*'gpu'"):
        pick_pool(pools, "gpus")


def test_adapt_bounds_per_pool() -> None:
    pools = build_pools(slurm_profile(), ClusterOptions(), "js", TWO)
    assert pool_bounds(pools, {"cpu": (0, 20), "gpu": (1, 4)}) == {"cpu": (0, 20), "gpu": (1, 4)}
    assert pool_bounds(pools, {"gpu": 3}) == {"gpu": (0, 3)}
    assert pool_bounds(pools, {"cpu": (0, math.inf)}) == {"cpu": (0, math.inf)}
    for bad, words in [
        ({"gpu": (4, 1)}, "above the maximum"),
        ({"gpu": (-1, 1)}, "negative"),
        ({"gpu": ("a", 1)}, "job count"),
        ({"gpx": (0, 1)}, "did you mean 'gpu'"),
        ({}, "expected"),
    ]:
        with pytest.raises(ConfigError, match=words):
            pool_bounds(pools, bad)


def test_a_pool_provides_what_a_task_asks_when_every_amount_is_covered() -> None:
    assert provides({"GPU": 1}, {"GPU": 1})
    assert provides({"GPU": 2, "MEM": 10}, {"GPU": 1})
    assert not provides({"GPU": 1}, {"GPU": 2})
    assert not provides({}, {"GPU": 1})
    assert provides({}, {})
