"""The doctor's driver: run the login-node checks, submit the probe job, wait, judge.

:func:`run_doctor` gathers the facts the pure checks judge. Every wait has a
deadline, and the probe job is cancelled on the way out whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from jobstrap.bootstrap.probe import (
    CLIENT_TOKEN_FILE,
    NODE_TOKEN_FILE,
    PROBE_FILE,
    package_versions,
    python_facts,
)
from jobstrap.config.units import format_walltime_slurm
from jobstrap.errors import BatchCommandError, ConfigError, UserError
from jobstrap.jobs.spec import new_tag
from jobstrap.states import JobState
from jobstrap.store.files import read_tail
from jobstrap.tools.doctor.evaluate import diagnose_job_failure, diagnose_pending, evaluate_probe
from jobstrap.tools.doctor.gpus import check_gpus
from jobstrap.tools.doctor.listener import ProbeListener, call_back, probe_job
from jobstrap.tools.doctor.login import (
    check_batch_commands,
    check_client_python,
    check_partition,
    check_profile_python,
    check_scheduler_address,
)
from jobstrap.tools.doctor.ray import check_ray
from jobstrap.tools.doctor.report import (
    FIX_RUN_ROOT,
    Check,
    DoctorReport,
    Status,
    describe_bytes,
    fail,
    ok,
    warn,
)

if TYPE_CHECKING:
    from jobstrap.batchctl.control import BatchControl
    from jobstrap.config.profile import Profile
    from jobstrap.systems import BatchSystem, JobRecord

__all__ = [
    "run_doctor",
]


def _read_stderr(system: BatchSystem, log_directory: Path, job_id: str) -> str | None:
    """The end of the job's stderr under the names the system gives it; None if missing."""
    for stem in system.log_stems(job_id):
        tail = read_tail(log_directory / f"{stem}.err", 20)
        if tail is not None:
            return tail
    return None


