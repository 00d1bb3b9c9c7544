"""Graphs and functions as batch jobs: :func:`submit`, :class:`BatchClient`, :class:`JobFuture`.

From a login node or a laptop, ship a Dask graph (or a function) into one batch job
and get a future back, the way submitit runs a function, but for a whole graph on a
whole allocation::

    import dask.array as da, jobstrap

    x = da.random.random((20_000, 20_000), chunks=2_000)
    future = jobstrap.submit((x + x.T).mean(axis=0), profile="mysite", nodes=4)
    print(future.state)            # PENDING, RUNNING, ...
    result = future.result()       # blocks; re-raises the remote exception if any

What happens: the object is serialised with cloudpickle into a fresh run directory
(``input.pkl``, 0600) next to the run's TLS material; one batch-mode job is submitted
(scheduler, client and workers as ranks of one allocation) whose client rank runs
:mod:`jobstrap.engines.dask.graph_runner`. That program computes the object on the allocation's
workers and writes ``result.pkl`` or ``error.pkl`` atomically. The future reads the
file system first and asks the batch system only through the process's one
:class:`~jobstrap.batchctl.watcher.Watcher` (one query per poll for every job watched), so a
thousand futures do not hammer the controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import os
import pickle
import shutil
import sys
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobstrap.batch.progress import (
    Progress,
    ProgressDisplay,
    read_progress,
    render_html,
    render_text,
)
from jobstrap.config.profile import Profile, load_profile
from jobstrap.engines.dask.graph_runner import (
    CorruptRunFileError,
    read_framed,
    versions,
    write_framed,
)
from jobstrap.errors import JobFailedError, JobstrapError, UserError
from jobstrap.states import JobState
from jobstrap.store.rundir import RunDir, default_run_root, new_run_id

if TYPE_CHECKING:
    from jobstrap.batchctl.control import BatchControl
    from jobstrap.batchctl.watcher import Watcher
    from jobstrap.jobs.spec import JobSpec
    from jobstrap.store.registry import RunRecord
    from jobstrap.systems import JobRecord

__all__ = [
    "DEFAULT_MAX_INPUT_SIZE",
    "BatchClient",
    "JobFuture",
    "RemoteError",
    "result_poll_delays",
    "submit",
    "submit_app",
]

#: Default cap on the serialised graph (bytes); ``$JOBSTRAP_MAX_INPUT_SIZE`` overrides it.
DEFAULT_MAX_INPUT_SIZE = 100 * 2**20
#: Seconds a finished job may take to show its result file (NFS attribute caches lag).
_RESULT_GRACE = {"local": 2.0}
_DEFAULT_RESULT_GRACE = 30.0
#: Seconds, for jobs that ended early (TIMEOUT, CANCELLED, ...): a result is unlikely.
_SHORT_GRACE = 2.0
_STDERR_TAIL = 20


def result_poll_delays(
    first: float = 0.05, fast: float = 0.1, slow: float = 0.5, fast_for: float = 30.0
) -> Generator[float, None, None]:
    """Pauses between looks for a run's result file, while someone waits for it.

    A look is a stat or two on the run directory, cheap even on a parallel file
    system, and a short job's result should be seen when it lands, not up to half
    a second later: ``fast`` apart for the first ``fast_for`` seconds of a wait,
    then backing off by half each time to ``slow``. The controller is never asked
    more often for this (job states come from the shared watcher).
    """
    started = time.monotonic()
    delay = first
    while True:
        yield delay
        cap = fast if time.monotonic() - started < fast_for else slow
        delay = min(cap, delay * 1.5)


class RemoteError(JobstrapError):
    """An exception raised inside the job that could not be rebuilt here.

    Raised when the original exception type cannot be unpickled on this side (its
    module is not installed here, or it does not pickle). The remote traceback is in
    the message and in :attr:`remote_traceback`.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str, host: str = "") -> None:
        self.type_name = type_name
        self.remote_message = message
        self.remote_traceback = remote_traceback
        self.host = host
        where = f" on {host}" if host else ""
        super().__init__(
            f"{type_name}: {message}\n--- remote traceback{where} ---\n{remote_traceback.rstrip()}"
        )


