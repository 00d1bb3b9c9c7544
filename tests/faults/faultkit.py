"""Fault-injection helpers for the suite in this folder (the fixtures are in conftest.py).

See conftest.py for how the suite runs and what it may break. This module holds the
parts tests import: :class:`FaultInjector`, the waits and queries on the cluster,
:class:`FaultOutcome` and the writer of ``bench/results/faults.json``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results" / "faults.json"


def _load_cluster_fixtures() -> ModuleType:
    """The integration tests' cluster helpers, under a name of their own.

    Both directories have a ``conftest.py``; importing the other one by path keeps
    one definition of the cluster handle (``on``, ``wait_for``, ``sbatch``...).
    """
    path = REPO / "tests" / "integration" / "conftest.py"
    name = "jobstrap_faults_cluster_fixtures"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - broken checkout
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


CLUSTER_FIXTURES = _load_cluster_fixtures()
_CLUSTER = CLUSTER_FIXTURES
TestCluster = _CLUSTER.TestCluster
NotYetError = _CLUSTER.NotYetError
COMPUTE_NODES: tuple[str, ...] = _CLUSTER.COMPUTE_NODES
LOGIN_HOST: str = _CLUSTER.LOGIN_HOST
STATE_ROOT: Path = _CLUSTER.STATE_ROOT
on = _CLUSTER.on
new_shared_dir = _CLUSTER.new_shared_dir
#: The session fixture of the integration tests: the running cluster, this session on head.
testcluster = _CLUSTER.testcluster

#: How scripts/testcluster starts daemons: a clean environment, nothing of the caller's.
DAEMON_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}
#: Death timeout of every job in the suite: short, so a fault resolves in seconds.
DEATH_TIMEOUT = 10
#: Give node-level faults only nodes our jobs hold alone (JOBSTRAP_FAULTS_EXCLUSIVE=0:
#: do not, e.g. on a machine where nobody else uses the cluster and nodes are scarce).
EXCLUSIVE = os.environ.get("JOBSTRAP_FAULTS_EXCLUSIVE", "1") != "0"
#: Queue wait plus startup on a busy two-core machine, with exclusive nodes.
START_TIMEOUT = 300.0


def exclusive_directives() -> tuple[str, ...]:
    """Extra directives for jobs whose nodes a test is going to break."""
    return ("--exclusive",) if EXCLUSIVE else ()


# --- waiting --------------------------------------------------------------------------


def wait_for(
    predicate: Callable[[], Any], timeout: float, describe: str, interval: float = 0.5
) -> Any:
    """Poll ``predicate`` until it returns something truthy (see the integration helper).

    A falsy result or an exception (e.g. :class:`NotYetError` saying what was seen)
    means "not yet"; on timeout the test fails with the last one.
    """
    return _CLUSTER.wait_for(predicate, timeout, describe, interval)


def check(condition: object, seen: object) -> bool:
    """For :func:`wait_for` predicates: True, or "not yet" saying what was seen."""
    if not condition:
        raise NotYetError(seen)
    return True


def elapsed_since(start: float) -> float:
    """Seconds since ``start`` (a ``time.monotonic()`` reading), rounded for the record."""
    return round(time.monotonic() - start, 1)


# --- what the batch system says ---------------------------------------------------------


def squeue(job_ids: Iterable[str]) -> dict[str, str]:
    """Live state of each job that is still queued or running (``{}`` once all ended)."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    result = on(
        LOGIN_HOST,
        ["squeue", "--noheader", "--array", "--format=%i %T", f"--jobs={','.join(ids)}"],
    )
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:
            return {}
        raise NotYetError(f"squeue failed: {result.stderr.strip()}")
    states = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def sacct_states(job_ids: Iterable[str]) -> dict[str, str]:
    """Final (or current) allocation state of each job as accounting records it.

    With requeues, the last record of an id wins; ``CANCELLED by 0`` is ``CANCELLED``.
    """
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    result = on(
        LOGIN_HOST,
        [
            "sacct", "--noheader", "--parsable2", "--allocations", "--duplicates",
            "--format=JobID,State", f"--jobs={','.join(ids)}",
        ],
    )  # fmt: skip
    states: dict[str, str] = {}
    for line in result.stdout.splitlines():
        parts = line.split("|")
        if len(parts) >= 2 and parts[0]:
            states[parts[0]] = parts[1].split()[0] if parts[1] else ""
    return states


