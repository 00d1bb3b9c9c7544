"""``jobstrap doctor``: find what is wrong with a site before workers fail to arrive.

When Dask workers never show up, the cause (a wrong interface, a wrong ``python``, a
firewall, a version mismatch, a run directory the nodes cannot see) hides in a job
log. The doctor looks for each of them on purpose and says how to fix what it finds.

It runs in two phases:

1. on the login node: the batch commands, the profile, this Python and its Dask,
   the address a scheduler here would listen on, the partition's walltime limit and
   the run directory;
2. through a tiny probe job (:mod:`jobstrap.bootstrap.probe`) submitted with the profile's own
   settings, so it lands where workers would: the node's interfaces and the address
   a worker would choose, TCP both ways between that address and the scheduler-side
   address here, the versions there, a file written on each side and read on the
   other, and the CPU and memory limits the job really got.

Every result is a :class:`Check` (OK, WARN or FAIL, with a fix for everything that
is not OK). The evaluation functions are pure (facts in, checks out) so the rules
are unit-tested with recorded facts; :func:`run_doctor` gathers the facts. Every
wait has a deadline, and the probe job is cancelled on the way out whatever
happens.

Modules: :mod:`.report` (checks and the report), :mod:`.login` (login-node checks),
:mod:`.listener` (the probe job and the TCP listener it reports to),
:mod:`.evaluate` (what the probe's facts say), :mod:`.run` (the driver).
"""

from __future__ import annotations

from jobstrap.tools.doctor.evaluate import diagnose_job_failure, diagnose_pending, evaluate_probe
from jobstrap.tools.doctor.listener import PROBE_WALLTIME, ProbeListener, call_back, probe_job
from jobstrap.tools.doctor.login import (
    batch_commands,
    check_batch_commands,
    check_client_python,
    check_partition,
    check_profile_python,
    check_scheduler_address,
    partition_argv,
)
from jobstrap.tools.doctor.report import Check, DoctorReport, Status, format_report
from jobstrap.tools.doctor.run import run_doctor

__all__ = [
    "PROBE_WALLTIME",
    "Check",
    "DoctorReport",
    "ProbeListener",
    "Status",
    "batch_commands",
    "call_back",
    "check_batch_commands",
    "check_client_python",
    "check_partition",
    "check_profile_python",
    "check_scheduler_address",
    "diagnose_job_failure",
    "diagnose_pending",
    "evaluate_probe",
    "format_report",
    "partition_argv",
    "probe_job",
    "run_doctor",
]
