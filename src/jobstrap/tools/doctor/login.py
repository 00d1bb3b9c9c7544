"""The doctor's first phase, on the login node: batch commands, Python, addresses, partitions.

Each check is a function of facts gathered here (``which``, the profile, the
partition listing the batch system prints), so the rules are unit-tested with
recorded output.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence

from jobstrap.bootstrap.probe import python_facts
from jobstrap.config.units import format_walltime_slurm
from jobstrap.errors import ConfigError, NetworkError
from jobstrap.systems import get_system
from jobstrap.systems.partitions import Partition
from jobstrap.tools.doctor.report import Check, fail, ok, warn

__all__ = [
    "Partition",
    "batch_commands",
    "check_batch_commands",
    "check_client_python",
    "check_partition",
    "check_profile_python",
    "check_scheduler_address",
    "partition_argv",
]


def batch_commands(system: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, optional) commands of a batch system (none for an unknown one)."""
    try:
        found = get_system(system)
    except ConfigError:
        return (), ()
    return tuple(found.required_commands), tuple(found.optional_commands)


def check_batch_commands(system: str, which: Callable[[str], str | None] = shutil.which) -> Check:
    """Are the batch system's commands on PATH?"""
    required, optional = batch_commands(system)
    if not required:
        return ok("batch commands", f"{system}: none needed")
    missing = [c for c in required if which(c) is None]
    if missing:
        return fail(
            "batch commands",
            f"not on PATH: {', '.join(missing)}",
            f"run the doctor on a {system} login node, or load the module that provides "
            f"{missing[0]} (e.g. `module load {system}`)",
        )
    found = which(required[0]) or ""
    missing_optional = [c for c in optional if which(c) is None]
    if missing_optional:
        return warn(
            "batch commands",
            f"{', '.join(required)} found; {', '.join(missing_optional)} not on PATH",
            f"without {missing_optional[0]} jobstrap cannot read the final state of ended jobs",
        )
    return ok("batch commands", f"{', '.join(required + optional)} in {os.path.dirname(found)}")


def check_client_python(versions: Mapping[str, str | None]) -> Check:
    """This Python and the packages a client needs."""
    facts = python_facts()
    missing = [p for p in ("dask", "distributed") if not versions.get(p)]
    detail = f"{facts['executable']} {facts['version']}"
    if missing:
        return fail(
            "client python",
            f"{detail}; {', '.join(missing)} not installed",
            "pip install dask distributed (the same versions as on the compute nodes)",
        )
    return ok(
        "client python",
        f"{detail}, dask {versions['dask']}, distributed {versions['distributed']}",
    )


def check_profile_python(python: str) -> Check:
    """Is the profile's ``python`` a path this host knows? (The probe checks the nodes.)"""
    if not os.path.isabs(python):
        return ok("profile python", f"{python} (found through PATH on the nodes)")
    if os.access(python, os.X_OK):
        return ok("profile python", f"{python} exists here")
    return warn(
        "profile python",
        f"{python} does not exist on this host",
        "fine if it exists only on the compute nodes; the probe job checks there",
    )


def check_scheduler_address(preference: Sequence[str]) -> tuple[Check, str | None]:
    """The address a scheduler on this host would listen on (``scheduler_interface``)."""
    from jobstrap.net.network import choose_interface

    wanted = ",".join(preference)
    try:
        iface = choose_interface(list(preference))
    except NetworkError as error:
        return (
            fail(
                "scheduler address",
                str(error),
                "set scheduler_interface to an interface this login node has (or auto)",
            ),
            None,
        )
    return ok("scheduler address", f"{iface.address} on {iface.name} ({wanted})"), iface.address


def partition_argv(system: str, queue: str | None) -> list[list[str]]:
    """Commands that describe the partitions, best first (the next is the fallback)."""
    try:
        return get_system(system).partition_argv(queue)
    except ConfigError:
        return []


def check_partition(
    queue: str | None, walltime: int, nodes: int, partitions: Mapping[str, Partition]
) -> Check:
    """Does the profile's walltime (and node count) fit the partition?"""
    word = "partition (queue)"
    if queue is None:
        default = next((p for p in partitions.values() if p.default), None)
        if default is None:
            return ok("partition", "site default (its limits were not checked)")
        partition = default
    elif queue not in partitions:
        known = ", ".join(sorted(partitions)) or "none listed"
        return fail(
            "partition",
            f"{queue!r} does not exist (known: {known})",
            f"set `queue:` to one of: {known}",
        )
    else:
        partition = partitions[queue]
    asked = format_walltime_slurm(walltime)
    if partition.state not in ("UP", "OPEN"):
        return fail(
            "partition",
            f"{partition.name} is {partition.state}: jobs will not start",
            f"use another {word} (`queue:`), or ask the admins when {partition.name} is back",
        )
    if partition.total_nodes is not None and nodes > partition.total_nodes:
        return fail(
            "partition",
            f"{nodes} nodes per job but {partition.name} has {partition.total_nodes}",
            f"set `nodes:` to at most {partition.total_nodes}",
        )
    if partition.max_time is None:
        return ok("partition", f"{partition.name}: walltime {asked}, no limit")
    limit = format_walltime_slurm(partition.max_time)
    if walltime > partition.max_time:
        return fail(
            "partition",
            f"walltime {asked} exceeds {partition.name}'s limit {limit}",
            f"set `walltime:` to at most {limit}, or use a {word} with a longer limit",
        )
    return ok("partition", f"{partition.name}: walltime {asked} within its limit {limit}")
