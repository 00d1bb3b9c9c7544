"""GPU settings of a profile that only make sense together.

Kept out of :mod:`jobstrap.config.profile` (the schema) so the rules read in one place.
"""

from __future__ import annotations

from typing import Protocol

from jobstrap.config.units import format_memory
from jobstrap.errors import ConfigError

__all__ = ["GpuSettings", "check_gpus"]


class GpuSettings(Protocol):
    """The profile's GPU fields (the profile itself; no import back into it)."""

    @property
    def gpus(self) -> int: ...

    @property
    def gpus_per_job(self) -> int: ...

    @property
    def gpu_type(self) -> str | None: ...

    @property
    def mem_per_gpu(self) -> int | None: ...

    @property
    def memory_per(self) -> str | None: ...

    @property
    def gpu_bind(self) -> str | None: ...

    @property
    def memory(self) -> int | None: ...

    @property
    def memory_unit(self) -> str: ...


def check_gpus(profile: GpuSettings) -> None:
    """GPU settings that only make sense together; one line naming the field."""
    if profile.gpus and profile.gpus_per_job:
        raise ConfigError(
            "gpus_per_job", profile.gpus_per_job, "set either gpus (per node) or gpus_per_job"
        )
    has_gpus = bool(profile.gpus or profile.gpus_per_job)
    for name in ("gpu_type", "mem_per_gpu", "gpu_bind"):
        value = getattr(profile, name)
        if value is not None and not has_gpus:
            shown = format_memory(value) if name == "mem_per_gpu" else value
            raise ConfigError(name, shown, "needs gpus (or gpus_per_job) of at least 1")
    if profile.mem_per_gpu is not None and profile.memory_unit != "gpu":
        raise ConfigError(
            "mem_per_gpu",
            format_memory(profile.mem_per_gpu),
            f"is a per-GPU request but memory_per is {profile.memory_per}; "
            "set memory_per: gpu or drop mem_per_gpu",
        )
    if profile.mem_per_gpu == 0:
        raise ConfigError("mem_per_gpu", "0", "must be more than 0")
    if profile.memory_unit == "gpu" and not has_gpus:
        raise ConfigError("memory_per", "gpu", "needs gpus (or gpus_per_job) of at least 1")
    no_memory = profile.memory is None and profile.mem_per_gpu is None
    if profile.memory_unit in ("cpu", "gpu") and no_memory:
        raise ConfigError(
            "memory_per", profile.memory_unit, "needs memory (or mem_per_gpu) to divide"
        )