def node_of(job_id: str) -> str:
    """The (single) node a running job is on."""
    result = on(LOGIN_HOST, ["squeue", "--noheader", "--format=%N", f"--jobs={job_id}"])
    nodes = result.stdout.strip()
    if not nodes or "[" in nodes or "," in nodes:
        raise NotYetError(f"job {job_id} runs on {nodes!r}, not on one known node")
    return nodes


def processes_of(marker: str) -> list[str]:
    """Processes (any host: one kernel) whose command line contains ``marker``.

    The run directory of a job is such a marker: every rank's command line names it.
    Zombies are dead and not counted.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if marker in cmdline and stat.rpartition(")")[2].split()[0] != "Z":
            found.append(f"{entry.name} {cmdline.strip()[:160]}")
    return found


def job_processes(job_id: str) -> list[str]:
    """Processes of one Slurm job (any node), found by the job id in their environment.

    ``123_4`` (an array task) matches ``SLURM_ARRAY_JOB_ID=123`` and
    ``SLURM_ARRAY_TASK_ID=4``; a plain id matches ``SLURM_JOB_ID``.
    """
    if "_" in job_id:
        base, task = job_id.split("_", 1)
        wanted = {f"SLURM_ARRAY_JOB_ID={base}".encode(), f"SLURM_ARRAY_TASK_ID={task}".encode()}
    else:
        wanted = {f"SLURM_JOB_ID={job_id}".encode()}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = set((entry / "environ").read_bytes().split(b"\0"))
            stat = (entry / "stat").read_text()
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if wanted <= environ and stat.rpartition(")")[2].split()[0] != "Z":
            found.append(f"{entry.name} {comm}")
    return found


# --- faults ------------------------------------------------------------------------------


def _pid_file(name: str) -> Path:
    return STATE_ROOT / "run" / f"{name}.pid"


def _daemon_pid(name: str) -> int | None:
    """The pid of a running cluster daemon (``slurmctld``, ``slurmd-node2``), or None."""
    try:
        pid = int(_pid_file(name).read_text().split()[0])
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError, IndexError):
        return None
    if stat.rpartition(")")[2].split()[0] == "Z":
        return None
    return pid


def _clean_env() -> list[str]:
    """``env -i ...``: the daemon gets a clean environment, while ``on`` itself keeps
    the caller's (``JOBSTRAP_TESTCLUSTER_ROOT`` says which cluster the host is in)."""
    return ["env", "-i", *(f"{name}={value}" for name, value in DAEMON_ENV.items())]


