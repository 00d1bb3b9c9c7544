"""Fixtures for integration tests on the real multi-node Slurm test cluster.

How integration tests run
-------------------------
The pytest session itself runs on the cluster's login node ``head``::

    scripts/testcluster up
    scripts/testcluster on head .venv/bin/pytest -m cluster tests/integration

so that a test's client side (the notebook, ``SLURMCluster``, ``submit()``) lives
on one host while schedulers and workers run in jobs on ``node1..node3``: client,
scheduler and workers are really on different hosts and talk over the test
cluster's network, never over loopback.  The ``testcluster`` fixture checks that
this process is in head's network namespace and fails with the command above
when it is not.

The constants below come from ``scripts/testcluster.d/clusterdef.py``, the single
definition the cluster's configuration is generated from.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTCLUSTER = REPO / "scripts" / "testcluster"
SCRATCH_ROOT = REPO / ".testcluster" / "scratch"


def _load_clusterdef() -> ModuleType:
    path = REPO / "scripts" / "testcluster.d" / "clusterdef.py"
    spec = importlib.util.spec_from_file_location("jobstrap_testcluster_clusterdef", path)
    if spec is None or spec.loader is None:  # pragma: no cover - broken checkout
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve string annotations through sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_DEF = _load_clusterdef()

# --- constants tests may import -------------------------------------------------
CLUSTER_NAME: str = _DEF.CLUSTER_NAME
LOGIN_HOST: str = _DEF.LOGIN_HOST
COMPUTE_NODES: tuple[str, ...] = _DEF.COMPUTE_NODES
HOSTS: tuple[str, ...] = tuple(h.name for h in _DEF.HOSTS)
ETH0_ADDRESSES: dict[str, str] = {h.name: h.eth0 for h in _DEF.HOSTS}
IB0_ADDRESSES: dict[str, str] = {h.name: h.ib0 for h in _DEF.HOSTS}
ETH_SUBNET: str = _DEF.ETH_SUBNET
IB_SUBNET: str = _DEF.IB_SUBNET
IB_MTU: int = _DEF.IB_MTU
DEFAULT_PARTITION: str = _DEF.DEFAULT_PARTITION
SHORT_PARTITION: str = _DEF.SHORT_PARTITION
URGENT_PARTITION: str = _DEF.URGENT_PARTITION
PREEMPT_GRACE_SECONDS: int = _DEF.PREEMPT_GRACE_SECONDS
SHORT_MAX_TIME_MINUTES: int = _DEF.SHORT_MAX_TIME_MINUTES
MAX_ARRAY_SIZE: int = _DEF.MAX_ARRAY_SIZE
ACCOUNTS: tuple[str, ...] = _DEF.ACCOUNTS
DEFAULT_ACCOUNT: str = _DEF.DEFAULT_ACCOUNT
#: The ordinary user `scripts/testcluster up` creates, for runs made as a user.
TEST_USER: str = _DEF.TEST_USER
EXTRA_QOS: tuple[str, ...] = _DEF.EXTRA_QOS
NODE_CPUS: int = _DEF.NODE_CPUS
NODE_MEMORY_MB: int = _DEF.NODE_MEMORY_MB
STATE_ROOT = Path(os.environ.get("JOBSTRAP_TESTCLUSTER_ROOT", _DEF.DEFAULT_ROOT))
# The interpreter running the tests: the project venv, at the same path on every
# host because all hosts share one file system.
PYTHON = Path(sys.executable)
VENV_BIN = PYTHON.parent

# sacct states after which a job never changes again.
FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "TIMEOUT",
        "CANCELLED",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
    }
)

RESTARTS_CLUSTER = "restarts_cluster"

T = TypeVar("T")


class NotYetError(Exception):
    """Raised by a :func:`wait_for` predicate to say what it saw instead."""


# --- helpers --------------------------------------------------------------------


def namespace_inodes() -> dict[str, int]:
    """Network-namespace inode of every running host, as recorded by ``up``.

    Returns
    -------
    dict of str to int
        Host name (and ``fabric``) to inode; empty when the cluster is down.
    """
    path = STATE_ROOT / "run" / "netns-inodes"
    try:
        text = path.read_text()
    except OSError:
        return {}
    inodes = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            inodes[parts[0]] = int(parts[1])
    return inodes


def current_host() -> str | None:
    """Name of the test-cluster host this process runs on, or None.

    Decided by network namespace, not by hostname: after the cluster was
    restarted a process can still be called ``head`` yet sit in the old,
    unreachable namespace.
    """
    mine = os.stat("/proc/self/ns/net").st_ino
    for host, inode in namespace_inodes().items():
        if inode == mine and host in HOSTS:
            return host
    return None


def on(
    host: str, argv: Sequence[str | os.PathLike[str]], **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run a command on a test-cluster host.

    Parameters
    ----------
    host : str
        ``head`` or a compute node name.
    argv : sequence of str
        The command; never a shell string.
    **kwargs
        Passed to :func:`subprocess.run`.  Defaults: ``capture_output=True``,
        ``text=True``, ``timeout=120``.  ``env`` and ``cwd`` reach the command
        unchanged on every host.

    Returns
    -------
    subprocess.CompletedProcess
        The finished process; check ``returncode`` yourself or pass ``check=True``.
    """
    if host not in HOSTS:
        raise ValueError(f"unknown host {host!r}; hosts are {', '.join(HOSTS)}")
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 120)
    full = [os.fspath(a) for a in argv]
    if current_host() != host:
        # `on` keeps the caller's environment and working directory.
        full = [os.fspath(TESTCLUSTER), "on", host, *full]
    check = kwargs.pop("check", False)
    return subprocess.run(full, check=check, **kwargs)


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float,
    describe: str,
    interval: float = 0.5,
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Parameters
    ----------
    predicate : callable
        Called repeatedly.  A falsy result or an exception (e.g. :class:`NotYetError`
        carrying what was seen) means "not yet"; the last one is reported.
    timeout : float
        Seconds before giving up.
    describe : str
        What is being waited for, for the failure message.
    interval : float
        Seconds between polls.

    Returns
    -------
    object
        The first truthy value returned by ``predicate``.

    Raises
    ------
    pytest.fail.Exception
        On timeout, with the last value (or exception) the predicate produced.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except Exception as exc:  # reported on timeout
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {describe}; last saw: {last!r}")
        time.sleep(interval)


