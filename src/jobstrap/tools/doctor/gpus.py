"""The doctor's GPU checks: what the probe job saw against what the profile asks for.

Pure: the probe's ``gpus`` facts (:func:`jobstrap.bootstrap.probe.gpu_facts`) in,
checks out. Three questions: does the job see the GPUs it asked for (from its
allocation's variables, not the node's device count), would each worker get a
device of its own first, and are the node's other GPUs fenced off from the job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jobstrap.tools.doctor.report import Check, fail, ok, warn

__all__ = ["check_gpus"]


def check_gpus(report: Mapping[str, Any], asked: int) -> list[Check]:
    """GPU checks from a probe report; none when no GPU was asked for or seen.

    Parameters
    ----------
    report
        The probe's report.
    asked
        GPUs per node the profile asks for (``gpus``, or ``gpus_per_job`` on one node).
    """
    facts = report.get("gpus")
    node = str(report.get("host") or "the node")
    if not isinstance(facts, Mapping):
        if asked:
            return [warn("gpus", f"the probe on {node} reported no GPU facts", _FIX_VERSION)]
        return []
    devices = [str(d) for d in facts.get("devices") or []]
    if not asked and not devices:
        return []
    source = facts.get("source") or "no variable"
    seen = ", ".join(devices) or "none"
    checks: list[Check] = []
    if asked and not devices:
        checks.append(
            fail(
                "gpus",
                f"asked for {asked} per node; the job on {node} sees none "
                "(CUDA_VISIBLE_DEVICES, SLURM_STEP_GPUS and SLURM_JOB_GPUS unset)",
                "check the partition has GPUs (queue:), the GPU type (gpu_type:) and that "
                "the site's GRES gives jobs device files",
            )
        )
        return checks
    if len(devices) < asked:
        checks.append(
            fail(
                "gpus",
                f"the job on {node} sees {len(devices)} GPUs ({seen}, from {source}) "
                f"but asked for {asked}",
                "workers would be fewer than GPUs paid for: check gpus: against the node",
            )
        )
    elif len(devices) > asked:
        checks.append(
            warn(
                "gpus",
                f"the job on {node} sees {len(devices)} GPUs ({seen}, from {source}) "
                f"but asked for {asked or 'none'}",
                "the job sees GPUs it did not ask for: set gpus: to use them, or it may "
                "run on another job's devices",
            )
        )
    else:
        checks.append(ok("gpus", f"{len(devices)} on {node} as asked ({seen}, from {source})"))
    checks.append(_own_devices(facts, len(devices)))
    fenced = _fencing(facts, node, len(devices))
    if fenced is not None:
        checks.append(fenced)
    return checks


_FIX_VERSION = "the node's jobstrap is older than this one's: install the same version there"


def _own_devices(facts: Mapping[str, Any], count: int) -> Check:
    workers = [str(w) for w in facts.get("workers") or []]
    firsts = [w.split(",")[0] for w in workers]
    shown = " / ".join(workers)
    if len(workers) == count and len(set(firsts)) == count:
        return ok("gpu workers", f"{count} workers, each its own device first: {shown}")
    return fail(
        "gpu workers",
        f"{count} GPUs but workers would get {shown or 'none'}",
        "report this: one worker per GPU could not be planned from the allocation",
    )


def _fencing(facts: Mapping[str, Any], node: str, count: int) -> Check | None:
    files: Mapping[str, str] = facts.get("device_files") or {}
    if not files:
        return None  # no /dev/nvidia* here (UUIDs, another vendor): nothing to tell
    usable = sorted(path for path, access in files.items() if access == "usable")
    if len(usable) > count:
        return warn(
            "gpu isolation",
            f"the job on {node} can open {len(usable)} GPU devices but holds {count}",
            "nothing stops code from using another job's GPU (ConstrainDevices=no): "
            "keep CUDA_VISIBLE_DEVICES as jobstrap sets it",
        )
    return ok("gpu isolation", f"{len(usable)} of {len(files)} GPU devices usable on {node}")