def process_state(pid: int) -> str | None:
    """The kernel's state letter of a process (``T`` when stopped), None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


def controller_up() -> bool:
    """Whether ``scontrol ping`` reaches slurmctld."""
    result = on(LOGIN_HOST, ["scontrol", "ping"], timeout=30)
    return "is UP" in result.stdout


class FaultInjector:
    """Injects faults into the test cluster and undoes every one of them.

    Each method that breaks something records its repair; the matching
    ``thaw``/``reconnect``/``start_*``/``resume`` method repairs early, and
    :meth:`restore_all` (called by the fixture when the test ends, whatever its
    outcome) repairs whatever is left: links, daemons and processes first, then node
    states (a node is resumed only once it can answer), then the test's own jobs.
    """

    #: Restoration order: what others depend on first.
    _FIRST, _THEN, _LAST = 0, 1, 2

    def __init__(self) -> None:
        self._undo: list[tuple[int, str, Callable[[], None]]] = []
        self.log: list[str] = []
        #: Every job the test said was its own (see :meth:`own`).
        self.jobs: list[str] = []

    def own(self, job_ids: Iterable[str]) -> None:
        """Jobs of this test: cancelled at the end if still queued or running."""
        ids = sorted(set(job_ids))
        self.jobs.extend(i for i in ids if i not in self.jobs)

        def cancel() -> None:
            live = squeue(ids)
            if live:
                on(LOGIN_HOST, ["scancel", *live])

        self._push(f"own jobs {' '.join(ids)}", cancel, self._LAST)

    # -- bookkeeping ------------------------------------------------------------------
    def _push(self, key: str, undo: Callable[[], None], order: int = _FIRST) -> None:
        self._undo.append((order, key, undo))
        self.log.append(f"{time.strftime('%H:%M:%S')} {key}")

    def _pop(self, key: str) -> None:
        self._undo = [entry for entry in self._undo if entry[1] != key]
        self.log.append(f"{time.strftime('%H:%M:%S')} restored {key}")

    @property
    def pending(self) -> list[str]:
        """Faults injected and not restored yet."""
        return [key for _, key, _ in self._undo]

    def restore_all(self) -> list[str]:
        """Undo every fault still in place; return the problems met.

        Every repair is attempted even when an earlier one fails (a failed wait is a
        ``pytest.fail``, a BaseException): one fault left in place would break every
        later test, and other people's.
        """
        problems = []
        for order in (self._FIRST, self._THEN, self._LAST):
            for _, key, undo in reversed([e for e in self._undo if e[0] == order]):
                try:
                    undo()
                except BaseException as error:  # keep restoring the rest
                    problems.append(f"{key}: {type(error).__name__}: {error}")
        self._undo.clear()
        return problems

    # -- processes --------------------------------------------------------------------
    def freeze(self, pid: int) -> None:
        """Stop a process (``SIGSTOP``): alive, sockets open, answering nothing."""
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: process_state(pid) in ("T", None), 10, f"process {pid} to stop")
        self._push(f"freeze {pid}", lambda: self._thaw(pid))

    def thaw(self, pid: int) -> None:
        """Let a frozen process run again (``SIGCONT``); a no-op when it has gone."""
        self._thaw(pid)
        self._pop(f"freeze {pid}")

    @staticmethod
    def _thaw(pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    @contextlib.contextmanager
    def frozen(self, pid: int) -> Iterator[None]:
        """A frozen process for the duration of the block."""
        self.freeze(pid)
        try:
            yield
        finally:
            self.thaw(pid)

    # -- network ------------------------------------------------------------------------
    def cut(self, node: str, interfaces: Sequence[str] = ("ib0", "eth0")) -> None:
        """Take a node off the network: its interfaces go down (local traffic still works)."""
        for interface in interfaces:
            on(node, ["ip", "link", "set", interface, "down"], check=True)
        self._push(f"cut {node} {','.join(interfaces)}", lambda: self._link_up(node, interfaces))

    def reconnect(self, node: str, interfaces: Sequence[str] = ("ib0", "eth0")) -> None:
        """Bring a cut node's interfaces up again."""
        self._link_up(node, interfaces)
        self._pop(f"cut {node} {','.join(interfaces)}")

    @staticmethod
    def _link_up(node: str, interfaces: Sequence[str]) -> None:
        for interface in interfaces:
            on(node, ["ip", "link", "set", interface, "up"], check=True)
        # slurmctld pings nodes only every SlurmdTimeout/3 (100 s here): have slurmd
        # register again now (SIGHUP), so the node answers as soon as it is back.
        pid = _daemon_pid(f"slurmd-{node}")
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    @staticmethod
    def link_state(node: str, interface: str) -> str:
        """``UP`` or ``DOWN`` (the operational state ``ip -br link`` shows)."""
        out = on(node, ["ip", "-br", "link", "show", interface]).stdout.split()
        return out[1] if len(out) > 1 else "?"

    @contextlib.contextmanager
    def cut_off(self, node: str, interfaces: Sequence[str] = ("ib0", "eth0")) -> Iterator[None]:
        """A node off the network for the duration of the block."""
        self.cut(node, interfaces)
        try:
            yield
        finally:
            self.reconnect(node, interfaces)

    # -- slurmctld ----------------------------------------------------------------------
    def stop_slurmctld(self) -> None:
        """Stop the controller (``SIGTERM``, as an admin or a crashed host would)."""
        pid = _daemon_pid("slurmctld")
        if pid is None:
            raise RuntimeError("slurmctld is not running")
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: _daemon_pid("slurmctld") is None, 60, f"slurmctld {pid} to exit")
        self._push("stop slurmctld", self._start_slurmctld)

    def start_slurmctld(self) -> None:
        """Start the controller again and wait until it answers."""
        self._start_slurmctld()
        self._pop("stop slurmctld")

    @staticmethod
    def _start_slurmctld() -> None:
        # Another session's `testcluster up` may have repaired it already.
        if _daemon_pid("slurmctld") is None:
            on(LOGIN_HOST, [*_clean_env(), "slurmctld"], stdin=subprocess.DEVNULL, check=True)
        wait_for(controller_up, 60, "slurmctld to answer scontrol ping")

    # -- slurmd -------------------------------------------------------------------------
    def kill_slurmd(self, node: str) -> None:
        """Kill a node's slurmd (``SIGKILL``: a crash). Its running jobs' steps go on."""
        pid = _daemon_pid(f"slurmd-{node}")
        if pid is None:
            raise RuntimeError(f"slurmd on {node} is not running")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: process_state(pid) in (None, "Z"), 30, f"slurmd {pid} to die")
        self._push(f"kill slurmd {node}", lambda: self._start_slurmd(node))

    def start_slurmd(self, node: str) -> None:
        """Start a node's slurmd again."""
        self._start_slurmd(node)
        self._pop(f"kill slurmd {node}")

    @staticmethod
    def _start_slurmd(node: str) -> None:
        if _daemon_pid(f"slurmd-{node}") is None:
            on(node, [*_clean_env(), "slurmd", "-N", node], stdin=subprocess.DEVNULL, check=True)
        wait_for(lambda: _daemon_pid(f"slurmd-{node}"), 30, f"slurmd on {node} to start")

    # -- node states --------------------------------------------------------------------
    def node_down(self, node: str, reason: str) -> None:
        """Declare a node down, as slurmctld does once ``SlurmdTimeout`` passes.

        The test cluster keeps Slurm's default ``SlurmdTimeout`` (300 s); this makes
        the controller draw its conclusion now instead of in five minutes. Jobs on
        the node end ``NODE_FAIL``.
        """
        self._scontrol_node(node, "down", reason)
        self._push(f"down {node}", lambda: self._resume(node), self._THEN)

    def resume(self, node: str) -> None:
        """Return a node to service and wait until it takes jobs again."""
        self._resume(node)
        self._pop(f"down {node}")

    @staticmethod
    def _scontrol_node(node: str, state: str, reason: str = "") -> None:
        argv = ["scontrol", "update", f"nodename={node}", f"state={state}"]
        if reason:
            argv.append(f"reason={reason}")
        on(LOGIN_HOST, argv, check=True)

    @staticmethod
    def node_state(node: str) -> str:
        """The node's state as sinfo prints it (``idle``, ``mix``, ``down*``...)."""
        out = on(LOGIN_HOST, ["sinfo", "--noheader", "-N", "-n", node, "-o", "%t"]).stdout
        return out.split()[0] if out.split() else "?"

    def _resume(self, node: str) -> None:
        def usable() -> bool:
            state = self.node_state(node)
            if state in ("idle", "mix", "alloc", "comp"):
                return True
            if state.endswith("*"):
                # Not responding: have its slurmd (if running) register again.
                pid = _daemon_pid(f"slurmd-{node}")
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGHUP)
            elif state.startswith(("down", "drain", "drng", "fail")):
                on(LOGIN_HOST, ["scontrol", "update", f"nodename={node}", "state=resume"])
            raise NotYetError(f"{node} is {state}")

        wait_for(usable, 90, f"{node} to return to service", interval=1.0)

    # -- jobs ---------------------------------------------------------------------------
    @staticmethod
    def scancel(job_ids: Iterable[str], *, signal_name: str | None = None) -> None:
        """Cancel jobs as a user would (``scancel``), or send them a signal."""
        argv = ["scancel"]
        if signal_name:
            argv.append(f"--signal={signal_name}")
        on(LOGIN_HOST, [*argv, *job_ids], check=True)

    # -- a small local directory ----------------------------------------------------------
    def small_disk(self, path: Path, size: str, nodes: Sequence[str] = COMPUTE_NODES) -> None:
        """Mount a ``size`` tmpfs at ``path`` on each node: node-local scratch that fills up.

        Each node gets its own (mount namespaces are per host), like a real node's
        local disk; the directory stays empty and unmounted everywhere else.
        """
        path.mkdir(parents=True, exist_ok=True)
        mounted: list[str] = []

        def unmount() -> None:
            for node in mounted:
                on(node, ["umount", "--lazy", str(path)])

        for node in nodes:
            on(node, ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
               check=True)  # fmt: skip
            mounted.append(node)
        self._push(f"small disk {path}", unmount, self._LAST)

    def remove_small_disk(self, path: Path) -> None:
        """Unmount what :meth:`small_disk` mounted at ``path``."""
        for _, key, undo in list(self._undo):
            if key == f"small disk {path}":
                undo()
        self._pop(f"small disk {path}")


