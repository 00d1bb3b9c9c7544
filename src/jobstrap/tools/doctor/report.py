"""The doctor's verdicts: one :class:`Check` per finding, and the report of them all.

Every check is OK, WARN or FAIL, with a fix for everything that is not OK;
:func:`format_report` prints the table and the fixes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobstrap.config.units import format_memory
from jobstrap.states import TextEnum

__all__ = [
    "FIX_RUN_ROOT",
    "Check",
    "DoctorReport",
    "Status",
    "describe_bytes",
    "fail",
    "format_report",
    "ok",
    "warn",
]


#: What to change when the nodes do not share the run directory with this host.
FIX_RUN_ROOT = (
    "set run_root (or $JOBSTRAP_RUN_ROOT) to a directory on a file system that the login "
    "and compute nodes share, e.g. under $HOME or the site's project/scratch file system"
)


class Status(TextEnum):
    """The verdict of one check."""

    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    """One line of the doctor's table.

    Attributes
    ----------
    name
        Short name (``node python``, ``shared file system``).
    status
        OK, WARN or FAIL.
    detail
        What was found.
    fix
        What to do about it (empty for OK).
    """

    name: str
    status: Status
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "status": str(self.status),
            "detail": self.detail,
            "fix": self.fix,
        }


def ok(name: str, detail: str) -> Check:
    return Check(name, Status.OK, detail)


def warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, Status.WARN, detail, fix)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, Status.FAIL, detail, fix)


@dataclass
class DoctorReport:
    """Everything the doctor found."""

    checks: list[Check] = field(default_factory=list)
    run_dir: str | None = None
    job_id: str | None = None
    node: str | None = None

    def add(self, *checks: Check) -> None:
        self.checks.extend(checks)

    @property
    def failed(self) -> bool:
        """Whether any check failed."""
        return any(c.status is Status.FAIL for c in self.checks)

    @property
    def exit_code(self) -> int:
        """1 when something is wrong, else 0 (warnings do not fail)."""
        return 1 if self.failed else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": not self.failed,
            "run_dir": self.run_dir,
            "job_id": self.job_id,
            "node": self.node,
            "checks": [c.to_json() for c in self.checks],
        }


def format_report(report: DoctorReport) -> str:
    """The table of checks, then one fix per line for everything not OK."""
    width = max([len(c.name) for c in report.checks] + [5])
    lines = [f"{'CHECK':<{width}}  STATUS  DETAIL"]
    for check in report.checks:
        lines.append(f"{check.name:<{width}}  {check.status!s:<6}  {check.detail}")
    fixes = [c for c in report.checks if c.status is not Status.OK and c.fix]
    if fixes:
        lines += ["", "How to fix:"]
        lines += [f"  {c.name} ({c.status}): {c.fix}" for c in fixes]
    failed = sum(c.status is Status.FAIL for c in report.checks)
    warned = sum(c.status is Status.WARN for c in report.checks)
    verdict = "something is wrong" if failed else "all good"
    lines += ["", f"{verdict}: {failed} failed, {warned} warnings, {len(report.checks)} checks"]
    return "\n".join(lines) + "\n"


def describe_bytes(value: int | None) -> str:
    """A memory size for a detail line, ``none`` when there is none."""
    return "none" if value is None else format_memory(value)