def _read_text_retrying(path: Path, seconds: float) -> str | None:
    """Read a small file another node wrote; NFS may show it a moment late."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return path.read_text().strip()
        except OSError:
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.5)


def _save_record(
    profile_name: str, profile: Profile, run_dir: str, job_ids: list[str], tag: str
) -> None:
    """Leave a registry record so `jobstrap status`/`cancel` know the probe job."""
    from jobstrap.store import registry

    run_id = os.path.basename(run_dir)
    try:
        # A second probe of the same run adds its job to the record.
        earlier = registry.load(run_id)
        job_ids, tags = [*earlier.job_ids, *job_ids], [*earlier.tags, tag]
    except UserError:
        tags = [tag]
    record = registry.RunRecord(
        run_id=run_id,
        kind="probe",
        system=profile.system,
        run_dir=run_dir,
        job_ids=job_ids,
        tags=tags,
        profile={"name": profile_name, "resolved": profile.to_dict()},
    )
    registry.save(record)


def run_doctor(
    profile_name: str | None = None,
    overrides: Mapping[str, object] | None = None,
    *,
    timeout: float = 300.0,
    report_timeout: float = 90.0,
    keep: bool = False,
    probe: bool = True,
    echo: Callable[[str], None] = lambda line: None,
    batchctl: BatchControl | None = None,
) -> DoctorReport:
    """Diagnose a site: login-node checks, then a probe job on a compute node.

    Parameters
    ----------
    profile_name, overrides
        The profile to check (as for :func:`jobstrap.config.profile.load_profile`).
    timeout
        Seconds to wait for the probe job to start.
    report_timeout
        Seconds to wait for the probe's report once the job runs.
    keep
        Keep the probe's run directory even when everything passed.
    probe
        Submit the probe job (False: login-node checks only).
    echo
        Progress lines (submitted, waiting, ...).
    batchctl
        The batchctl to submit through (default: the process's for the system).

    Returns
    -------
    DoctorReport
    """
    from jobstrap.config.profile import load_profile

    report = DoctorReport()
    name = profile_name or os.environ.get("JOBSTRAP_PROFILE") or "default"
    try:
        profile = load_profile(profile_name, overrides)
    except ConfigError as error:
        report.add(
            fail(
                "profile",
                str(error),
                "fix the setting named in the message "
                "(`jobstrap config show --resolved` lists every value and its source)",
            )
        )
        return report
    report.add(
        ok(
            "profile",
            f"{name}: system {profile.system}, queue {profile.queue or 'default'}, "
            f"{profile.cores} cores, memory {describe_bytes(profile.memory)}, "
            f"walltime {format_walltime_slurm(profile.walltime)}",
        )
    )
    commands = check_batch_commands(profile.system)
    report.add(commands)
    versions = package_versions()
    report.add(check_client_python(versions))
    report.add(check_profile_python(profile.python))
    address_check, address = check_scheduler_address(profile.scheduler_interface)
    report.add(address_check)

    from jobstrap.batchctl.control import BatchControl

    gw = batchctl or BatchControl.for_system(profile.system)
    if commands.status is not Status.FAIL:
        report.add(_partition_check(gw, profile))

    from jobstrap.store.rundir import RunDir, default_run_root, new_run_id

    root = default_run_root(profile.run_root)
    try:
        run = RunDir.create(root, new_run_id("doctor"))
    except OSError as error:
        report.add(
            fail("run directory", f"cannot create a run directory in {root}: {error}", FIX_RUN_ROOT)
        )
        return report
    report.add(ok("run directory", f"created {run.path}"))
    if not probe or commands.status is Status.FAIL or address is None:
        # The directory only proved that one can be made; nothing is in it.
        shutil.rmtree(run.path, ignore_errors=True)
        return report
    report.run_dir = str(run.path)

    prober = _Prober(gw, profile, name, run.path, address, versions, echo, timeout,
                     report_timeout)  # fmt: skip
    outcome = prober.run()
    report.job_id, report.node = outcome.job_id, outcome.node
    if outcome.log_missing and gw.system.fails_without_log:
        # Slurm fails a job whose log file it cannot open, before anything runs. A
        # second probe without log files runs anyway and tells what the node sees.
        echo("the probe job could not write its log; probing again without log files")
        second = prober.run(detached=True)
        if second.reported:
            first = outcome.checks[0]
            outcome.checks = [
                fail("probe job", first.detail, first.fix),
                *(
                    replace(c, name="probe job (no logs)") if c.name == "probe job" else c
                    for c in second.checks
                ),
            ]
    report.add(*outcome.checks)
    if not report.failed and not keep:
        shutil.rmtree(run.path, ignore_errors=True)
        with contextlib.suppress(Exception):
            from jobstrap.store import registry

            registry.remove(run.run_id)
        report.run_dir = None
    return report


def _partition_check(gw: BatchControl, profile: Profile) -> Check:
    argvs = gw.system.partition_argv(profile.queue)
    if not argvs:
        return ok("partition", f"{profile.system}: no partition limits to check")
    last_error = ""
    for argv in argvs:
        try:
            result = gw.run(argv, timeout=30)
        except BatchCommandError as error:
            last_error = str(error)
            continue
        partitions = gw.system.parse_partitions(argv, result.stdout)
        if partitions or profile.queue is None:
            return check_partition(profile.queue, profile.walltime, profile.nodes, partitions)
    return warn(
        "partition",
        f"could not read the partition limits: {last_error or 'no output'}",
        "check `queue:` and `walltime:` against the site's documentation",
    )


def _wait_for_probe(
    gw: BatchControl,
    job_id: str,
    listener: ProbeListener,
    timeout: float,
    report_timeout: float,
    echo: Callable[[str], None],
    poll_interval: float,
) -> JobRecord | None:
    """Wait for the report, the job's end, or a deadline; return the last job record."""
    watcher = gw.watcher
    watcher.configure(poll_interval=min(poll_interval, 2))
    watcher.track([job_id])
    started = time.monotonic()
    running_since: float | None = None
    last_state: JobState | None = None
    record: JobRecord | None = None
    while not listener.received.wait(0.5):
        now = time.monotonic()
        with contextlib.suppress(KeyError):
            record = watcher.record(job_id)
        state = record.state if record else None
        if state is not last_state and state is not None:
            shown = record.reason if record and record.reason not in ("", "None") else ""
            reason = f" ({shown})" if shown else ""
            echo(f"probe job {job_id}: {state}{reason}")
            last_state = state
        if state is JobState.RUNNING and running_since is None:
            running_since = now
        if state is not None and state.is_terminal:
            # The report may still be in flight from a probe that just exited.
            listener.received.wait(2)
            break
        if running_since is None and now - started > timeout:
            break
        if running_since is not None and now - running_since > report_timeout:
            break
    if listener.received.is_set():
        with contextlib.suppress(KeyError):
            record = watcher.record(job_id)
        return record
    if record is not None and record.state.is_terminal:
        # sacct may need a moment for the exit code; one direct look is cheap.
        with contextlib.suppress(BatchCommandError):
            record = gw.status([job_id]).get(job_id, record)
    return record


@dataclass
class _Outcome:
    checks: list[Check]
    job_id: str | None = None
    node: str | None = None
    reported: bool = False  #: the probe's facts arrived (over TCP or probe.json)
    log_missing: bool = False  #: the job ended without a report and without its log


@dataclass
class _Prober:
    """Submits one probe job, waits for it, and turns what came back into checks."""

    gw: BatchControl
    profile: Profile
    profile_name: str
    run_dir: Path
    address: str
    versions: Mapping[str, str | None]
    echo: Callable[[str], None]
    timeout: float
    report_timeout: float

    def run(self, *, detached: bool = False) -> _Outcome:
        """One probe; ``detached`` sends its output nowhere (for unshared run dirs)."""
        from jobstrap.store.rundir import atomic_write_text

        token = secrets.token_hex(16)
        client_token = secrets.token_hex(16)
        atomic_write_text(self.run_dir / CLIENT_TOKEN_FILE, client_token + "\n")
        listener = ProbeListener(self.address, token)
        job_ids: list[str] = []
        try:
            spec = probe_job(
                self.profile, str(self.run_dir), new_tag(), connect=listener.endpoint, token=token
            )
            if detached:
                discard = self.gw.system.discard_log_directives
                spec = replace(spec, extra_directives=(*spec.extra_directives, *discard))
            try:
                submission = self.gw.submit(spec, None, template=self.profile.template)
            except BatchCommandError as error:
                fix = "the batch system's words above say which setting to change"
                return _Outcome([fail("probe job", f"submission rejected: {error}", fix)])
            job_ids = submission.job_ids
            job_id = job_ids[0]
            with contextlib.suppress(Exception):  # the registry is a convenience here
                _save_record(self.profile_name, self.profile, str(self.run_dir), job_ids,
                             submission.tag)  # fmt: skip
            self.echo(
                f"submitted probe job {job_id}; waiting up to {self.timeout:.0f} s for it to start"
            )
            record = _wait_for_probe(self.gw, job_id, listener, self.timeout,
                                     self.report_timeout, self.echo,
                                     self.profile.poll_interval)  # fmt: skip
            outcome = self._evaluate(listener, record, token, client_token, job_id)
            outcome.job_id = job_id
            outcome.node = (record.nodes if record else None) or (listener.report or {}).get("host")
            return outcome
        finally:
            listener.close()
            _cancel_unfinished(self.gw, job_ids)

    def _evaluate(
        self,
        listener: ProbeListener,
        record: JobRecord | None,
        token: str,
        client_token: str,
        job_id: str,
    ) -> _Outcome:
        facts = listener.report
        via_network = facts is not None
        callback_error: str | None = None
        if facts is not None:
            # The report went out before the probe knew its connection worked; what the
            # listener saw is the proof, and the peer is the node's source address.
            facts = {**facts, "connect": {"ok": True, "source": listener.peer}}
            listen = facts.get("listen") or {}
            if listen.get("port"):
                callback_error = call_back(str(listen["address"]), int(listen["port"]), token)
        else:
            with contextlib.suppress(OSError, ValueError):
                loaded = json.loads((self.run_dir / PROBE_FILE).read_text())
                facts = loaded if isinstance(loaded, dict) else None
        if facts is None:
            return self._no_report(record, job_id, listener)
        node = str(facts.get("host") or "the node")
        checks = [ok("probe job", f"job {job_id} ran on {node}")]
        node_token = _read_text_retrying(self.run_dir / NODE_TOKEN_FILE, 10 if via_network else 0)
        checks += evaluate_probe(
            facts,
            client_versions=self.versions,
            client_python=python_facts()["version"],
            client_token=client_token,
            node_token_here=node_token,
            callback_error=callback_error,
            scheduler_address=listener.endpoint,
            cores=self.profile.cores,
            memory=self.profile.memory,
            interfaces_requested=self.profile.interface,
            via_network=via_network,
        )
        checks += check_gpus(facts, self.profile.gpus_on_a_node)
        checks += check_ray(facts, self.profile.engine, package_versions(("ray",))["ray"])
        return _Outcome(checks, reported=True)

    def _no_report(
        self, record: JobRecord | None, job_id: str, listener: ProbeListener
    ) -> _Outcome:
        if record is None or not record.state.is_terminal:
            if record is not None and record.state is JobState.RUNNING:
                detail = (
                    f"job {job_id} runs on {record.nodes or 'a node'} but sent no report and "
                    "wrote no probe.json"
                )
                fix = (
                    "read its logs in the run directory (kept); the node may hang on the "
                    "network or the file system"
                )
                return _Outcome([fail("probe job", detail, fix)])
            return _Outcome([diagnose_pending(record, time.monotonic() - listener.started)])
        tail = _read_stderr(self.gw.system, self.run_dir / "logs", job_id)
        check = diagnose_job_failure(
            record, tail or "", self.profile.python, log_found=tail is not None
        )
        return _Outcome([check], log_missing=tail is None and check.name == "probe job")


def _cancel_unfinished(gw: BatchControl, job_ids: Sequence[str]) -> None:
    """Cancel the probe job unless it is known to have ended; never raises."""
    if not job_ids:
        return
    with contextlib.suppress(Exception):
        records = gw.watcher.records(job_ids)
        if records and all(r.state.is_terminal for r in records.values()):
            gw.watcher.untrack(job_ids)
            return
    with contextlib.suppress(Exception):
        gw.cancel(job_ids)
    with contextlib.suppress(Exception):
        gw.watcher.untrack(job_ids)
