"""dask-mpi compatibility: ``from jobstrap.mpi import initialize``.

An existing dask-mpi script keeps working with one changed import::

    from jobstrap.mpi import initialize      # was: from dask_mpi import initialize
    from distributed import Client

    initialize()
    client = Client()
    ...

and gets jobstrap's behaviour: rank 0 listens on the fastest network (``ib*``,
then ``hsn*``, then Ethernet) instead of whatever the hostname resolves to, the
dashboard listens on rank 0's loopback (``127.0.0.1``) instead of every interface,
since it is plain HTTP without a login (``dashboard_bind="interface"`` puts it on the
scheduler's address and warns; ``dashboard=False`` binds no HTTP port at all), a
world that is too small or a plain ``srun`` without ``--mpi`` is named with its fix,
a missing interface fails every rank fast instead of hanging, the client rank
heartbeats so a dead client or scheduler ends the run, and the end of the script
closes workers and scheduler without a ``CommClosedError`` in sight.

``protocol="tls"`` gives the launch its own CA and certificate, made on rank 0 and
broadcast over MPI (kept in memory, never written to disk). It is the default;
``protocol="tcp"`` (dask-mpi's default) is an explicit opt-out and warns.

Call ``initialize()`` at the top of the script, before importing ``distributed``
or numpy, as dask-mpi's documentation shows: MPI is initialised inside it, and with
the mpich wheel under ``srun --mpi=pmi2`` MPI initialisation after those imports has
been seen to fail (corrupted PMI-2 messages, UCX "failed to unpack address") even
with no jobstrap code involved. ``python -m jobstrap.bootstrap`` initialises MPI
before anything heavy is imported.

Exit codes: the client rank exits as the script does; the scheduler rank exits 1
if the script raised, else 0 (a ``sys.exit(n)`` code is not visible to an
``atexit`` hook, but the launcher reports the highest exit code of all ranks, so
``srun``/``mpiexec`` still return the script's code).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import signal
import socket
import sys
from types import TracebackType
from typing import Any

from jobstrap.bootstrap.ranks import bcast
from jobstrap.bootstrap.signals import DRAIN_SIGNALS, SignalPolicy
from jobstrap.errors import UserError

__all__ = ["WorldTooSmallException", "initialize", "send_close_signal"]


class WorldTooSmallException(UserError, RuntimeError):  # noqa: N818 (dask-mpi's name)
    """Not enough MPI ranks for scheduler, client and a worker (dask-mpi's name)."""


_state: dict[str, Any] = {}


def initialize(
    interface: str | None = None,
    nthreads: int = 1,
    local_directory: str | None = None,
    memory_limit: int | float | str = "auto",
    nanny: bool = False,
    dashboard: bool = True,
    dashboard_address: str = ":8787",
    protocol: str | None = None,
    worker_class: str | type = "distributed.Worker",
    worker_options: dict[str, Any] | None = None,
    comm: Any = None,
    exit: bool = True,
    *,
    scheduler_interface: str | None = None,
    death_timeout: float = 60.0,
    dashboard_bind: str = "loopback",
) -> bool:
    """Turn an MPI launch into a Dask cluster: rank 0 scheduler, rank 1 client, others workers.

    Parameters
    ----------
    interface
        Interface names or globs, in order (``"ib0"``, ``"ib0,eth0"``); ``None``
        chooses automatically (InfiniBand, Slingshot, then Ethernet).
    nthreads
        Threads per worker.
    local_directory
        Directory for worker files.
    memory_limit
        Per worker: bytes, fraction of memory, a string such as ``"4GiB"`` or ``"auto"``.
    nanny
        Run each worker under a nanny (its own process).
    dashboard
        Serve the scheduler's dashboard; if false, no HTTP port is bound anywhere.
    dashboard_address
        ``":8787"``: the dashboard's port (a free one if taken). A host before the
        colon is ignored: where it listens is ``dashboard_bind``'s choice.
    protocol
        ``"tls"`` (default: a fresh CA and certificate for this launch, kept in memory)
        or ``"tcp"`` (plain TCP, as dask-mpi's default; warns: anyone who can reach the
        ports can run code as you).
    worker_class
        Worker class or its dotted name (``"distributed.Nanny"`` means nanny=True).
    worker_options
        More keyword arguments for the workers.
    comm
        The mpi4py communicator (default ``COMM_WORLD``).
    exit
        Whether scheduler and worker ranks exit when the cluster closes (as in
        dask-mpi). If false they return ``False`` and the client must call
        :func:`send_close_signal` when done.
    scheduler_interface
        Interface for the scheduler if it differs from the workers'.
    death_timeout
        Seconds a rank waits for a lost peer before ending the run.
    dashboard_bind
        ``"loopback"`` (default): the dashboard listens on rank 0's ``127.0.0.1``
        (reach it with ``ssh -L PORT:127.0.0.1:PORT NODE``); ``"interface"``: on the
        scheduler's address, where anyone on that network reads it (warns once).

    Returns
    -------
    bool
        ``True`` on the client rank (continue with client code); ``False`` on the
        other ranks when ``exit`` is false.

    Raises
    ------
    WorldTooSmallException
        With fewer than 3 ranks; the message names the fix.
    """
    from jobstrap.bootstrap.ranks import env_rank
    from jobstrap.engines.dask.quiet import configure_logging

    if comm is None:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
    size, rank = comm.Get_size(), comm.Get_rank()
    configure_logging(rank)
    if size < 3:
        message = (
            f"not enough MPI ranks: found {size}, need at least 3 (scheduler, client and a "
            "worker); start more (srun --ntasks=3 / mpiexec -n 3)"
        )
        launched = env_rank(os.environ)
        if size == 1 and launched is not None and launched[1] > 1:
            message += (
                f"; {launched[2]}={launched[0]} of {launched[1]} says the launcher started "
                "several tasks without MPI: use srun --mpi=pmi2"
            )
        raise WorldTooSmallException(message)

    single_host = len(set(comm.allgather(socket.gethostname()))) == 1
    protocol = protocol or "tls"
    _check_dashboard_bind(dashboard_bind)
    if dashboard and dashboard_bind == "interface" and rank == 0:
        from jobstrap.net.security import warn_insecure

        warn_insecure("dashboard", 'initialize(dashboard_bind="interface")')
    if protocol == "tcp" and rank == 0:
        from jobstrap.net.security import warn_insecure

        warn_insecure("plaintext", 'initialize(protocol="tcp")')
    material = None
    if protocol == "tls":
        from jobstrap.net.security import generate_tls_material

        material = bcast(comm, generate_tls_material() if rank == 0 else None)
    security = _security(material)

    if rank == 0:
        return _scheduler(
            comm,
            security,
            interface=scheduler_interface or interface,
            single_host=single_host,
            protocol=protocol,
            dashboard=dashboard,
            dashboard_address=dashboard_address,
            dashboard_bind=dashboard_bind,
            death_timeout=death_timeout,
            exit=exit,
        )

    published = bcast(comm, None)
    if published["error"]:
        _stop(2, exit, published["error"])
    address = str(published["address"])

    from jobstrap.errors import NetworkError
    from jobstrap.net.network import choose_address

    problem = None
    host = ""
    if rank != 1:
        try:
            host = choose_address(interface, peer=address, allow_loopback=single_host)
        except NetworkError as error:
            problem = str(error)
    failed = any(comm.allgather(problem))
    if exit:
        _release()
    if failed:
        _stop(2, exit, problem)

    if rank == 1:
        _client(address, security, material, size - 2, death_timeout, exit)
        return True

    code = _workers(
        address,
        host,
        security,
        rank=rank,
        nthreads=nthreads,
        memory_limit=memory_limit,
        local_directory=local_directory,
        nanny=nanny,
        dashboard=dashboard,
        worker_class=worker_class,
        worker_options=worker_options,
        death_timeout=death_timeout,
    )
    if exit:
        sys.exit(code)
    return False


def send_close_signal() -> None:
    """End the run from the client rank: workers, then the scheduler, close quietly."""
    link = _state.get("link")
    if link is None or _state.get("closed"):
        return
    _state["closed"] = True
    _close_leftover_clients()
    link.done(int(_state.get("code", 0)))
    link.stop()


# ------------------------------------------------------------------------------ pieces


def _release() -> None:
    """Finalize MPI after the last collective (see ``World.release``): with exit=True no
    rank needs MPI again, and a finalize at exit would hang every rank if one died."""
    from mpi4py import MPI

    if not MPI.Is_finalized():
        MPI.Finalize()


def _security(material: Any) -> Any:
    if material is None:
        from distributed import Security

        return Security(require_encryption=False)  # type: ignore[no-untyped-call]
    from jobstrap.engines.dask import samehost
    from jobstrap.net.security import security_from_material

    samehost.install()  # same-host ranks over Unix sockets, as in jobstrap's own jobs
    return security_from_material(material)


def _stop(code: int, exit: bool, message: str | None) -> None:
    """Leave a failed launch: print the reason (if this rank has one) and exit or raise."""
    from jobstrap.engines.dask.quiet import say

    if message:
        say(message)
    if exit:
        sys.exit(code)
    raise UserError(message or "another rank could not start; see its message")


def _check_dashboard_bind(bind: str) -> None:
    from jobstrap.config.choices import DASHBOARD_BINDS

    if bind not in DASHBOARD_BINDS:
        raise UserError(
            f"initialize(dashboard_bind={bind!r}): expected one of {', '.join(DASHBOARD_BINDS)}"
        )


def _dashboard_port(address: str) -> int:
    port = address.rsplit(":", 1)[-1]
    return int(port) if port.isdigit() else 8787


def _scheduler(
    comm: Any,
    security: Any,
    *,
    interface: str | None,
    single_host: bool,
    protocol: str,
    dashboard: bool,
    dashboard_address: str,
    death_timeout: float,
    exit: bool,
    dashboard_bind: str = "loopback",
) -> bool:
    from jobstrap.engines.dask.quiet import logger
    from jobstrap.engines.dask.scheduler import SchedulerRunner
    from jobstrap.net.network import choose_address

    error = None
    runner = None
    try:
        host = choose_address(interface, allow_loopback=single_host)
        runner = SchedulerRunner(
            host=host,
            protocol=protocol,
            security=security,
            dashboard=dashboard,
            dashboard_port=_dashboard_port(dashboard_address),
            dashboard_bind=dashboard_bind,
        )
        runner.start()
    except UserError as exc:
        error = str(exc)
    except OSError as exc:
        error = f"the scheduler could not start: {exc}"
    bcast(comm, {"address": None if error else runner.address, "error": error})  # type: ignore[union-attr]
    if error or runner is None:
        _stop(2, exit, error)
        return False
    logger.info("scheduler at %s", runner.address)
    failed = any(comm.allgather(None))
    if exit:
        _release()
    if failed:
        runner.finish(2, "a rank could not join (see above); stopping")
        code = runner.wait()
        if exit:
            sys.exit(code)
        return False
    runner.watch_client(death_timeout=death_timeout, first_contact_timeout=death_timeout)

    def stop(sig: signal.Signals) -> None:
        runner.finish(128 + sig, f"{sig.name} again: stopping the run")

    # The first SIGTERM (and any SIGUSR1) is the client rank's to act on.
    SignalPolicy(lambda sig: None, stop, signals=DRAIN_SIGNALS, counted=(signal.SIGTERM,)).install(
        replay_early=False
    )
    code = runner.wait()
    if exit:
        sys.exit(code)
    return False


def _client(
    address: str,
    security: Any,
    material: Any,
    expected_workers: int,
    death_timeout: float,
    exit: bool,
) -> None:
    import dask

    from jobstrap.bootstrap import drain
    from jobstrap.engines.dask.link import SchedulerLink
    from jobstrap.engines.dask.quiet import logger

    config: dict[str, Any] = {"scheduler-address": address}
    if material is not None:
        from jobstrap.net.security import tls_config_from_material

        config.update(tls_config_from_material(material))
    dask.config.set(config)

    link = SchedulerLink(address, security, death_timeout=death_timeout)
    link.start()
    count = link.wait_for_workers(expected_workers, timeout=death_timeout)
    if count < expected_workers:
        logger.warning("%d of %d workers joined; continuing", count, expected_workers)
    _state.update(link=link, code=0, closed=False)

    previous_hook = sys.excepthook

    def record_failure(
        kind: type[BaseException], value: BaseException, tb: TracebackType | None
    ) -> None:
        _state["code"] = 1
        previous_hook(kind, value, tb)

    sys.excepthook = record_failure

    def tell_the_app(sig: signal.Signals) -> None:
        drain.request_drain(sig.name)

    SignalPolicy(tell_the_app, signals=DRAIN_SIGNALS).install(replay_early=False)
    if exit:
        # Registered after mpi4py's own hook, so it runs first (atexit is LIFO):
        # the cluster is closed before MPI is finalised.
        atexit.register(send_close_signal)


def _close_leftover_clients() -> None:
    from distributed import Client

    from jobstrap.engines.dask.quiet import silence_for_shutdown

    instances: Any = Client._instances
    clients = [c for c in list(instances) if c.status not in ("closed", "closing")]
    silence_for_shutdown()
    for client in clients:
        try:
            client.close(timeout=10)
        except Exception:
            continue


def _workers(
    address: str,
    host: str,
    security: Any,
    *,
    rank: int,
    nthreads: int,
    memory_limit: int | float | str,
    local_directory: str | None,
    nanny: bool,
    dashboard: bool,
    worker_class: str | type,
    worker_options: dict[str, Any] | None,
    death_timeout: float,
) -> int:
    from distributed import Nanny, Worker
    from distributed.utils import import_term

    from jobstrap.engines.dask.workers import WorkerOptions, serve_workers

    cls: Any = import_term(worker_class) if isinstance(worker_class, str) else worker_class
    if isinstance(cls, type) and issubclass(cls, Nanny):
        nanny, cls = True, None
    elif cls is Worker:
        cls = None  # jobstrap's Worker subclass: silenced at shutdown, headless if asked
    options = WorkerOptions(
        host=host,
        security=security,
        processes=1,
        nthreads=nthreads,
        memory_limit=memory_limit,
        local_directory=local_directory,
        death_timeout=death_timeout,
        dashboard=dashboard,
        names=[str(rank)],
        nanny=nanny,
        worker_class=cls,
        extra=worker_options or {},
    )
    return asyncio.run(serve_workers(address, options))
