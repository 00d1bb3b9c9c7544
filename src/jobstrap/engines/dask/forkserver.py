"""The helper processes a rank's nannies need, started to outlive the batch signals.

How a rank's nannies start their workers (fork, or multiprocessing's fork server),
distributed's pre-spawn environment applied before numpy reads it, and the fork
server and resource tracker started with the batch system's signals ignored.
Imports nothing heavy at module level: the bootstrap calls
:func:`apply_pre_spawn_environ` before Dask is imported.
"""

from __future__ import annotations

import os
import signal
import threading

from jobstrap.bootstrap.signals import BATCH_SIGNALS, ignoring

__all__ = [
    "PRE_SPAWN_ENVIRON",
    "START_METHOD_ENV",
    "apply_pre_spawn_environ",
    "choose_start_method",
    "start_fork_server",
    "start_resource_tracker_ignoring_sigusr1",
]

#: The module the fork server imports once, for every worker it forks: ``distributed``
#: and the worker classes.
PRELOAD_MODULE = "jobstrap.engines.dask.servers"

#: ``distributed.nanny.pre-spawn-environ`` as distributed ships it (a unit test keeps
#: the two equal). The nanny applies it to ``os.environ`` just before it starts a
#: worker, which is too late for a *forked* worker: numpy, loaded with Dask, has
#: already read the thread counts (and started its BLAS threads). So a rank that
#: forks its workers applies it before importing Dask.
PRE_SPAWN_ENVIRON: dict[str, object] = {
    "MALLOC_TRIM_THRESHOLD_": 65536,
    "OMP_NUM_THREADS": 1,
    "MKL_NUM_THREADS": 1,
    "OPENBLAS_NUM_THREADS": 1,
}

#: The environment variable that chooses how nannies start their workers.
START_METHOD_ENV = "DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD"


def apply_pre_spawn_environ() -> None:
    """Set what distributed sets for a nanny's worker, before numpy reads it.

    Without it a forked worker runs every BLAS call on all the node's CPUs, in each
    of its threads (the oversubscription distributed's setting exists to prevent),
    and each worker rank starts a BLAS thread pool whose threads spin for work
    through the busiest part of a job's start. The user's own Dask configuration of
    ``distributed.nanny.pre-spawn-environ`` wins, as it does in distributed;
    ``MALLOC_TRIM_THRESHOLD_`` only acts at process start, so the job script sets it.
    """
    import dask.config  # dask alone: its configuration, not yet numpy

    configured = dask.config.get("distributed.nanny.pre-spawn-environ", default=None)
    environ = {**PRE_SPAWN_ENVIRON, **(configured or {})}
    os.environ.update({key: str(value) for key, value in environ.items()})


def choose_start_method(nannies: int) -> None:
    """Choose how this process's nannies start their workers, unless the environment did.

    A spawned worker imports everything again, which on a busy node is most of its
    start-up. One nanny forks its worker: the process is still quiet then (MPI is
    finalized, nothing else runs). Several nannies in one process start together,
    each with threads of its own, and a fork taken while another thread holds a
    lock can leave the worker hung on it; their workers come from multiprocessing's
    fork server instead, a single-threaded process that imported Dask once.
    """
    if START_METHOD_ENV in os.environ:
        return
    import dask

    method = "fork" if nannies == 1 else "forkserver"
    dask.config.set({"distributed.worker.multiprocessing-method": method})
    if method == "forkserver":
        start_fork_server()


def start_fork_server() -> None:
    """Start multiprocessing's fork server with Dask imported and signals left to the nanny.

    Its preload is :data:`PRELOAD_MODULE` (``distributed`` and the worker classes), not the
    list distributed would choose (every optional package it finds, pandas
    included), which would cost each node seconds of CPU for nothing the workers
    need at start. Like the resource tracker, the server is one of the rank's
    helper processes: the batch system's SIGTERM/SIGUSR1/SIGINT reach it too, and
    it must outlive them (its nannies drain their workers, and a nanny restarting a
    worker needs it); it ends by itself when this process ends. Ignored
    dispositions survive exec, so it starts with them ignored.
    """
    import multiprocessing
    from multiprocessing import forkserver

    import distributed.utils

    multiprocessing.get_context("forkserver").set_forkserver_preload([PRELOAD_MODULE])
    if hasattr(distributed.utils, "_forkserver_preload_set"):
        distributed.utils._forkserver_preload_set = True
    if threading.current_thread() is not threading.main_thread():
        return
    with ignoring(BATCH_SIGNALS):
        forkserver.ensure_running()


def start_resource_tracker_ignoring_sigusr1() -> None:
    """Start multiprocessing's resource tracker with SIGUSR1 ignored.

    The first nanny starts the tracker, a helper process that ignores SIGINT and
    SIGTERM but dies of SIGUSR1, which Slurm sends to every process of a step
    (``--signal=USR1@...``, ``scancel --signal=USR1``). Relaunched, it prints a
    KeyError traceback for every resource it never saw. An ignored disposition
    survives exec, so starting it now, with SIGUSR1 ignored, keeps it alive.
    """
    from multiprocessing import resource_tracker

    if threading.current_thread() is not threading.main_thread():
        return
    with ignoring((signal.SIGUSR1,)):
        resource_tracker.ensure_running()
