"""The local backend's builders: argv for the embedded queue (``python -m jobstrap.localq``)."""

from __future__ import annotations

import os
import sys

from jobstrap.jobs.spec import ArraySpec
from jobstrap.localq.cli import _parser
from jobstrap.systems.local import SYSTEM as LOCAL


def test_find_by_name_asks_only_for_the_current_user_s_jobs() -> None:
    # A spool may be shared: recovery must never adopt another user's job of that name.
    argv = LOCAL.find_by_name_argv("jobstrap-js1")

    assert argv == [sys.executable, "-m", "jobstrap.localq", "find", f"--uid={os.getuid()}",
                    "jobstrap-js1"]  # fmt: skip
    args = _parser().parse_args(argv[3:])
    assert (args.command, args.uid, args.name) == ("find", os.getuid(), "jobstrap-js1")


def test_array_tasks_are_spelled_like_slurm_s() -> None:
    assert LOCAL.array_task_ids("12", ArraySpec(0, 1)) == ["12_0", "12_1"]
    assert LOCAL.base_job_id("12_1") == "12"
