"""Each batch system names the controller that numbers its jobs.

Job ids are unique only within one controller (a Slurm cluster, a PBS server, a local
spool), so saved runs keep that name beside their ids.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from jobstrap.systems.local import SYSTEM as LOCAL
from jobstrap.systems.pbs import SYSTEM as PBS
from jobstrap.systems.slurm import SYSTEM as SLURM

GOLDEN = Path(__file__).parent.parent / "golden"


def test_slurm_names_its_cluster_from_scontrol_show_config() -> None:
    text = (GOLDEN / "slurm" / "scontrol_show_config.txt").read_text()

    assert SLURM.controller_argv() == ["scontrol", "show", "config"]
    assert SLURM.parse_controller(text) == "jobstrap"
    assert SLURM.parse_controller("MaxArraySize = 33\n") == ""


def test_pbs_names_its_server_from_qmgr() -> None:
    text = (GOLDEN / "pbs" / "qmgr_list_server_max_array_size.txt").read_text()

    assert PBS.controller_argv() == ["qmgr", "-c", "list server"]
    assert PBS.parse_controller(text) == "head"  # recorded from the test cluster's server
    assert PBS.parse_controller("") == ""


def test_the_local_queue_names_its_host_and_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBSTRAP_LOCAL_SPOOL", str(tmp_path / "spool"))

    done = subprocess.run(LOCAL.controller_argv(), capture_output=True, text=True, check=True)

    assert LOCAL.parse_controller(done.stdout) == f"{socket.gethostname()}:{tmp_path}/spool"
    assert LOCAL.parse_max_array_size(done.stdout) == 1001