@dataclass
class Job:
    """A submitted batch job and where its output goes."""

    job_id: str
    workdir: Path
    script: Path
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def output(self) -> Path:
        """The job's stdout+stderr file (``slurm-<id>.out`` in ``workdir``)."""
        return self.workdir / f"slurm-{self.job_id}.out"

    def read_output(self) -> str:
        """The job's output so far ('' if the file does not exist yet)."""
        try:
            return self.output.read_text()
        except FileNotFoundError:
            return ""


def _must(result: subprocess.CompletedProcess[str]) -> str:
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, result.args))} exited {result.returncode}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}"
        )
    return result.stdout


class TestCluster:
    """Handle on the running test cluster, given to tests by the fixture.

    Carries the constants above plus helpers to run commands, submit jobs and
    wait on them.
    """

    __test__ = False  # not a test class despite the name

    cluster_name = CLUSTER_NAME
    login_host = LOGIN_HOST
    compute_nodes = COMPUTE_NODES
    hosts = HOSTS
    eth0_addresses = ETH0_ADDRESSES
    ib0_addresses = IB0_ADDRESSES
    eth_subnet = ETH_SUBNET
    ib_subnet = IB_SUBNET
    ib_mtu = IB_MTU
    default_partition = DEFAULT_PARTITION
    short_partition = SHORT_PARTITION
    short_max_time_minutes = SHORT_MAX_TIME_MINUTES
    max_array_size = MAX_ARRAY_SIZE
    accounts = ACCOUNTS
    default_account = DEFAULT_ACCOUNT
    extra_qos = EXTRA_QOS
    state_root = STATE_ROOT
    python = PYTHON
    venv_bin = VENV_BIN
    script = TESTCLUSTER

    on = staticmethod(on)
    wait_for = staticmethod(wait_for)

    def sbatch(self, body: str, workdir: Path, *options: str) -> Job:
        """Submit a batch script from the login node.

        Parameters
        ----------
        body : str
            Script text after the ``#!/bin/bash`` line.
        workdir : Path
            Shared directory: the script, ``--chdir`` and the output go there.
        *options : str
            Extra ``sbatch`` options, e.g. ``"--nodes=2"``.

        Returns
        -------
        Job
            The submitted job.
        """
        script = workdir / f"job-{uuid.uuid4().hex[:8]}.sh"
        script.write_text("#!/bin/bash\n" + body)
        out = _must(
            on(
                LOGIN_HOST,
                [
                    "sbatch",
                    "--parsable",
                    f"--chdir={workdir}",
                    f"--output={workdir}/slurm-%j.out",
                    *options,
                    str(script),
                ],
            )
        )
        # --parsable prints "jobid" or "jobid;cluster".
        return Job(out.strip().split(";")[0], workdir, script)

    def sacct(self, job_id: str, *fields: str) -> list[dict[str, str]]:
        """Allocation-level sacct rows of a job (one per array task).

        Parameters
        ----------
        job_id : str
            Job (or array) id.
        *fields : str
            sacct fields; ``JobID`` and ``State`` are always included.

        Returns
        -------
        list of dict
            One dict per row, keyed by field name; empty while slurmdbd does
            not know the job yet.
        """
        names = ["JobID", "State", *[f for f in fields if f not in ("JobID", "State")]]
        out = _must(
            on(
                LOGIN_HOST,
                [
                    "sacct",
                    "--noheader",
                    "--parsable2",
                    "--allocations",
                    "--jobs",
                    job_id,
                    "--format",
                    ",".join(names),
                ],
            )
        )
        rows = []
        for line in out.splitlines():
            if line.strip():
                row = dict(zip(names, line.split("|"), strict=False))
                # "CANCELLED by 0" -> "CANCELLED"
                row["State"] = row["State"].split()[0] if row["State"] else ""
                rows.append(row)
        return rows

    def in_queue(self, job_id: str) -> list[str]:
        """squeue lines (``id state``) of a job still pending or running.

        Parameters
        ----------
        job_id : str
            Job (or array) id.

        Returns
        -------
        list of str
            Empty once the controller considers every task finished.
        """
        result = on(LOGIN_HOST, ["squeue", "--noheader", "--jobs", job_id, "--format=%i %T"])
        if result.returncode != 0 and "Invalid job id" in result.stderr:
            return []  # purged after MinJobAge: long finished
        return _must(result).split()

    def wait_job(
        self, job: Job | str, timeout: float, *fields: str, tasks: int = 1
    ) -> list[dict[str, str]]:
        """Wait until the controller and accounting both see a job finished.

        Parameters
        ----------
        job : Job or str
            The job or its id.
        timeout : float
            Seconds to wait.
        *fields : str
            Extra sacct fields to return.
        tasks : int
            Rows to expect from sacct: the number of array tasks, 1 otherwise.
            slurmdbd learns about jobs asynchronously, so it can lag behind.

        Returns
        -------
        list of dict
            The final sacct rows.
        """
        job_id = job.job_id if isinstance(job, Job) else job

        def finished() -> list[dict[str, str]]:
            queued = self.in_queue(job_id)
            rows = self.sacct(job_id, *fields)
            done = [r for r in rows if r["State"] in FINAL_STATES and "[" not in r["JobID"]]
            if queued or len(done) != tasks or len(rows) != tasks:
                raise NotYetError(f"squeue: {queued}; sacct: {rows}")
            return rows

        return wait_for(finished, timeout, f"job {job_id} to finish")

    def status(self) -> subprocess.CompletedProcess[str]:
        """``scripts/testcluster status`` (exit 0 when healthy)."""
        return subprocess.run(
            [os.fspath(TESTCLUSTER), "status"], capture_output=True, text=True, timeout=60
        )


