"""Where a graph job computes: in the job's own process, or on a distributed cluster.

A one-node graph job that asks for no distributed workers runs in the job's one
process with Dask's threaded scheduler (``--mode in-process`` of the bootstrap):
no scheduler, no workers, no TLS, nothing listening, and a start-up of one
interpreter instead of three ranks and a cluster. Everything the submitting side
sees is the same: the run directory's ``progress.json``, ``result.pkl`` /
``error.pkl`` and logs, written by the same graph runner.

What *asks* for distributed workers (any one of them, whatever layer set it):

* ``graph_scheduler: distributed`` (the explicit override);
* ``nodes`` above 1: the work spans several nodes;
* ``processes`` or ``workers_per_rank`` above 1: several worker processes per node
  (threads in one process would change how the work runs, e.g. under the GIL);
* ``tasks_per_node``: a rank layout chosen by hand;
* GPUs (``gpus``, ``gpus_per_job``): one worker per GPU, each with its own device
  and the ``GPU`` resource;
* ``worker_class``: a worker of the user's own class;
* a function whose code names distributed's worker-side API (``get_client``,
  ``worker_client``, ``get_worker``, ``secede``, ``rejoin``, ``Client`` or the
  ``distributed`` module): it expects a cluster to use.

Settings that only shape the distributed path (``nanny``, ``protocol``,
``interface``, ``dashboard``, ``death_timeout``, ``worker_layout``,
``local_directory``) do not ask for it: they apply whenever that path runs.
``threads`` (else ``cores``) sizes the in-process thread pool as it sizes a
distributed worker.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jobstrap.config.profile import Profile

__all__ = ["DISTRIBUTED_NAMES", "Placement", "graph_placement", "names_distributed"]

#: Names whose use in a function's code means it wants a cluster to talk to.
DISTRIBUTED_NAMES = frozenset(
    {"get_client", "worker_client", "get_worker", "secede", "rejoin", "Client", "distributed"}
)


@dataclass(frozen=True)
class Placement:
    """Where a graph job computes, and why.

    Attributes
    ----------
    in_process
        True: in the job's own process with Dask's threads; False: on a scheduler
        and workers started in the job.
    reason
        One phrase for the run record and the docs (``"nodes: 2"``).
    threads
        Threads of the in-process pool (the job's cores, or ``threads``).
    """

    in_process: bool
    reason: str
    threads: int = 1


def graph_placement(profile: Profile, work: Mapping[str, Any]) -> Placement:
    """Decide where the graph job of ``profile`` computes ``work`` (see the module doc).

    Parameters
    ----------
    profile
        The job's settings.
    work
        What :func:`jobstrap.batch.package.work_for` made (``kind``: ``graph`` or
        ``function``).
    """
    asks = _asks_for_distributed(profile)
    if asks is None and work.get("kind") == "function" and names_distributed(work["function"]):
        asks = "the function uses distributed's client API"
    if asks is not None:
        return Placement(False, asks)
    return Placement(
        True, "one node, no distributed workers asked for", threads=profile.threads_per_worker
    )


def _asks_for_distributed(profile: Profile) -> str | None:
    """The first setting of ``profile`` that asks for distributed workers, or None."""
    checks = (
        (profile.graph_scheduler == "distributed", "graph_scheduler: distributed"),
        (profile.nodes > 1, f"nodes: {profile.nodes}"),
        (profile.processes > 1, f"processes: {profile.processes}"),
        (profile.workers_per_rank > 1, f"workers_per_rank: {profile.workers_per_rank}"),
        (profile.tasks_per_node is not None, f"tasks_per_node: {profile.tasks_per_node}"),
        (profile.gpus_on_a_node > 0, f"gpus: {profile.gpus_on_a_node} per node"),
        (profile.worker_class is not None, f"worker_class: {profile.worker_class}"),
    )
    return next((reason for asked, reason in checks if asked), None)


def names_distributed(function: Any) -> bool:
    """Whether ``function``'s code (nested functions included) names distributed's API.

    Looks through ``functools.partial``, bound methods and callable objects. A name
    that only looks alike costs speed (the distributed path), never a result.
    """
    seen: set[int] = set()
    stack = [function]
    while stack:
        target = stack.pop()
        if id(target) in seen:
            continue
        seen.add(id(target))
        if isinstance(target, functools.partial):
            stack.append(target.func)
            continue
        if isinstance(target, types.MethodType):
            stack.append(target.__func__)
            continue
        code = getattr(target, "__code__", None)
        if code is None and not inspect.isroutine(target) and callable(target):
            stack.append(type(target).__call__)
            continue
        if isinstance(code, types.CodeType) and _code_names(code) & DISTRIBUTED_NAMES:
            return True
    return False


def _code_names(code: types.CodeType) -> set[str]:
    """Global, attribute and imported names of ``code`` and of the code nested in it."""
    names: set[str] = set()
    stack = [code]
    while stack:
        current = stack.pop()
        names.update(current.co_names)
        stack.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
    return names
