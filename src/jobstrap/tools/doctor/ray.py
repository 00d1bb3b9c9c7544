"""The doctor's Ray checks, for a profile whose engine is Ray.

Pure: the probe's ``ray`` facts (:func:`jobstrap.bootstrap.probe.ray_facts`) in,
checks out. Two questions a Ray run fails on before it starts: can the job's
Python import Ray on the node, and is there a writable directory short enough for
Ray's Unix sockets (the same rule the engine applies,
:func:`jobstrap.engines.ray.plan.temp_dir_parent`). On this side: can this Python
drive a Ray cluster job (``RayCluster``, ``submit(fn, engine="ray")``), and with
the same Ray version as the nodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jobstrap.engines.ray.plan import TEMP_DIR_MAX_LENGTH, temp_dir_parent
from jobstrap.errors import UserError
from jobstrap.tools.doctor.report import Check, fail, ok, warn

__all__ = ["check_ray"]

_INSTALL = "pip install 'jobstrap[ray]' into the profile's python on the compute nodes"


def check_ray(report: Mapping[str, Any], engine: str, client_ray: str | None) -> list[Check]:
    """Ray checks from a probe report; none unless the profile's engine is Ray.

    Parameters
    ----------
    report
        The probe's report.
    engine
        The profile's engine.
    client_ray
        Ray's version on this side (None: not installed here).
    """
    if engine != "ray":
        return []
    node = str(report.get("host") or "the node")
    facts = report.get("ray")
    if not isinstance(facts, Mapping):
        return [warn("ray", f"the probe on {node} reported no Ray facts", "update jobstrap there")]
    checks: list[Check] = []
    version = facts.get("version")
    if not version:
        checks.append(fail("ray", f"the job's python on {node} cannot import ray", _INSTALL))
    elif client_ray is None:
        checks.append(
            warn(
                "ray",
                f"ray {version} on {node}; not installed here",
                "jobstrap submit --engine ray needs nothing more; RayCluster and "
                "submit(fn, engine='ray') need pip install 'jobstrap[ray]' here too",
            )
        )
    elif client_ray != version:
        checks.append(
            warn(
                "ray",
                f"ray {version} on {node}, {client_ray} here",
                "a driver here joins the job's cluster only with the same Ray version: "
                "install the same one on both sides",
            )
        )
    else:
        checks.append(ok("ray", f"ray {version} on {node} and here"))
    checks.append(_temp_dir(facts, node))
    return checks


def _temp_dir(facts: Mapping[str, Any], node: str) -> Check:
    tmpdir = str(facts.get("tmpdir") or "")
    writable = facts.get("writable") or {}
    try:
        parent = temp_dir_parent({"TMPDIR": tmpdir}, usable=lambda p: bool(writable.get(p)))
    except UserError as error:
        return fail("ray temp dir", f"on {node}: {error}", "set TMPDIR in the profile's env")
    if tmpdir and parent != tmpdir.rstrip("/"):
        return ok(
            "ray temp dir",
            f"{parent} on {node} ($TMPDIR is too long for Ray's sockets or not writable; "
            f"at most {TEMP_DIR_MAX_LENGTH} characters with the run's own part)",
        )
    return ok("ray temp dir", f"{parent} on {node}")
