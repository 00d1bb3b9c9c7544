"""Partitions (Slurm) and queues (PBS): their limits, parsed from the batch system's words.

``jobstrap doctor`` checks the profile's walltime and node count against them. Each
batch system names the commands that describe them (``partition_argv``) and parses
their output (``parse_partitions``) with the parsers here. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from jobstrap.config.units import parse_walltime
from jobstrap.errors import ConfigError

__all__ = ["Partition", "parse_pbs_queue", "parse_sinfo_partitions", "parse_slurm_partitions"]


@dataclass(frozen=True)
class Partition:
    """What the doctor needs of one partition (Slurm) or queue (PBS): its limits and state."""

    name: str
    max_time: int | None  #: seconds; None: unlimited
    default: bool = False
    state: str = "UP"
    total_nodes: int | None = None


def _parse_limit(text: str) -> int | None:
    text = text.strip()
    if text.upper() in ("UNLIMITED", "INFINITE", "NONE", "") or text.startswith("("):
        return None
    try:
        return parse_walltime(text, "MaxTime")
    except ConfigError:
        return None


def parse_slurm_partitions(text: str) -> dict[str, Partition]:
    """Parse ``scontrol show partition --oneliner`` (or the multi-line form)."""
    partitions: dict[str, Partition] = {}
    for block in re.split(r"\n\s*\n|\n(?=PartitionName=)", text.strip()):
        values = dict(re.findall(r"(\w+)=(\S*)", block))
        name = values.get("PartitionName")
        if not name:
            continue
        nodes = values.get("TotalNodes", "")
        partitions[name] = Partition(
            name=name,
            max_time=_parse_limit(values.get("MaxTime", "UNLIMITED")),
            default=values.get("Default", "NO").upper() == "YES",
            state=values.get("State", "UP").upper(),
            total_nodes=int(nodes) if nodes.isdigit() else None,
        )
    return partitions


def parse_sinfo_partitions(text: str) -> dict[str, Partition]:
    """Parse ``sinfo -h -o "%P %l %a %D"`` (the fallback when scontrol is missing)."""
    partitions: dict[str, Partition] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        name = parts[0].rstrip("*")
        partitions[name] = Partition(
            name=name,
            max_time=_parse_limit(parts[1]),
            default=parts[0].endswith("*"),
            state=parts[2].upper() if len(parts) > 2 else "UP",
            total_nodes=int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else None,
        )
    return partitions


def parse_pbs_queue(text: str) -> dict[str, Partition]:
    """Parse ``qstat -Qf QUEUE``: ``resources_max.walltime``, ``enabled``, ``started``."""
    partitions: dict[str, Partition] = {}
    name = ""
    values: dict[str, str] = {}

    def flush() -> None:
        if name:
            running = (
                values.get("enabled", "True") == "True" and values.get("started", "True") == "True"
            )
            partitions[name] = Partition(
                name=name,
                max_time=_parse_limit(values.get("resources_max.walltime", "")),
                state="UP" if running else "DOWN",
            )

    for line in text.splitlines():
        match = re.match(r"^Queue:\s*(\S+)", line)
        if match:
            flush()
            name, values = match.group(1), {}
            continue
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    flush()
    return partitions
