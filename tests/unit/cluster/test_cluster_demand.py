"""Which pool the scheduler's work needs: restricted tasks wake the pool providing
their resource, plain tasks the default pool. The observation runs against a real
distributed scheduler; the planning is pure."""

from __future__ import annotations

import asyncio

import pytest
from distributed import Client, Scheduler

from jobstrap.cluster.demand import Demand, PoolNeeds, observe, worker_targets

CPU = PoolNeeds({}, threads=4)
GPU = PoolNeeds({"GPU": 1}, threads=8)
GPU2 = PoolNeeds({"GPU": 2}, threads=8)
POOLS = {"cpu": CPU, "gpu": GPU}


def test_gpu_tasks_no_worker_can_run_wake_the_gpu_pool_only() -> None:
    demand = Demand(restricted=(({"GPU": 1}, 40),))
    assert worker_targets(demand, POOLS, "cpu", 5.0) == {"cpu": 0, "gpu": 40}


def test_a_worker_with_two_gpus_runs_two_one_gpu_tasks_at_once() -> None:
    demand = Demand(restricted=(({"GPU": 1}, 5),))
    assert worker_targets(demand, {"cpu": CPU, "gpu": GPU2}, "cpu", 5.0)["gpu"] == 3


def test_plain_tasks_wake_the_default_pool_by_their_run_time() -> None:
    # 100 tasks of 1 s, target 5 s: 20 threads, 5 workers of 4 threads.
    demand = Demand(plain_tasks=100, plain_seconds=100.0)
    assert worker_targets(demand, POOLS, "cpu", 5.0) == {"cpu": 5, "gpu": 0}
    # Few long tasks never ask for more threads than there are tasks.
    assert worker_targets(Demand(plain_tasks=2, plain_seconds=600.0), POOLS, "cpu", 5.0) == {
        "cpu": 1,
        "gpu": 0,
    }
    # Tasks of no measurable duration still need one worker.
    assert worker_targets(Demand(plain_tasks=3), POOLS, "cpu", 5.0)["cpu"] == 1


def test_both_kinds_of_work_wake_both_pools() -> None:
    demand = Demand(restricted=(({"GPU": 1}, 2),), plain_tasks=8, plain_seconds=40.0)
    assert worker_targets(demand, POOLS, "cpu", 5.0) == {"cpu": 2, "gpu": 2}


def test_memory_pressure_doubles_the_default_pool_as_adaptive_target_does() -> None:
    demand = Demand(plain_tasks=1, memory_pressure=True)
    assert worker_targets(demand, POOLS, "cpu", 5.0, plain_workers=3) == {"cpu": 6, "gpu": 0}
    calm = Demand(plain_tasks=1)
    assert worker_targets(calm, POOLS, "cpu", 5.0, plain_workers=3) == {"cpu": 1, "gpu": 0}


def test_work_no_adapted_pool_can_run_wakes_nothing() -> None:
    demand = Demand(restricted=(({"FPGA": 1}, 3), ({"GPU": 4}, 2)))
    assert worker_targets(demand, POOLS, "cpu", 5.0) == {"cpu": 0, "gpu": 0}
    # Plain work and a default pool that is not adapted: nobody is woken.
    assert worker_targets(Demand(plain_tasks=5), {"gpu": GPU}, "cpu", 5.0) == {"gpu": 0}


def test_a_restricted_task_goes_to_the_first_pool_that_can_run_it() -> None:
    pools = {"small": GPU, "big": GPU2}
    assert worker_targets(Demand(restricted=(({"GPU": 1}, 2),)), pools, "x", 5.0) == {
        "small": 2,
        "big": 0,
    }
    assert worker_targets(Demand(restricted=(({"GPU": 2}, 2),)), pools, "x", 5.0) == {
        "small": 0,
        "big": 2,
    }


def test_the_payload_round_trips() -> None:
    payload = {
        "restricted": [[{"GPU": 1}, 3]],
        "plain_tasks": 2,
        "plain_seconds": 1.5,
        "busy": ["a-0"],
        "workers": ["a-0", "b-0"],
    }
    demand = Demand.from_payload(payload)
    assert demand.restricted == (({"GPU": 1}, 3),)
    assert (demand.plain_tasks, demand.plain_seconds) == (2, 1.5)
    assert demand.busy == frozenset({"a-0"})
    assert demand.workers == frozenset({"a-0", "b-0"})


def _slow(x: int) -> int:
    return x


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_observe_reads_a_real_schedulers_unrunnable_and_queued_tasks() -> None:
    async def main() -> dict[str, object]:
        async with (
            Scheduler(dashboard_address=":0", port=0) as scheduler,
            Client(scheduler.address, asynchronous=True) as client,
        ):
            gpu = client.map(_slow, range(5), resources={"GPU": 1}, key=[f"g{i}" for i in range(5)])
            plain = client.map(_slow, range(3), key=[f"p{i}" for i in range(3)])
            for _ in range(200):
                if len(scheduler.unrunnable) + len(scheduler.queued) >= 8:
                    break
                await asyncio.sleep(0.02)
            seen = observe(scheduler)
            del gpu, plain
            return seen

    seen = asyncio.run(main())
    demand = Demand.from_payload(seen)  # type: ignore[arg-type]
    assert demand.restricted == (({"GPU": 1}, 5),)
    assert demand.plain_tasks == 3
    assert demand.workers == frozenset()
    assert demand.memory_pressure is False
    assert worker_targets(demand, POOLS, "cpu", 5.0) == {"cpu": 1, "gpu": 5}
