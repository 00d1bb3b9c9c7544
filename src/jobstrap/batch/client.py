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
workers and writes ``result.pkl`` or ``error.pkl`` atomically. A one-node job that
asks for no distributed workers (:mod:`jobstrap.batch.inprocess`; the profile's
``graph_scheduler: distributed`` forces them) runs the same program in the job's one
process with Dask's threads instead: no scheduler, no workers, no TLS, nothing
listening, the same run files. The future reads the
file system first and asks the batch system only through the process's one
:class:`~jobstrap.batchctl.watcher.Watcher` (one query per poll for every job watched), so a
thousand futures do not hammer the controller.

This module holds the entry points; what is shipped is in :mod:`jobstrap.batch.package`,
the submission in :mod:`jobstrap.batch.submit` and the future in
:mod:`jobstrap.batch.future`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jobstrap.batch.future import JobFuture
from jobstrap.batch.inprocess import Placement, graph_placement
from jobstrap.batch.package import (
    describe,
    input_size_limit,
    serialise,
    work_for,
    write_input,
)
from jobstrap.batch.submit import (
    SubmittedRun,
    app_argv,
    app_words,
    graph_argv,
    ray_function_argv,
    submit_run,
)
from jobstrap.config.profile import Profile, load_profile
from jobstrap.errors import UserError
from jobstrap.store.rundir import RunDir

__all__ = ["BatchClient", "submit", "submit_app"]


def _future(submitted: SubmittedRun) -> JobFuture:
    """The future of a run this process just submitted (its watcher starts following it)."""
    return JobFuture(
        submitted.record,
        poll_interval=submitted.profile.poll_interval,
        started_by_us=True,
        name=submitted.submission.name,
    )


def submit_app(
    app: Sequence[str],
    *,
    profile: str | Profile | None = None,
    profile_name: str | None = None,
    **overrides: Any,
) -> JobFuture:
    """Run an application (``["app.py", args...]`` or ``["-m", "module", args...]``) as a job.

    The app runs on the client rank with ``distributed.Client()`` connected to the
    allocation's scheduler; :mod:`jobstrap.engines.dask.graph_runner` wraps it to
    report progress.
    The future's :meth:`JobFuture.result` returns the app's exit code.

    Parameters
    ----------
    app
        The app and its arguments.
    profile
        Profile name, YAML file or :class:`~jobstrap.config.profile.Profile`.
    profile_name
        The name the run record keeps for the profile (default: ``profile`` when it
        is a name, else ``$JOBSTRAP_PROFILE`` or ``default``).
    **overrides
        Any other profile setting (``walltime="1h"``, ``nodes=2``).
    """
    resolved, name = _resolve(profile, overrides)
    words = app_words(app)
    submitted = submit_run(
        resolved, profile_name or name, "app", app_argv(words), extra={"app": words}
    )
    return _future(submitted)


def _resolve(
    profile: str | Profile | None, overrides: Mapping[str, Any], *, any_engine: bool = False
) -> tuple[Profile, str | None]:
    settings = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(profile, Profile):
        resolved, name = (profile.with_overrides(settings) if settings else profile), None
    else:
        resolved, name = load_profile(profile, settings), profile
    return (resolved if any_engine else _dask_only(resolved)), name


def _engine_job(
    profile: Profile, work: Mapping[str, Any]
) -> tuple[Callable[[RunDir], list[str]], int | None, Placement]:
    """What the head's side of a function or graph job runs, after how many workers, where.

    The one place where the engine makes a difference to a function or graph job;
    the run directory, submission, registry and :class:`JobFuture` are the same.
    """
    if profile.engine == "ray":
        if work["kind"] != "function":
            raise UserError("engine 'ray' runs functions; a Dask collection needs engine='dask'")
        # The function is the cluster's Ray driver: it starts once every node joined
        # (Ray places a task only on nodes that are there; a function may count them).
        return ray_function_argv, None, Placement(in_process=False, reason="engine: ray")
    # A one-node graph that asks for no distributed workers computes in the job's own
    # process (jobstrap.batch.inprocess). Otherwise a graph is handed to the scheduler
    # at once: it waits there for its first worker and spreads out as the others join,
    # so the client rank connects and submits while the workers start. An app
    # (submit_app) may count its workers, so it waits for all.
    where = graph_placement(profile, work)
    return graph_argv(where.threads if where.in_process else None), 0, where


def _dask_only(profile: Profile) -> Profile:
    """``profile``, unless its engine is not Dask's: `jobstrap run` apps need Dask."""
    if profile.engine != "dask":
        # `jobstrap run` apps go through Dask's graph runner (it reports their progress).
        raise UserError(
            f"engine {profile.engine!r}: `jobstrap run` runs on Dask only; run a script "
            f"with `jobstrap submit --engine {profile.engine} app.py`"
        )
    return profile


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
        self.max_input_size = input_size_limit(max_input_size)
        # Resolve once now: a typo in a setting fails here, not at the first submit.
        self.profile, self.profile_name = _resolve(profile, self.defaults, any_engine=True)

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
        work = work_for(obj, args, kwargs)
        settings = {k: v for k, v in overrides.items() if v is not None}
        profile = self.profile.with_overrides(settings) if settings else self.profile
        client_argv, start_after_workers, where = _engine_job(profile, work)
        # Serialised before anything exists: a graph that is too big fails here.
        envelope = serialise(work, self.max_input_size, profile.python)

        def prepare(run: RunDir) -> None:
            write_input(run, envelope)

        extra = {
            "object": describe(obj),
            "input_bytes": len(envelope),
            "in_process": where.in_process,
            "placement": where.reason,
        }
        submitted = submit_run(
            profile,
            self.profile_name,
            "graph",
            client_argv,
            prepare=prepare,
            extra=extra,
            start_after_workers=start_after_workers,
            in_process=where.in_process,
        )
        return _future(submitted)


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
        the whole cluster itself through ``distributed.get_client()`` (such a function
        always gets a cluster). A one-node job that asks for no distributed workers
        computes in the job's own process with Dask's threads (see
        :mod:`jobstrap.batch.inprocess`); ``graph_scheduler="distributed"`` forces a
        scheduler and workers. With ``engine="ray"`` a function runs as the Ray driver
        of the job's Ray cluster instead (``ray.remote`` tasks inside it run on the
        allocation; functions only).
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
        Any other profile setting (``walltime="1h"``, ``queue="short"``,
        ``graph_scheduler="distributed"``).

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
