"""Fault injection on the real Slurm test cluster: the helpers, the fixtures, the record.

The suite runs on the test cluster's login node ``head``, like the integration tests::

    scripts/testcluster up
    scripts/testcluster on head .venv/bin/pytest -m faults tests/faults

Every host of the test cluster is its own network namespace on one machine, so faults
that are hard to stage on real hardware are a command away: freeze a process
(``SIGSTOP``; process ids are shared by all hosts, one kernel), take a node's ``ib0``
and ``eth0`` down, stop ``slurmctld``, kill a node's ``slurmd``, declare a node down,
cancel a job, fill a small tmpfs used as the workers' local directory.

:class:`FaultInjector` (fixture ``faults``) does each of these and remembers how to
undo it; whatever a test injected is restored when the test ends, passed or failed
(links up, daemons restarted, processes thawed, nodes resumed, mounts removed), so
the cluster is left as it was found for the next test and for other people's tests.

Other people may run tests on the same cluster at the same time. Faults that hit a
whole node (link down, ``slurmd`` killed, node declared down) therefore go to nodes
our own jobs hold exclusively (``--exclusive``, see :data:`EXCLUSIVE`): their jobs
are never on the node we break. Stopping ``slurmctld`` cannot be confined: for the
30 s it is down, everyone's ``sbatch``/``squeue`` fail or retry.

Each test describes its fault and what happened in a :class:`FaultOutcome` (fixture
``fault_report``); at the end of the session the suite merges them into
``bench/results/faults.json``, which ``scripts/reliability_table.py`` renders into
``docs/reliability.md``.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import faultkit
import pytest
from faultkit import FaultInjector, FaultOutcome, new_shared_dir, write_results

#: The integration tests' session fixture: the running cluster, this session on head.
testcluster = faultkit.testcluster


def _offer_integration_names() -> None:
    """Offer every public name of ``tests/integration/conftest.py`` here too.

    Integration test modules import their helpers with ``from conftest import ...``.
    With both folders on one pytest command line, whichever ``conftest.py`` pytest
    loaded last is the module named ``conftest``; when it is this one, those imports
    must still find what they expect. Hooks are left out: theirs stay theirs.
    """
    names = globals()
    for name, value in vars(faultkit.CLUSTER_FIXTURES).items():
        if not name.startswith(("_", "pytest_")) and name not in names:
            names[name] = value


_offer_integration_names()

_OUTCOMES: dict[str, FaultOutcome] = {}


@pytest.fixture
def fault_report(request: pytest.FixtureRequest) -> FaultOutcome:
    """This test's entry in ``bench/results/faults.json``.

    On a rerun (``--reruns``) the first attempt's failure is kept: a test that passes
    only on its rerun is recorded as ``flaky`` with that failure, never as passed.
    """
    earlier = _OUTCOMES.get(request.node.nodeid)
    outcome = FaultOutcome(test=request.node.nodeid)
    if earlier is not None and earlier.result not in ("passed", "not run"):
        outcome.first_failure = earlier.first_failure or earlier.message or earlier.result
    _OUTCOMES[request.node.nodeid] = outcome
    return outcome


@pytest.fixture
def faults(testcluster: Any, fault_report: FaultOutcome) -> Iterator[FaultInjector]:
    """The fault injector; every fault still in place is undone when the test ends.

    The jobs the test owned go into its record, and so do those still queued or
    running at its end (a failed test's leftovers are part of what happened).
    """
    injector = FaultInjector()
    try:
        yield injector
    finally:
        if injector.jobs:
            fault_report.job_ids = sorted(set(fault_report.job_ids) | set(injector.jobs))
            if fault_report.jobs_left_over is None:
                fault_report.left_over(injector.jobs)
        problems = injector.restore_all()
        if problems:
            # A fault we could not undo breaks every later test (and other people's):
            # say so loudly rather than let them fail mysteriously.
            pytest.fail("could not restore the cluster: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def scratch(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A shared directory for one test (run directories, task logs, apps).

    Kept after a failure, for its logs; removed after a pass.
    """
    path = new_shared_dir(f"faults-{request.node.name}")
    with pytest.MonkeyPatch.context() as patch:
        # Run directories and the registry where every node sees them, apart from
        # everyone else's.
        patch.setenv("JOBSTRAP_RUN_ROOT", str(path / "runs"))
        patch.setenv("JOBSTRAP_STATE_DIR", str(path / "state"))
        patch.delenv("JOBSTRAP_PROFILE", raising=False)
        patch.chdir(path)
        yield path
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.passed:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


# --- hooks ------------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item, and the outcome in the fault record."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    outcome = _OUTCOMES.get(item.nodeid)
    if outcome is not None:
        if report.when == "call" or (report.when == "setup" and not report.passed):
            outcome.result = report.outcome
            outcome.duration_seconds = round(report.duration, 1)
            if not report.passed:
                outcome.message = _short(report)
        elif report.when == "teardown" and report.failed and outcome.result == "passed":
            outcome.result = "failed"
            outcome.message = _short(report)
    return report


def _short(report: pytest.TestReport) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    text = str(getattr(report, "longreprtext", "") or report.longrepr or "")
    lines = [line for line in text.splitlines() if line.startswith("E ")]
    return " ".join(line[1:].strip() for line in lines)[:600] or text[-600:]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Merge this session's fault records into ``bench/results/faults.json``."""
    ran = [o for o in _OUTCOMES.values() if o.result != "not run"]
    for outcome in ran:
        if outcome.first_failure and outcome.result == "passed":
            outcome.result = "flaky"
    if not ran:
        return
    write_results(ran)