# --- hooks and fixtures -----------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker for tests that take the whole cluster down and up."""
    config.addinivalue_line(
        "markers",
        f"{RESTARTS_CLUSTER}: takes the test cluster down and up again; runs last, "
        "because the session is left in the old login-node namespace",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run tests that restart the cluster after every other test.

    The session runs inside head's namespaces; once the cluster is restarted it
    can no longer reach the new one, so nothing may run after such a test.
    """
    last = [i for i in items if i.get_closest_marker(RESTARTS_CLUSTER)]
    if last:
        items[:] = [i for i in items if not i.get_closest_marker(RESTARTS_CLUSTER)] + last


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember each phase's report so fixtures can keep scratch of failed tests."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


_HOW_TO_RUN = (
    "integration tests run on the test cluster's login node, e.g.\n"
    "    scripts/testcluster up\n"
    "    scripts/testcluster on head .venv/bin/pytest -m cluster tests/integration"
)


@pytest.fixture(scope="session")
def testcluster() -> TestCluster:
    """The running test cluster; this session must run on its login node.

    Reuses the running cluster.  If daemons died, ``scripts/testcluster up``
    restarts them (it only repairs: the hosts, and so this process's namespace,
    stay).  Fails with instructions when the session is not on ``head``.
    """
    host = current_host()
    if host is None:
        state = "is up" if namespace_inodes() else "is not up"
        hint = (
            "this process is not on the login node (the cluster "
            f"{state}; after a restart, start pytest again)"
        )
        pytest.fail(f"{hint}\n{_HOW_TO_RUN}", pytrace=False)
    if host != LOGIN_HOST:
        pytest.fail(f"running on {host}, not {LOGIN_HOST}\n{_HOW_TO_RUN}", pytrace=False)
    cluster = TestCluster()
    if cluster.status().returncode != 0:
        # Processes on head can repair daemons: `up` keeps existing hosts.
        repair = subprocess.run(
            [os.fspath(TESTCLUSTER), "up"], capture_output=True, text=True, timeout=300
        )
        status = cluster.status()
        if status.returncode != 0:
            pytest.fail(
                "the test cluster is unhealthy and `scripts/testcluster up` did not fix it\n"
                f"up: {repair.stdout}{repair.stderr}\nstatus: {status.stdout}{status.stderr}",
                pytrace=False,
            )
    return cluster


def new_shared_dir(name: str) -> Path:
    """Create a fresh directory that every host sees at the same path.

    It lives under ``.testcluster/scratch/`` in the repository (git-ignored),
    standing in for a site's shared file system.

    Parameters
    ----------
    name : str
        Readable prefix; a random suffix keeps directories apart.

    Returns
    -------
    Path
        The new, empty directory.
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]
    path = SCRATCH_ROOT / f"{safe}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    path.chmod(0o755)
    return path


@pytest.fixture
def shared_scratch(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh shared directory (see :func:`new_shared_dir`) for one test.

    Removed after a test that passed or was skipped, kept after a failure so job
    scripts and logs can be read.
    """
    path = new_shared_dir(request.node.name)
    yield path
    report = getattr(request.node, "rep_call", None)
    if report is not None and not report.failed:
        shutil.rmtree(path, ignore_errors=True)