class _RemoteTracebackError(Exception):
    """Chained as ``__cause__`` so the remote traceback prints above the local one."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n" + self.text.rstrip()


# ----------------------------------------------------------------------------- shipping


def _max_input_size(value: int | str | None) -> int:
    from jobstrap.config.units import parse_memory

    if value is None:
        value = os.environ.get("JOBSTRAP_MAX_INPUT_SIZE") or DEFAULT_MAX_INPUT_SIZE
    return parse_memory(value, "max_input_size")


def _describe(obj: object) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def _work(obj: Any, args: Sequence[Any], kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the graph runner computes: a collection (or nest of them) or a function call."""
    from dask.base import is_dask_collection, unpack_collections

    if is_dask_collection(obj) or isinstance(obj, list | tuple | dict | set):
        collections, _ = unpack_collections(obj, traverse=True)  # type: ignore[no-untyped-call]
        if collections:
            if args or kwargs:
                raise UserError(
                    "arguments are for functions; a Dask collection is shipped as it is"
                )
            return {"kind": "collection", "obj": obj}
    if callable(obj):
        return {
            "kind": "function",
            "function": obj,
            "args": tuple(args),
            "kwargs": dict(kwargs or {}),
        }
    raise UserError(
        f"nothing to compute in a {_describe(obj)}: submit a Dask collection (array, "
        "dataframe, bag, delayed), a list or dict of them, or a function"
    )


@functools.cache
def _job_sys_path(python: str, cwd: str) -> tuple[str, ...]:
    """``sys.path`` of a fresh ``python`` started in ``cwd``, as the job's will be.

    It includes what a plain interpreter sees (site-packages, editable installs,
    ``$PYTHONPATH``), but not what this process added at run time (a test runner's
    folders, a notebook's ``sys.path.append``).
    """
    import json
    import subprocess

    try:
        done = subprocess.run(
            [python, "-c", "import json, sys; print(json.dumps(sys.path))"],
            capture_output=True, text=True, timeout=60, cwd=cwd, check=True,
        )  # fmt: skip
        entries = json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        entries = [p for p in sys.path if "site-packages" in p or p.startswith(sys.base_prefix)]
    return tuple(os.path.realpath(os.path.join(cwd, p)) for p in ["", *entries])


def _importable(name: str, path: str, roots: Sequence[str]) -> bool:
    """Whether ``import name`` from one of ``roots`` finds the file at ``path``."""
    for root in roots:
        base = os.path.join(root, *name.split("."))
        if path in (base + ".py", os.path.join(base, "__init__.py")) or path.startswith(base + "."):
            return True
    return False


def _local_modules(work: Mapping[str, Any], python: str) -> list[Any]:
    """Modules of the shipped function that the job could not import by name.

    A function is pickled by reference (module and name), which works when the job
    can import its module: installed packages and modules in the working directory
    (the job starts there). A module found only through a ``sys.path`` entry of this
    process (a notebook's sibling directory, a test folder) is shipped by value.
    """
    function = work.get("function")
    name = getattr(function, "__module__", None)
    module = sys.modules.get(name) if isinstance(name, str) else None
    path = getattr(module, "__file__", None)
    if module is None or not isinstance(name, str) or name == "__main__" or not path:
        return []
    if _importable(name, os.path.realpath(path), _job_sys_path(python, os.getcwd())):
        return []
    return [module]


