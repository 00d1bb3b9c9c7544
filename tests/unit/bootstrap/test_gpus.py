"""A job's GPUs from the variables Slurm and PBS set, and one worker per GPU.

The environments are the ones measured on Slurm 22.05 with fake GPUs (see
docs/gpus.md): ``srun`` steps, batch scripts, with and without ``ConstrainDevices``.
"""

from __future__ import annotations

import pytest

from jobstrap.bootstrap.gpus import GpuAllocation, gpu_allocation, gpu_workers

# (environment, devices as CUDA numbers them, node-wide ids, source)
CASES = {
    "srun step, no cgroup, first two of four": (
        {"SLURM_STEP_GPUS": "0,1", "CUDA_VISIBLE_DEVICES": "0,1", "GPU_DEVICE_ORDINAL": "0,1"},
        ("0", "1"), ("0", "1"), "CUDA_VISIBLE_DEVICES",
    ),
    "second job on the node, no cgroup: global indices everywhere": (
        {"SLURM_JOB_GPUS": "2,3", "SLURM_STEP_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "2,3"},
        ("2", "3"), ("2", "3"), "CUDA_VISIBLE_DEVICES",
    ),
    "ConstrainDevices: CUDA re-based, Slurm ids global": (
        {"SLURM_JOB_GPUS": "2,3", "SLURM_STEP_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "0,1"},
        ("0", "1"), ("2", "3"), "CUDA_VISIBLE_DEVICES",
    ),
    "batch script: job ids only": (
        {"SLURM_JOB_GPUS": "1,3"},
        ("1", "3"), ("1", "3"), "SLURM_JOB_GPUS",
    ),
    "step ids preferred to job ids": (
        {"SLURM_JOB_GPUS": "0,1,2,3", "SLURM_STEP_GPUS": "2"},
        ("2",), ("2",), "SLURM_STEP_GPUS",
    ),
    "PBS: UUIDs in CUDA_VISIBLE_DEVICES": (
        {"CUDA_VISIBLE_DEVICES": "GPU-5b3c1a2e-aaaa,GPU-77f0e9d1-bbbb"},
        ("GPU-5b3c1a2e-aaaa", "GPU-77f0e9d1-bbbb"), ("GPU-5b3c1a2e-aaaa", "GPU-77f0e9d1-bbbb"),
        "CUDA_VISIBLE_DEVICES",
    ),
    "MIG instances": (
        {"CUDA_VISIBLE_DEVICES": "MIG-GPU-1/0/0, MIG-GPU-1/1/0"},
        ("MIG-GPU-1/0/0", "MIG-GPU-1/1/0"), ("MIG-GPU-1/0/0", "MIG-GPU-1/1/0"),
        "CUDA_VISIBLE_DEVICES",
    ),
    "user narrowed CUDA_VISIBLE_DEVICES: obeyed, ids unknown": (
        {"SLURM_STEP_GPUS": "0,1,2,3", "CUDA_VISIBLE_DEVICES": "3"},
        ("3",), ("3",), "CUDA_VISIBLE_DEVICES",
    ),
    "a range": (
        {"SLURM_JOB_GPUS": "0-2"},
        ("0", "1", "2"), ("0", "1", "2"), "SLURM_JOB_GPUS",
    ),
    "CUDA stops at the first invalid entry": (
        {"CUDA_VISIBLE_DEVICES": "1,-1,0"},
        ("1",), ("1",), "CUDA_VISIBLE_DEVICES",
    ),
    "NoDevFiles means none": (
        {"CUDA_VISIBLE_DEVICES": "NoDevFiles", "SLURM_JOB_GPUS": "0"},
        (), (), "CUDA_VISIBLE_DEVICES",
    ),
    "empty means none": ({"CUDA_VISIBLE_DEVICES": ""}, (), (), "CUDA_VISIBLE_DEVICES"),
    "no GPU variables at all": ({"SLURM_JOB_ID": "7", "SLURM_GPUS_ON_NODE": "4"}, (), (), ""),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_allocation_comes_from_the_job_variables(case: str) -> None:
    environ, devices, ids, source = CASES[case]
    assert gpu_allocation(environ) == GpuAllocation(devices, ids, source)


def test_the_node_device_count_alone_gives_no_gpus() -> None:
    # SLURM_GPUS_ON_NODE counts; it does not say which devices are ours.
    assert gpu_workers(gpu_allocation({"SLURM_GPUS_ON_NODE": "4"})) == []


def test_each_worker_has_its_own_device_first_then_the_others_in_rotation() -> None:
    workers = gpu_workers(GpuAllocation(("0", "1", "2"), ("4", "5", "6"), "CUDA_VISIBLE_DEVICES"))
    assert [w.environment()["CUDA_VISIBLE_DEVICES"] for w in workers] == [
        "0,1,2",
        "1,2,0",
        "2,0,1",
    ]
    assert [w.environment()["JOBSTRAP_GPU_ID"] for w in workers] == ["4", "5", "6"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_workers_get_distinct_own_devices_from_the_allocation_only(case: str) -> None:
    allocation = gpu_allocation(CASES[case][0])
    workers = gpu_workers(allocation)
    assert len(workers) == len(allocation.devices)
    assert sorted(w.device for w in workers) == sorted(allocation.devices)
    for worker in workers:
        assert sorted(worker.visible) == sorted(allocation.devices)


def test_a_device_listed_twice_is_one_worker() -> None:
    assert len(gpu_workers(gpu_allocation({"CUDA_VISIBLE_DEVICES": "0,0,1"}))) == 2