# --- the record the suite writes ---------------------------------------------------------


@dataclass
class FaultOutcome:
    """One fault, what was expected and what happened, for ``bench/results/faults.json``.

    Attributes
    ----------
    test
        The test's node id (the key entries are merged by).
    fault
        What was done, e.g. ``"scheduler rank frozen (SIGSTOP)"``.
    mode
        ``batch`` (one allocation), ``cluster`` (notebook cluster), ``graph`` (graph
        job) or ``controller``.
    expected
        The behaviour the test checks.
    observed
        What happened, in a sentence.
    recovery_seconds
        From the fault to recovery (its meaning is in ``recovery``).
    recovery
        What "recovered" means for this fault.
    tasks_recomputed
        Task executions beyond one per task (lost results computed again).
    jobs_left_over
        Jobs of the test still queued or running at its end.
    job_ids
        The jobs involved.
    result
        ``passed``, ``failed``, ``skipped`` or ``flaky`` (failed, then passed on its
        rerun), filled in from the test's reports.
    first_failure
        The first attempt's failure, for a test that was run again.
    """

    test: str
    fault: str = ""
    mode: str = ""
    expected: str = ""
    observed: str = ""
    recovery_seconds: float | None = None
    recovery: str = ""
    tasks_recomputed: int | None = None
    jobs_left_over: int | None = None
    job_ids: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    result: str = "not run"
    message: str = ""
    first_failure: str = ""
    duration_seconds: float | None = None
    recorded: str = ""

    def describe(self, fault: str, mode: str, expected: str) -> None:
        """Say what the test does (before it does it, so failures are recorded too)."""
        self.fault, self.mode, self.expected = fault, mode, expected

    def left_over(self, job_ids: Iterable[str]) -> int:
        """Count (and record) the jobs still queued or running; return the count."""
        ids = sorted(set(job_ids))
        self.job_ids = sorted(set(self.job_ids) | set(ids))
        self.jobs_left_over = len(squeue(ids))
        return self.jobs_left_over