def _serialise(work: Mapping[str, Any], limit: int, python: str = sys.executable) -> bytes:
    import cloudpickle

    from jobstrap.config.units import format_memory

    by_value = _local_modules(work, python)
    for module in by_value:
        cloudpickle.register_pickle_by_value(module)
    try:
        body = cloudpickle.dumps(dict(work), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as error:
        raise UserError(
            f"cannot serialise the {work['kind']} for the job: {error} (everything the graph "
            "or function refers to must pickle; open files, locks and clients do not)"
        ) from error
    finally:
        for module in by_value:
            cloudpickle.unregister_pickle_by_value(module)
    if len(body) > limit:
        raise UserError(
            f"the {work['kind']} serialises to {format_memory(len(body))}, more than "
            f"max_input_size={format_memory(limit)}: data embedded in it (a NumPy array "
            "wrapped with da.from_array, a big closure or argument) travels through the "
            "file system and the scheduler; read the data inside the graph instead "
            "(da.from_zarr, dd.read_parquet, dask.delayed(load)(path)) or raise "
            "max_input_size"
        )
    envelope = {"format": 1, "kind": work["kind"], "versions": versions(), "body": body}
    return pickle.dumps(envelope, protocol=pickle.HIGHEST_PROTOCOL)


# ------------------------------------------------------------------------ job building


def batch_profile(profile: Profile) -> Profile:
    """``profile`` with enough ranks for batch mode (scheduler, client, workers).

    Unless the user chose ``tasks_per_node``, a one-node job gets ``processes + 2``
    ranks (the scheduler and the client are light; ``processes`` is the worker count
    a node should have) and a multi-node job at least 3 ranks in all.
    """
    if profile.sources.get("tasks_per_node", "default") != "default":
        return profile
    ranks = profile.ranks_per_node
    if profile.nodes == 1:
        ranks = profile.processes + 2
    elif profile.nodes * ranks < 3:
        ranks = -(-3 // profile.nodes)
    if ranks == profile.ranks_per_node:
        return profile
    changed = profile.with_overrides({"tasks_per_node": ranks}, source="batch mode")
    return changed


def _mpiexec_available(profile: Profile) -> bool:
    if importlib.util.find_spec("mpi4py") is None:
        return False
    search = os.pathsep.join(
        filter(None, [os.path.dirname(profile.python), os.environ.get("PATH", "")])
    )
    return shutil.which("mpiexec", path=search) is not None


def local_launch(spec: JobSpec, profile: Profile) -> JobSpec:
    """The local backend without MPI: ranks as plain processes started by ``localq launch``.

    On a laptop without mpich (or mpi4py), ``launcher: auto`` (mpiexec) would fail; the
    local queue's own launcher starts the ranks instead and gives each its rank in the
    environment (``PMI_RANK``/``PMI_SIZE``, which the bootstrap reads when MPI is absent).
    ``launcher: none`` asks for the same on purpose (no MPI even where it is installed).
    """
    if profile.system != "local" or spec.ntasks < 2:
        return spec
    if spec.launcher == "mpiexec" and _mpiexec_available(profile):
        return spec
    if spec.launcher not in ("mpiexec", "none"):
        return spec  # an explicit mpirun/srun is the user's choice
    command = (
        profile.python,
        "-m",
        "jobstrap.localq",
        "launch",
        "-n",
        str(spec.ntasks),
        "--",
        *spec.command,
    )
    return replace(spec, launcher="none", command=command)


def _job_logs(spec: JobSpec, job_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    # Every template names its logs <job id>.out/.err in the log directory.
    return {
        j: {
            "out": os.path.join(spec.log_directory, f"{j}.out"),
            "err": os.path.join(spec.log_directory, f"{j}.err"),
        }
        for j in job_ids
    }


def _submit_run(
    profile: Profile,
    profile_name: str | None,
    kind: str,
    app_argv: Callable[[RunDir], list[str]],
    *,
    prepare: Callable[[RunDir], None] | None = None,
    extra: Mapping[str, Any] | None = None,
    start_after_workers: int | None = None,
) -> JobFuture:
    """Create the run directory, TLS and inputs; render; save; submit; return the future."""
    from jobstrap.batchctl.control import BatchControl
    from jobstrap.batchctl.submit import tagged
    from jobstrap.jobs.render import render_script
    from jobstrap.jobs.spec import app_job, new_tag
    from jobstrap.store import registry
    from jobstrap.store.registry import RunRecord
    from jobstrap.systems import get_system

    profile = batch_profile(profile)
    run = RunDir.create(default_run_root(profile.run_root), new_run_id(kind))
    if profile.protocol == "tls":
        from jobstrap.net.security import (
            create_tls,  # cryptography is slow to import; only when needed
        )

        create_tls(run.path)
    if prepare is not None:
        prepare(run)
    tag = new_tag()
    spec = app_job(
        profile, str(run.path), tag, app_argv(run), start_after_workers=start_after_workers
    )
    spec = tagged(local_launch(spec, profile))
    script = render_script(spec, get_system(profile.system), template=profile.template)
    record = RunRecord(
        run_id=run.run_id,
        kind=kind,
        system=profile.system,
        run_dir=str(run.path),
        tags=[tag],
        profile={
            "name": profile_name or os.environ.get("JOBSTRAP_PROFILE") or "default",
            "resolved": profile.to_dict(),
        },
        status="submitting",
        extra=dict(extra or {}),
    )
    # Saved before submitting: if this process dies mid-submit, the run is still
    # findable and its tag tells which queued job is ours.
    registry.save(record)
    batchctl = BatchControl.for_system(profile.system)
    try:
        submission = batchctl.submit(spec, script, script_name="job.sh")
    except Exception:
        registry.update(record.run_id, status="failed")
        raise
    record = registry.update(
        record.run_id,
        job_ids=submission.job_ids,
        logs=_job_logs(spec, submission.job_ids),
        status="submitted",
    )
    run.write_json("run.json", record.to_json())
    return JobFuture(
        record, poll_interval=profile.poll_interval, started_by_us=True, name=submission.name
    )


def _graph_argv(run: RunDir) -> list[str]:
    # What follows the bootstrap's "--": the client rank runs it in-process as __main__.
    return ["-m", "jobstrap.engines.dask.graph_runner", str(run.path)]


def submit_app(
    app: Sequence[str],
    *,
    profile: str | Profile | None = None,
    **overrides: Any,
) -> JobFuture:
    """Run an application (``["app.py", args...]`` or ``["-m", "module", args...]``) as a job.

    The app runs on the client rank with ``distributed.Client()`` connected to the
    allocation's scheduler; :mod:`jobstrap.engines.dask.graph_runner` wraps it to report progress.
    The future's :meth:`JobFuture.result` returns the app's exit code.
    """
    resolved, name = _resolve(profile, overrides)
    words = list(app)
    if not words:
        raise UserError("no app given: jobstrap run app.py [args] | -m module [args]")
    if words[0] != "-m":
        path = Path(words[0])
        if not path.is_file():
            raise UserError(f"app {words[0]!r}: no such file")
        # The file system is shared: the nodes read the app in place, by absolute path.
        words[0] = str(path.resolve())

    def argv(run: RunDir) -> list[str]:
        return [
            "-m",
            "jobstrap.engines.dask.graph_runner",
            "--app",
            str(run.path),
            "--",
            *words,
        ]

    return _submit_run(resolved, name, "app", argv, extra={"app": words})


def _resolve(
    profile: str | Profile | None, overrides: Mapping[str, Any]
) -> tuple[Profile, str | None]:
    settings = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(profile, Profile):
        return (profile.with_overrides(settings) if settings else profile), None
    return load_profile(profile, settings), profile


class BatchClient:
    """Submits graphs and functions as batch jobs with shared settings.

    Parameters
    ----------
    profile
        A profile name, a YAML file, or a :class:`~jobstrap.config.profile.Profile`
        (default: ``$JOBSTRAP_PROFILE``, else ``default``: the local backend).
    max_input_size
        Cap on the serialised graph (bytes or ``"100MiB"``); default 100 MiB or
        ``$JOBSTRAP_MAX_INPUT_SIZE``.
    **defaults
        Profile settings for every job of this client (``walltime="2h"``, ``nodes=4``).

    Examples
    --------
    >>> client = BatchClient("mysite", walltime="30m")     # doctest: +SKIP
    >>> futures = [client.submit(simulate, seed) for seed in range(4)]  # doctest: +SKIP
    >>> [f.result() for f in futures]                       # doctest: +SKIP
    """

    def __init__(
        self,
        profile: str | Profile | None = None,
        *,
        max_input_size: int | str | None = None,
        **defaults: Any,
    ) -> None:
        self._profile = profile
        self.defaults = dict(defaults)
        self.max_input_size = _max_input_size(max_input_size)
        # Resolve once now: a typo in a setting fails here, not at the first submit.
        self.profile, self.profile_name = _resolve(profile, self.defaults)

    def __repr__(self) -> str:
        name = self.profile_name or "default"
        return f"BatchClient(profile={name!r}, system={self.profile.system!r})"

    def submit(
        self,
        obj: Any,
        *args: Any,
        kwargs: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> JobFuture:
        """Submit ``obj`` as one batch job and return its future.

        Parameters
        ----------
        obj
            A Dask collection (array, dataframe, bag, ``Delayed``), a list/tuple/dict of
            them (the result has the same shape), or a function.
        *args
            Positional arguments of the function.
        kwargs
            Keyword arguments of the function (keywords of ``submit`` itself are
            profile settings, so the function's go in this mapping).
        **overrides
            Profile settings for this job only (``nodes=2``, ``walltime="10m"``).

        Returns
        -------
        JobFuture

        Raises
        ------
        UserError
            Nothing to compute, arguments given with a collection, or the serialised
            object is larger than ``max_input_size`` (read data inside the graph).
        ConfigError
            A setting is unknown or invalid.
        """
        work = _work(obj, args, kwargs)
        # Serialised first: a graph that is too big fails before anything exists.
        envelope = _serialise(work, self.max_input_size, self.profile.python)
        if overrides:
            profile = self.profile.with_overrides(
                {k: v for k, v in overrides.items() if v is not None}
            )
        else:
            profile = self.profile

        def prepare(run: RunDir) -> None:
            write_framed(run.input_file, envelope)

        extra = {"object": _describe(obj), "input_bytes": len(envelope)}
        # A graph is handed to the scheduler at once: it waits there for its first
        # worker and spreads out as the others join, so the client rank connects and
        # submits while the workers start. An app (submit_app) may count its
        # workers, so it waits for all.
        return _submit_run(
            profile,
            self.profile_name,
            "graph",
            _graph_argv,
            prepare=prepare,
            extra=extra,
            start_after_workers=0,
        )


def submit(
    obj: Any,
    *args: Any,
    profile: str | Profile | None = None,
    nodes: int | None = None,
    kwargs: Mapping[str, Any] | None = None,
    max_input_size: int | str | None = None,
    **overrides: Any,
) -> JobFuture:
    """Run a Dask graph (or a function) as one batch job; return a :class:`JobFuture`.

    Parameters
    ----------
    obj
        A Dask collection (array, dataframe, bag, ``Delayed``), a list/tuple/dict of
        them, or a function. A function runs on a worker of the allocation and may use
        the whole cluster itself through ``distributed.get_client()``.
    *args
        Positional arguments of the function.
    profile
        Profile name, YAML file or :class:`~jobstrap.config.profile.Profile`.
    nodes
        Nodes of the allocation.
    kwargs
        Keyword arguments of the function.
    max_input_size
        Cap on the serialised object (default 100 MiB, ``$JOBSTRAP_MAX_INPUT_SIZE``).
    **overrides
        Any other profile setting (``walltime="1h"``, ``queue="short"``).

    Returns
    -------
    JobFuture

    Examples
    --------
    >>> import dask.array as da                           # doctest: +SKIP
    >>> x = da.ones((2000, 2000), chunks=500)             # doctest: +SKIP
    >>> jobstrap.submit((x + x.T).sum()).result()          # doctest: +SKIP
    8000000.0
    """
    client = BatchClient(profile, max_input_size=max_input_size)
    return client.submit(obj, *args, kwargs=kwargs, nodes=nodes, **overrides)


# ---------------------------------------------------------------------------- futures


@dataclass(frozen=True)
class _Outcome:
    """How a run ended, as far as its files say."""

    kind: str  #: "result", "error" or "exit"
    payload: Any = None


class JobFuture:
    """The future of one graph (or app) job.

    Results come from the run directory first (``result.pkl`` / ``error.pkl``, checked
    with a cheap ``stat``) and the process's watcher second, so waiting costs the
    controller nothing beyond the watcher's one shared poll.

    Attributes
    ----------
    run_id, run_dir, job_id, job_ids, system, kind
    """

    def __init__(
        self,
        record: RunRecord,
        *,
        poll_interval: float | None = None,
        started_by_us: bool = False,
        name: str | None = None,
    ) -> None:
        self.run_id = record.run_id
        self.run_dir = Path(record.run_dir)
        self.job_ids = list(record.job_ids)
        self.job_id = self.job_ids[0] if self.job_ids else ""
        self.system = record.system
        self.kind = record.kind
        self.created = record.created
        self._record = record
        self._run = RunDir(self.run_dir)
        self._poll_interval = float(poll_interval or _profile_poll(record) or 5)
        self._terminal_since: float | None = None
        self._terminal_damage = ""
        self._outcome: _Outcome | None = None
        self._last_poke = 0.0
        if self.job_ids:
            watcher = self._watcher()
            watcher.configure(poll_interval=self._poll_interval)
            watcher.track(self.job_ids, started_by_us=started_by_us, name=name)

    # -- construction -------------------------------------------------------------------

    @classmethod
    def attach(cls, run_id: str) -> JobFuture:
        """The future of a run submitted elsewhere (another process, an earlier session).

        Parameters
        ----------
        run_id
            The run id, or a unique prefix of it (``jobstrap status`` lists them).
        """
        from jobstrap.store import registry

        record = registry.load(run_id)
        if record.kind not in ("graph", "app"):
            raise UserError(f"run {record.run_id} is a {record.kind}, not a graph or app job")
        return cls(record, started_by_us=False)

    def _batchctl(self) -> BatchControl:
        from jobstrap.batchctl.control import BatchControl

        return BatchControl.for_system(self.system)

    def _watcher(self) -> Watcher:
        return self._batchctl().watcher

    def __repr__(self) -> str:
        return f"<JobFuture {self.run_id} job {self.job_id} {self.state}>"

    # -- state --------------------------------------------------------------------------

    def _job_record(self) -> JobRecord | None:
        if not self.job_ids:
            return None
        try:
            return self._watcher().record(self.job_id)
        except KeyError:
            return None

    @property
    def state(self) -> JobState:
        """The run's state: COMPLETED/FAILED once its result/error exists, else the job's."""
        outcome = self._check_files()
        if outcome is not None and outcome.kind == "result":
            return JobState.COMPLETED
        if outcome is not None and outcome.kind == "error":
            return JobState.FAILED
        record = self._job_record()
        return record.state if record is not None else JobState.MISSING

    def done(self) -> bool:
        """True once the result or error is there, or the job has ended."""
        return self._poll() is not None or (
            (record := self._job_record()) is not None and record.state.is_terminal
        )

    def refresh(self, timeout: float = 30.0) -> JobState:
        """Wait (up to ``timeout`` s) for the watcher's next answer; return the state.

        A future made by :meth:`attach` knows nothing until the watcher first asked
        the batch system; this makes sure it has.
        """
        watcher = self._watcher()
        polls = watcher.polls
        watcher.poke()
        deadline = time.monotonic() + timeout
        while watcher.polls <= polls and time.monotonic() < deadline:
            if self._check_files() is not None:
                break
            time.sleep(0.05)
        return self.state

    def log_files(self) -> tuple[str, str]:
        """The job's ``(stdout, stderr)`` files."""
        return self._record.log_paths(self.job_id)

    def progress(self) -> Progress | None:
        """The latest task progress the job reported (None before it started)."""
        return read_progress(self.run_dir)

    # -- results ------------------------------------------------------------------------

    def _check_files(self) -> _Outcome | None:
        """The outcome if the run directory has one (a damaged file is no outcome)."""
        if self._outcome is not None:
            return self._outcome
        if self.kind == "app":
            return None  # an app's outcome is its exit code, known when the job ends
        for kind, path in (("error", self._run.error_file), ("result", self._run.result_file)):
            try:
                payload = read_framed(path)
            except FileNotFoundError:
                continue
            except CorruptRunFileError:
                continue  # perhaps mid-copy; if the job has ended, _poll says so
            self._outcome = _Outcome(kind, payload)
            return self._outcome
        return None

    def _poll(self) -> _Outcome | None:
        """One non-blocking look: the outcome, or a failure outcome once the job ended."""
        outcome = self._check_files()
        if outcome is not None:
            return outcome
        record = self._job_record()
        if record is None or not record.state.is_terminal:
            self._terminal_since = None
            now = time.monotonic()
            if now - self._last_poke >= self._poll_interval and self.job_ids:
                # Someone is waiting: ask the watcher to poll at its base rate again.
                self._watcher().poke()
                self._last_poke = now
            return None
        if self.kind == "app":
            self._outcome = _Outcome("exit", record)
            return self._outcome
        now = time.monotonic()
        if self._terminal_since is None:
            self._terminal_since = now
            self._terminal_damage = self._damaged()
        # A file that is missing may only be invisible yet (NFS caches negative lookups
        # for up to a minute); one that is there but damaged will not heal by waiting.
        ended_normally = record.state in (JobState.COMPLETED, JobState.FAILED)
        expected = ended_normally and not self._terminal_damage
        grace = _RESULT_GRACE.get(self.system, _DEFAULT_RESULT_GRACE) if expected else _SHORT_GRACE
        if now - self._terminal_since < grace:
            return None  # the result file may still be on its way through the file system
        self._outcome = _Outcome("failed", self._failure(record))
        return self._outcome

    def _failure(self, record: JobRecord) -> JobFailedError:
        details = []
        if record.reason and record.reason != "None":
            details.append(record.reason)
        code = self._run.read_exit_code()
        if code is None:
            code = record.exit_code
        if code is not None:
            details.append(f"exit code {code}")
        damaged = self._damaged()
        if damaged:
            details.append(damaged)
        elif record.state is JobState.COMPLETED:
            details.append("the job ended without writing result.pkl")
        return JobFailedError(
            self.job_id, record.state.value, self._stderr_tail(), "; ".join(details)
        )

    def _damaged(self) -> str:
        for path in (self._run.result_file, self._run.error_file):
            try:
                read_framed(path)
            except FileNotFoundError:
                continue
            except CorruptRunFileError as error:
                return f"{path.name} is damaged and was not used ({error})"
        return ""

    def _stderr_tail(self, lines: int = _STDERR_TAIL) -> str:
        _, err = self._record.log_paths(self.job_id) if self.job_id else ("", "")
        return _tail(err, lines) if err else ""

    def wait(self, timeout: float | None = None, *, progress: bool = False) -> JobState:
        """Block until the run has an outcome (or ``timeout`` seconds pass); return the state.

        Raises
        ------
        TimeoutError
            After ``timeout`` seconds, naming the state last seen.
        """
        self._wait(timeout, progress)
        return self.state

    def _wait(self, timeout: float | None, progress: bool | ProgressDisplay) -> _Outcome:
        deadline = None if timeout is None else time.monotonic() + timeout
        display = progress if isinstance(progress, ProgressDisplay) else None
        if progress is True:
            display = ProgressDisplay(self.run_id)
        delays = result_poll_delays()
        try:
            while True:
                outcome = self._poll()
                if display is not None:
                    self.show_progress(display)
                if outcome is not None:
                    return outcome
                if deadline is not None and time.monotonic() >= deadline:
                    record = self._job_record()
                    seen = record.state if record is not None else "unknown"
                    raise TimeoutError(
                        f"run {self.run_id} (job {self.job_id}) has no result after "
                        f"{timeout:g} s; last state {seen}"
                    )
                delay = next(delays)
                pause = delay if deadline is None else min(delay, deadline - time.monotonic())
                time.sleep(max(0.0, pause))
        finally:
            if display is not None and progress is True:
                display.close()

    def show_progress(self, display: ProgressDisplay) -> None:
        """Draw the current state and progress on ``display``."""
        record = self._job_record()
        state = self.state
        reason = record.reason if record is not None else ""
        waited = time.time() - self.created if state is JobState.PENDING else None
        display.update(state, self.progress(), reason=reason, waited=waited)

    def result(self, timeout: float | None = None, *, progress: bool = False) -> Any:
        """Wait for the run and return its result (an app's: its exit code).

        Parameters
        ----------
        timeout
            Seconds to wait (default: as long as it takes).
        progress
            Show the queue wait and task progress while waiting (terminal or notebook).

        Raises
        ------
        Exception
            The graph's own exception, rebuilt here, with the remote traceback chained
            (``__cause__``) and in ``remote_traceback``; :class:`RemoteError` when the
            original type cannot be rebuilt here.
        JobFailedError
            The job ended without a result (TIMEOUT, CANCELLED, OUT_OF_MEMORY,
            NODE_FAIL, MISSING, ...), with the state and the stderr tail.
        TimeoutError
            No outcome within ``timeout`` seconds (the job keeps running).
        """
        return self._resolve(self._wait(timeout, progress))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait like :meth:`result`; return the exception it would raise, or None."""
        try:
            self.result(timeout)
        except TimeoutError:
            raise
        except Exception as error:
            return error
        return None

    def _resolve(self, outcome: _Outcome) -> Any:
        if outcome.kind == "result":
            return pickle.loads(outcome.payload)
        if outcome.kind == "error":
            raise _rebuild(pickle.loads(outcome.payload))
        if outcome.kind == "exit":
            record: JobRecord = outcome.payload
            code = self._run.read_exit_code()
            if code is None:
                code = record.exit_code
            if code is None or record.state not in (JobState.COMPLETED, JobState.FAILED):
                raise self._failure(record)
            return code
        raise outcome.payload

    def __await__(self) -> Generator[Any, None, Any]:
        return self._async_result().__await__()

    async def _async_result(self) -> Any:
        for delay in result_poll_delays():
            outcome = self._poll()
            if outcome is not None:
                return self._resolve(outcome)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the delays never end")

    # -- control and inspection ----------------------------------------------------------

    def cancel(self) -> bool:
        """Cancel the job; True if it had not finished yet."""
        if self._check_files() is not None:
            return False
        record = self._job_record()
        if record is not None and record.state.is_terminal:
            return False
        self._batchctl().cancel(self.job_ids)
        self._watcher().poke()
        from jobstrap.store import registry

        with contextlib.suppress(UserError, OSError):
            registry.update(self.run_id, status="cancelled")
        return True

    def logs(self, tail: int | None = None, *, stream: str = "both") -> str:
        """The job's stdout and/or stderr (``stream``: ``out``, ``err`` or ``both``).

        Parameters
        ----------
        tail
            Only the last ``tail`` lines of each.
        """
        if stream not in ("out", "err", "both"):
            raise ValueError(f"stream must be out, err or both, not {stream!r}")
        parts = []
        for job_id in self.job_ids:
            out, err = self._record.log_paths(job_id)
            chosen = {"out": [out], "err": [err], "both": [out, err]}[stream]
            for path in dict.fromkeys(chosen):
                text = _tail(path, tail) if tail else _read_text(path)
                if stream == "both":
                    parts.append(f"==> {path} <==\n{text}")
                else:
                    parts.append(text)
        return "\n".join(parts)

    def _repr_html_(self) -> str:
        record = self._job_record()
        reason = record.reason if record is not None else ""
        state = self.state
        waited = time.time() - self.created if state is JobState.PENDING else None
        title = f"{self.run_id} (job {self.job_id}, {self.system})"
        return render_html(state, self.progress(), title=title, reason=reason, waited=waited)

    def status_line(self) -> str:
        """One line: state, then queue wait or task progress."""
        record = self._job_record()
        state = self.state
        waited = time.time() - self.created if state is JobState.PENDING else None
        reason = record.reason if record is not None else ""
        return render_text(state, self.progress(), reason=reason, waited=waited)


def _profile_poll(record: RunRecord) -> float | None:
    resolved = record.profile.get("resolved") if isinstance(record.profile, dict) else None
    value = resolved.get("poll_interval") if isinstance(resolved, dict) else None
    return float(value) if isinstance(value, int | float) else None


def _rebuild(info: Mapping[str, Any]) -> BaseException:
    """The remote exception, with the remote traceback attached and chained."""
    text = str(info.get("traceback", ""))
    error: BaseException | None = None
    if info.get("exception"):
        with contextlib.suppress(Exception):
            error = pickle.loads(info["exception"])
    if not isinstance(error, BaseException):
        return RemoteError(
            str(info.get("type", "Exception")),
            str(info.get("message", "")),
            text,
            str(info.get("host", "")),
        )
    with contextlib.suppress(AttributeError, TypeError):
        error.remote_traceback = text  # type: ignore[attr-defined]
    # The remote frames are in the chained text; frames restored by unpickling would
    # only print them twice.
    error.__traceback__ = None
    error.__cause__ = _RemoteTracebackError(text)
    error.__suppress_context__ = True
    if sys.version_info >= (3, 11):
        host = info.get("host")
        error.add_note(f"(raised in the batch job{' on ' + str(host) if host else ''})")
    return error


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _tail(path: str, lines: int | None) -> str:
    """The last ``lines`` lines of a file (read from the end: logs can be large)."""
    if not lines:
        return _read_text(path)
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            block = min(size, max(4096, lines * 200))
            while True:
                handle.seek(size - block)
                data = handle.read(block)
                if data.count(b"\n") > lines or block == size:
                    break
                block = min(size, block * 2)
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])
