"""The test cluster's fake GPUs: slurm.conf, gres.conf and the device list agree."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1].parent


def _load_clusterdef() -> ModuleType:
    path = REPO / "scripts" / "testcluster.d" / "clusterdef.py"
    spec = importlib.util.spec_from_file_location("jobstrap_testcluster_clusterdef", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


clusterdef = _load_clusterdef()
NETNS = clusterdef.Options(variant="netns")


def test_every_compute_node_declares_the_gpus_gres_conf_gives_files_for() -> None:
    slurm = clusterdef.render("slurm.conf", NETNS)
    gres = clusterdef.render("gres.conf", NETNS)
    node_lines = [line for line in slurm.splitlines() if line.startswith("NodeName=")]
    assert len(node_lines) == len(clusterdef.COMPUTE_NODES)
    assert all(f" Gres=gpu:{clusterdef.GPUS_PER_NODE} " in line for line in node_lines)
    files = re.search(r"File=/dev/nvidia\[0-(\d+)\]", gres)
    assert files is not None
    assert int(files.group(1)) + 1 == clusterdef.GPUS_PER_NODE
    assert "AutoDetect=off" in gres.splitlines()


def test_gpus_are_counted_by_accounting_and_have_their_own_partition() -> None:
    lines = clusterdef.render("slurm.conf", NETNS).splitlines()
    assert "GresTypes=gpu" in lines
    assert "AccountingStorageTRES=gres/gpu" in lines
    gpu = [line for line in lines if line.startswith(f"PartitionName={clusterdef.GPU_PARTITION} ")]
    assert len(gpu) == 1
    assert "Default=NO" in gpu[0]
    # The CPU partitions are still there, the default one unchanged.
    assert any(
        line.startswith(f"PartitionName={clusterdef.DEFAULT_PARTITION} ") and "Default=YES" in line
        for line in lines
    )


def test_devices_are_constrained_only_with_the_cgroup_task_plugin() -> None:
    plain = clusterdef.render("cgroup.conf", NETNS)
    fenced = clusterdef.render(
        "cgroup.conf", clusterdef.Options(cgroup_plugin="cgroup/v1", cgroup_memory=True)
    )
    assert "ConstrainDevices" not in plain
    assert "ConstrainDevices=yes" in fenced.splitlines()


def test_the_device_list_matches_gres_conf() -> None:
    expected = tuple(f"/dev/nvidia{i}" for i in range(clusterdef.GPUS_PER_NODE))
    assert expected == clusterdef.GPU_DEVICES
