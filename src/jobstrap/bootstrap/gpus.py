"""The GPUs a job was given, and one worker per GPU with its own device first.

Read from the job's own allocation, never from the node's device count: a job
with 2 of a node's 4 GPUs must not run 4 workers, nor touch the other job's two.
Slurm sets, in a task of a job with GPUs:

* ``CUDA_VISIBLE_DEVICES``: the devices as CUDA numbers them in this process. With
  ``ConstrainDevices`` (cgroup) the process sees only its devices and they are
  re-based (``0,1`` for global devices 2 and 3); without, they are the node's global
  indices. Either way the right value to hand CUDA. PBS (with its cgroup hook) sets
  this one too, often as UUIDs (``GPU-5b3c...``).
* ``SLURM_STEP_GPUS`` (in ``srun`` steps) and ``SLURM_JOB_GPUS`` (the batch script and
  its steps): the node's global indices, whatever the cgroup does.

So ``CUDA_VISIBLE_DEVICES`` wins and the Slurm variables give each device its
node-wide id (to tell two jobs' devices apart); without ``CUDA_VISIBLE_DEVICES`` the
Slurm variables are used as they are (right unless devices are constrained, when
CUDA would also have been told).

Each worker gets ``CUDA_VISIBLE_DEVICES`` rotated so its own device comes first and
the others follow (dask-cuda's rotation): libraries that simply use device 0 use the
worker's own, and peer-to-peer copies still see the rest.

Pure functions over an environment mapping; no CUDA, no NVML.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "GPU_ID_VARIABLE",
    "GPU_RESOURCE",
    "GpuAllocation",
    "GpuWorker",
    "gpu_allocation",
    "gpu_workers",
]

#: The abstract resource each GPU worker offers: ``submit(..., resources={"GPU": 1})``.
GPU_RESOURCE = "GPU"
#: Set in each GPU worker: its device's node-wide id (the batch system's index).
GPU_ID_VARIABLE = "JOBSTRAP_GPU_ID"

_VISIBLE = "CUDA_VISIBLE_DEVICES"
#: Node-wide ids, most specific first: a step may hold fewer GPUs than its job.
_NODE_IDS = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS")
#: Values that mean "no device" (Slurm writes NoDevFiles for a GRES without files).
_NONE = frozenset({"", "nodevfiles", "none", "void"})
_ENTRY = re.compile(r"^(\d+|(GPU|MIG)-[0-9A-Za-z/_.:-]+)$")
_RANGE = re.compile(r"^(\d+)-(\d+)$")


@dataclass(frozen=True)
class GpuAllocation:
    """The GPUs a job's task was given.

    Attributes
    ----------
    devices
        As CUDA numbers them in this process (``CUDA_VISIBLE_DEVICES`` entries:
        indices or UUIDs), in the batch system's order.
    ids
        The batch system's node-wide id of each device, same order (the devices
        themselves when no node-wide ids are known).
    source
        The variable the devices came from, ``""`` when none was set.
    """

    devices: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    source: str = ""


@dataclass(frozen=True)
class GpuWorker:
    """One worker's share: its device first, the job's others after it."""

    visible: tuple[str, ...]
    node_id: str

    @property
    def device(self) -> str:
        """The worker's own device, as CUDA numbers it."""
        return self.visible[0]

    def environment(self) -> dict[str, str]:
        """Variables for this worker's process."""
        return {_VISIBLE: ",".join(self.visible), GPU_ID_VARIABLE: self.node_id}


def _entries(value: str) -> tuple[str, ...]:
    """A device list: comma-separated indices, ``a-b`` ranges or UUIDs.

    Stops at the first entry CUDA would not accept (CUDA ignores everything from
    the first invalid entry on, so ``0,-1,1`` is device 0 alone).
    """
    if value.strip().lower() in _NONE:
        return ()
    out: list[str] = []
    for raw in value.split(","):
        item = raw.strip()
        span = _RANGE.match(item)
        if span and int(span.group(1)) <= int(span.group(2)):
            out += [str(i) for i in range(int(span.group(1)), int(span.group(2)) + 1)]
            continue
        if not _ENTRY.match(item):
            break
        out.append(item)
    return tuple(dict.fromkeys(out))  # a device listed twice is still one device


def gpu_allocation(environ: Mapping[str, str]) -> GpuAllocation:
    """The GPUs of the task whose environment is ``environ``.

    Parameters
    ----------
    environ
        The task's environment (``os.environ`` in a job).

    Returns
    -------
    GpuAllocation
        Empty when no variable names a device.
    """
    node_ids: tuple[str, ...] = ()
    for name in _NODE_IDS:
        if name in environ:
            node_ids = _entries(environ[name])
            break
    if _VISIBLE in environ:
        devices = _entries(environ[_VISIBLE])
        # The node-wide ids line up only when both lists name the same devices; a
        # user who narrowed CUDA_VISIBLE_DEVICES is obeyed, without ids.
        ids = node_ids if len(node_ids) == len(devices) else devices
        return GpuAllocation(devices, ids, _VISIBLE)
    for name in _NODE_IDS:
        if name in environ:
            return GpuAllocation(node_ids, node_ids, name)
    return GpuAllocation()


def gpu_workers(allocation: GpuAllocation) -> list[GpuWorker]:
    """One worker per device, each with its own device first (dask-cuda's rotation).

    Parameters
    ----------
    allocation
        The task's GPUs (:func:`gpu_allocation`).

    Returns
    -------
    list of GpuWorker
        In device order; empty without devices.
    """
    devices: Sequence[str] = allocation.devices
    return [
        GpuWorker(tuple(devices[i:]) + tuple(devices[:i]), allocation.ids[i])
        for i in range(len(devices))
    ]