def write_results(outcomes: Sequence[FaultOutcome], path: Path = RESULTS) -> None:
    """Merge ``outcomes`` into the results file (entries keyed by test id)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    entries = {
        e["test"]: e
        for e in data.get("faults", [])
        if isinstance(e, dict) and "test" in e and _still_exists(str(e["test"]))
    }
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for outcome in outcomes:
        outcome.recorded = now
        entries[outcome.test] = asdict(outcome)
    data = {
        "description": (
            "Fault-injection suite (tests/faults) on the multi-node Slurm test cluster: "
            "each fault, what happened, time to recover, tasks recomputed, jobs left over"
        ),
        "updated": now,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "slurm": _slurm_version(),
            "death_timeout_seconds": DEATH_TIMEOUT,
            "exclusive_nodes": EXCLUSIVE,
            "cgroup_memory": cgroup_memory_enforced(),
        },
        "faults": sorted(entries.values(), key=lambda e: str(e["test"])),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def _still_exists(test_id: str) -> bool:
    """Whether the test an entry was written by still exists (renamed tests drop out)."""
    path, _, name = test_id.partition("::")
    try:
        source = (REPO / path).read_text()
    except OSError:
        return False
    return f"def {name.split('[')[0]}(" in source


def _slurm_version() -> str:
    with contextlib.suppress(Exception):
        out = subprocess.run(["sinfo", "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    return "unknown"


def cgroup_memory_enforced() -> bool:
    """Whether the cluster runs with ``up --cgroup-memory`` (jobs confined to ``--mem``)."""
    try:
        return "ConstrainRAMSpace=yes" in Path("/etc/slurm/cgroup.conf").read_text()
    except OSError:
        return False


# --- task accounting ---------------------------------------------------------------------


def executions(log: Path) -> Counter[str]:
    """How many times each task ran, from the lines tasks append to ``log``."""
    try:
        lines = log.read_text().split()
    except FileNotFoundError:
        return Counter()
    return Counter(lines)


def recomputed(log: Path) -> int:
    """Task executions beyond one per task: results lost and computed again."""
    return sum(count - 1 for count in executions(log).values())
