"""The helper processes a rank's nannies need, started to outlive the batch signals.

How a rank's nannies start their workers (fork, or multiprocessing's fork server),
distributed's pre-spawn environment applied before numpy reads it, and the fork
server and resource tracker started with the batch system's signals ignored.
Imports nothing heavy at module level: the bootstrap calls
:func:`apply_pre_spawn_environ` before Dask is imported.
"""

from __future__ import annotations

import inspect
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from jobstrap.bootstrap.messages import logger
from jobstrap.bootstrap.signals import BATCH_SIGNALS, ignoring

__all__ = [
    "PRE_SPAWN_ENVIRON",
    "START_METHOD_ENV",
    "apply_pre_spawn_environ",
    "choose_start_method",
    "fork_fork_server",
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
    dispositions survive fork and exec, so it starts with them ignored.

    The server is a fork of this process when :func:`fork_fork_server` can take one
    (Dask is imported here already, so the server costs no import); otherwise
    multiprocessing starts a fresh interpreter that imports the preload itself.
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
        if fork_fork_server():
            return
        logger.debug("fork server: a new interpreter (%d threads here)", threading.active_count())
        forkserver.ensure_running()


#: ``multiprocessing.forkserver.main``'s parameters in the Pythons whose fork server
#: :func:`fork_fork_server` knows (3.10-3.13; 3.14 adds an authentication key).
_SERVER_MAIN_PARAMETERS = ("listener_fd", "alive_r", "preload", "main_path", "sys_path")


def fork_fork_server() -> bool:
    """Make a fork of this process multiprocessing's fork server; False if it cannot.

    multiprocessing starts its fork server as a new interpreter, which imports the
    preload (``distributed``) again: on a node whose first worker rank runs the
    workers of several ranks, that second import is as much CPU as the rank's own,
    on the critical path of the job's start. This process has imported it already
    (it runs the nannies), so a fork of it is a server ready at once, and its
    workers share the imported modules' pages with it and with this process.

    A fork is taken only when it is safe and understood: this process has one thread
    (no lock can be held by a thread the child lacks), the preload is imported, no
    server runs yet, and the standard library's server has the layout of Python
    3.10-3.13 (its ``main`` and its client's three fields). Otherwise nothing is
    changed and the caller starts the usual server.

    Returns
    -------
    bool
        Whether the server now runs as this process's child.
    """
    from multiprocessing import connection, forkserver, resource_tracker, util

    # The server's private fields, as ForkServer.ensure_running sets them (typeshed
    # does not declare them; the checks below make sure they are there).
    server: Any = forkserver._forkserver
    arbitrary_address: Callable[[str], str] | None = getattr(connection, "arbitrary_address", None)
    if (
        threading.active_count() != 1
        or PRELOAD_MODULE not in sys.modules
        or hasattr(server, "_forkserver_authkey")
        or getattr(server, "_forkserver_pid", 0) is not None
        or tuple(inspect.signature(forkserver.main).parameters) != _SERVER_MAIN_PARAMETERS
        or arbitrary_address is None
    ):
        return False
    with server._lock:
        # What ForkServer.ensure_running does before its spawn: the workers are
        # handed the tracker's descriptor with every fork request.
        resource_tracker.ensure_running()
        address = arbitrary_address("AF_UNIX")
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(address)
            if not util.is_abstract_socket_namespace(address):
                os.chmod(address, 0o600)
            listener.listen()
            # Every client holds the write end; the server ends when all have closed it.
            alive_r, alive_w = os.pipe()
            pid = os.fork()
            if pid == 0:  # the server: never returns into this process's code
                code = 1
                try:
                    os.close(alive_w)
                    forkserver.main(listener.detach(), alive_r, [PRELOAD_MODULE])
                except SystemExit:  # main's way out: every client has ended
                    code = 0
                except BaseException:
                    import traceback

                    traceback.print_exc()
                finally:
                    os._exit(code)
            os.close(alive_r)
        server._forkserver_address = address
        server._forkserver_alive_fd = alive_w
        server._forkserver_pid = pid
    return True


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
