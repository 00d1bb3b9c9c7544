"""``python -m jobstrap.bootstrap``: what runs on every rank of a job.

Modes:

``mpi``
    One allocation, one Dask cluster: rank 0 scheduler, rank 1 the app (client),
    every other rank workers, all over the chosen network. The job ends when the
    app ends, with the app's exit code on the client and scheduler ranks.
``workers``
    Every rank runs workers for a scheduler found in ``info.json`` or given with
    ``--scheduler-address`` (notebook clusters' worker jobs).
``scheduler``
    The scheduler alone, until told to stop or idle.

Exit codes: the app's in ``mpi`` mode; 2 for a usage or setup problem (one line on
stderr says which and how to fix it); 1 when a rank lost its scheduler or its
workers could not join.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from jobstrap.bootstrap import drain
from jobstrap.bootstrap.app import run_app
from jobstrap.bootstrap.options import Options, parse_args
from jobstrap.bootstrap.ranks import World, discover_world, in_slurm_batch_script
from jobstrap.bootstrap.roles import (
    Role,
    check_world_size,
    expected_workers,
    node_groups,
    role_of,
)
from jobstrap.engines.dask.quiet import configure_logging, logger, say, silence_for_shutdown
from jobstrap.errors import UserError
from jobstrap.store.rundir import RunDir, SchedulerInfo, atomic_write_json

__all__ = ["main"]

#: Worker deaths by the job's memory limit that end a worker job (workers mode).
MEMORY_KILLS_PER_JOB = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bootstrap; return the process exit code."""
    drain.catch_early_signals()
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
    except UserError as error:
        configure_logging()
        say(str(error))
        return 2
    if options.mode == "mpi":
        return _run_mpi(options)
    if options.mode == "workers":
        return _run_workers_mode(options)
    return _run_scheduler_mode(options)


# ------------------------------------------------------------------------------ helpers


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


def _apply_pre_spawn_environ() -> None:
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


def _load_dask(*, forks_workers: bool = False) -> None:
    """Import Dask (with this package's server code) with the cyclic GC paused.

    Importing ``distributed`` makes some 60 000 objects, none of them garbage, and
    the collections their allocation triggers (about 150, one of them full) are a
    tenth of the import's CPU time: on a busy node, where every rank imports at
    once, a tenth of a worker's start-up. Freezing what the import made then keeps
    it out of every later collection, and a forked worker from writing to (so
    copying) those pages when a collection would have touched them.

    ``forks_workers``: this rank's nannies fork its workers, so distributed's
    pre-spawn environment is applied first (:func:`_apply_pre_spawn_environ`).
    """
    if "jobstrap.engines.dask.servers" in sys.modules:
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        if forks_workers:
            _apply_pre_spawn_environ()
        import jobstrap.engines.dask.servers  # noqa: F401  (imports dask and distributed)
        from jobstrap.engines.dask import samehost

        # Before any listener or connection: same-host peers (a node's workers,
        # the scheduler and the app's client) talk over Unix sockets, not TLS.
        samehost.install()
    finally:
        if enabled:
            gc.enable()
        gc.freeze()


def _security(options: Options, run: RunDir) -> Any:
    from jobstrap.net.security import load_security

    _load_dask()

    if options.protocol == "tcp":
        return load_security(run, require=False)
    return load_security(run, require=True)


def _check_tls(options: Options, run: RunDir) -> None:
    """Fail like :func:`_security` would, without importing ``distributed``.

    A rank that stands by for its node's worker rank never needs Dask: keeping
    it from importing Dask is the point of the ``node`` layout.
    """
    from jobstrap.net.security import tls_files

    if options.protocol == "tls" and not tls_files(run).exist():
        _security(options, run)  # raises the one message for missing TLS material


@dataclass(frozen=True)
class _Peer:
    """What every rank tells the others before the roles start."""

    host: str
    pid: int
    cpus: tuple[int, ...]


@dataclass(frozen=True)
class _Placement:
    """Where this rank's workers run (worker ranks only).

    ``ranks`` are the worker ranks whose workers this process runs: its own in the
    ``rank`` layout; in the ``node`` layout, every worker rank of the node for the
    node's first worker rank and none for the others, which stand by for
    ``leader``. ``cpus`` is the CPU set the workers may use (the union of their
    ranks' bindings), ``None`` to leave the binding alone.
    """

    ranks: tuple[int, ...]
    leader: _Peer | None = None
    cpus: frozenset[int] | None = None


def _cpus() -> tuple[int, ...]:
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return ()


def _gather_peers(world: World) -> list[_Peer]:
    """Every rank's host, pid and CPU binding (one allgather; just this rank without MPI)."""
    me = _Peer(world.hostname, os.getpid(), _cpus())
    return list(world.allgather(me)) if world.uses_mpi else [me]


#: Fewest worker ranks on a node for the ``node`` layout to group them. The group's
#: workers come from a fork server, itself an interpreter that imports Dask: with two
#: ranks that is as many imports as each rank running its own, plus a standing rank.
NODE_LAYOUT_MIN_RANKS = 3


def _placement(options: Options, world: World, peers: Sequence[_Peer]) -> _Placement:
    """Decide which workers this worker rank runs (see :class:`_Placement`)."""
    own = _Placement((world.rank,))
    # Without MPI the ranks cannot agree on a node's first rank; without nannies
    # one process's workers would share one interpreter (and its GIL).
    if options.worker_layout != "node" or not options.nanny or len(peers) != world.size:
        return own
    groups = node_groups(
        [p.host for p in peers], client_on_scheduler_rank=options.client_on_scheduler_rank
    )
    for first, ranks in groups.items():
        if world.rank not in ranks or len(ranks) < NODE_LAYOUT_MIN_RANKS:
            continue
        if first != world.rank:
            return _Placement((), leader=peers[first])
        cpus = frozenset(c for r in ranks for c in peers[r].cpus)
        return _Placement(ranks, cpus=cpus or None)
    return own


def _open_run(options: Options) -> RunDir:
    try:
        return RunDir.open(options.run_dir)
    except FileNotFoundError as error:
        raise UserError(
            f"bootstrap: {error} (pass the run directory the submitter created)"
        ) from None


def _single_host(world: World, peers: Sequence[_Peer]) -> bool:
    """Whether every rank runs on this host (then loopback is allowed)."""
    if world.uses_mpi:
        return len({p.host for p in peers}) == 1
    if world.size == 1:
        return True
    for name in ("SLURM_STEP_NUM_NODES", "SLURM_JOB_NUM_NODES", "SLURM_NNODES"):
        value = os.environ.get(name)
        if value:
            return value.strip() == "1"
    return False


def _job_id() -> str | None:
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID") or None


def _process_start() -> float:
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:
        return time.time()


def _write_scheduler_files(run: RunDir, runner: Any, world: World) -> None:
    identity = runner.identity()
    atomic_write_json(run.scheduler_file, identity)
    run.write_info(
        SchedulerInfo(
            scheduler_address=runner.address,
            dashboard_address=runner.dashboard_address,
            host=world.hostname,
            job_id=_job_id(),
            started=time.time(),
            pid=os.getpid(),
            launch=world.launch,
        )
    )


def _wait_for_info(
    run: RunDir, *, timeout: float, launch: str | None, not_before: float | None
) -> SchedulerInfo | None:
    """Poll ``info.json`` until this launch's scheduler (or an error) is published."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            info = run.read_info()
        except (FileNotFoundError, ValueError):
            info = None
        if info is not None:
            fresh = (
                info.launch == launch
                if launch is not None
                else not_before is None or info.started >= not_before
            )
            if fresh:
                return info
        time.sleep(0.2)
    return None


def _publish_error(run: RunDir, world: World, message: str) -> None:
    """Tell file-coordinated ranks that rank 0 failed, so they do not wait for it."""
    with contextlib.suppress(OSError):
        run.write_info(
            SchedulerInfo(
                scheduler_address="",
                dashboard_address=None,
                host=world.hostname,
                job_id=_job_id(),
                started=time.time(),
                pid=os.getpid(),
                launch=world.launch,
                extra={"error": message},
            )
        )


def _install_signal_handlers(
    handler: Callable[[int, FrameType | None], None],
    signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1),
) -> None:
    for signum in signals:
        signal.signal(signum, handler)


# --------------------------------------------------------------------------------- mpi


def _run_mpi(options: Options) -> int:
    world = discover_world(use_mpi=True)
    configure_logging(world.rank)
    if world.warning and world.rank == 0:
        say(world.warning)
    error: str | None = None
    run: RunDir | None = None
    try:
        hint = None
        if world.size == 1 and in_slurm_batch_script(os.environ):
            hint = "this runs in the batch script itself: launch it with srun --mpi=pmi2"
        elif world.size == 1:
            hint = (
                "if several tasks each printed this line, the launcher did not start MPI "
                "(use srun --mpi=pmi2, or the mpiexec that matches mpi4py)"
            )
        check_world_size(
            world.size,
            client_on_scheduler_rank=options.client_on_scheduler_rank,
            launcher_hint=hint,
        )
        if options.app is None:
            raise UserError("bootstrap: mpi mode needs an app: ... -- app.py [args] | -m module")
        run = _open_run(options)
        _check_tls(options, run)
    except UserError as exc:
        error = str(exc)
    if _any_rank_failed(world, error, run):
        return 2
    assert run is not None

    peers = _gather_peers(world)
    single_host = _single_host(world, peers)
    role = role_of(world.rank, client_on_scheduler_rank=options.client_on_scheduler_rank)
    logger.debug("rank %d of %d (%s): %s", world.rank, world.size, world.source, role.value)
    if role in (Role.SCHEDULER, Role.SCHEDULER_AND_CLIENT):
        return _scheduler_rank(options, world, run, single_host, role)
    placement = _placement(options, world, peers) if role is Role.WORKER else None
    return _other_rank(options, world, run, single_host, role, placement)


def _any_rank_failed(world: World, error: str | None, run: RunDir | None) -> bool:
    """Agree on setup errors, so no rank waits in a collective for one that gave up.

    Each distinct message is printed once: by rank 0, or by a rank whose problem
    differs from rank 0's (e.g. a run directory missing on one node only).
    """
    if world.uses_mpi and world.size > 1:
        errors = world.allgather(error)
        if not any(errors):
            return False
        if error and (world.rank == 0 or error != errors[0]):
            say(error)
        return True
    if error is None:
        return False
    say(error)
    if world.rank == 0 and world.size > 1 and run is not None:
        _publish_error(run, world, error)  # ranks coordinated by files stop waiting
    return True


def _scheduler_rank(
    options: Options, world: World, run: RunDir, single_host: bool, role: Role
) -> int:
    _load_dask()
    from jobstrap.engines.dask.servers import SchedulerRunner
    from jobstrap.net.network import choose_address

    runner: SchedulerRunner | None = None
    error: str | None = None
    security: Any = None
    try:
        security = _security(options, run)
        host = choose_address(options.effective_scheduler_interface, allow_loopback=single_host)
        runner = SchedulerRunner(
            host=host,
            protocol=options.protocol,
            security=security,
            dashboard=options.dashboard,
            dashboard_port=options.dashboard_port,
        )
        runner.start()
        _write_scheduler_files(run, runner, world)
    except UserError as exc:
        error = str(exc)
    except OSError as exc:
        error = f"the scheduler could not start: {exc}"
    except Exception as exc:  # a bug must not leave the other ranks waiting for us
        logger.exception("the scheduler could not start")
        error = f"the scheduler could not start: {type(exc).__name__}: {exc}"

    if world.uses_mpi:
        world.bcast({"address": None if error else runner.address, "error": error})  # type: ignore[union-attr]
    elif error:
        _publish_error(run, world, error)
    if error or runner is None:
        say(error or "the scheduler could not start")
        return 2
    logger.info(
        "scheduler at %s%s",
        runner.address,
        f", dashboard at {runner.dashboard_address}" if runner.dashboard_address else "",
    )

    if world.uses_mpi:
        problems = [p for p in world.allgather(None) if p]
        world.release()
        if problems:
            # Each failing rank printed its own reason; stop everything now rather
            # than run with a cluster that is missing pieces.
            runner.finish(2, f"{len(problems)} rank(s) could not join (see above); stopping")
            return runner.wait()

    expected = expected_workers(
        world.size,
        worker_processes=options.worker_processes,
        client_on_scheduler_rank=options.client_on_scheduler_rank,
    )
    if role is Role.SCHEDULER_AND_CLIENT:
        code = _client(options, run, runner.address, security, expected, runner=runner)
        runner.finish(code)
        runner.wait()
        return code

    first_contact = (
        options.death_timeout if world.uses_mpi else max(60.0, 2 * options.death_timeout)
    )
    runner.watch_client(death_timeout=options.death_timeout, first_contact_timeout=first_contact)
    terms = 0

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal terms
        name = signal.Signals(signum).name
        if signum in (signal.SIGTERM, signal.SIGINT):
            terms += 1
            if terms > 1:
                runner.finish(128 + signum, f"{name} again: stopping the run")
                return
        logger.info("%s: the app has been told to wind down", name)

    # Ctrl-C under mpiexec reaches every rank: the app (rank 1) ends with 130 and
    # the run stops in order; here SIGINT only counts like SIGTERM.
    _install_signal_handlers(on_signal, (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT))
    for name in drain.early_signals():
        on_signal(signal.Signals[name], None)
    return runner.wait()


def _other_rank(
    options: Options,
    world: World,
    run: RunDir,
    single_host: bool,
    role: Role,
    placement: _Placement | None,
) -> int:
    from jobstrap.errors import NetworkError
    from jobstrap.net.network import choose_address

    leader = placement.leader if placement is not None else None  # set: stand by for it
    # Load the TLS material (importing Dask) while rank 0 starts the scheduler rather
    # than after: it is most of this rank's start-up. Standing ranks never need it.
    security: Any = None
    problem: str | None = None
    if leader is None:
        try:
            _load_dask(forks_workers=role is Role.WORKER and options.nanny)
            security = _security(options, run)
        except UserError as exc:  # told to every rank below, not left in a collective
            problem = str(exc)
            say(problem)
    if world.uses_mpi:
        published = world.bcast(None)
        if published["error"]:
            return 2  # rank 0 said why
        address = str(published["address"])
    else:
        info = _wait_for_info(
            run,
            timeout=max(60.0, 2 * options.death_timeout),
            launch=world.launch,
            not_before=_process_start() - 60,
        )
        if info is None:
            say(
                f"no scheduler: rank 0 did not publish {run.info_file} in time "
                f"(rank {world.rank} of {world.size} from {world.source}); was rank 0 started?"
            )
            return 1
        if info.extra.get("error"):
            return 2
        address = info.scheduler_address

    host = ""
    if role is Role.WORKER and leader is None and problem is None:
        try:
            host = choose_address(options.interface, peer=address, allow_loopback=single_host)
        except NetworkError as exc:
            problem = str(exc)
            say(problem)
    if world.uses_mpi:
        failed = any(world.allgather(problem))
        world.release()
        if failed:
            return 2
    elif problem:
        return 2

    if leader is not None:
        return _stand_by(leader)
    if role is Role.CLIENT:
        expected = expected_workers(
            world.size,
            worker_processes=options.worker_processes,
            client_on_scheduler_rank=options.client_on_scheduler_rank,
        )
        return _client(options, run, address, security, expected)
    assert placement is not None
    return _worker(options, address, host, security, placement)


def _worker_names(prefix: str, processes: int) -> list[str]:
    if processes == 1:
        return [prefix]
    return [f"{prefix}-{i}" for i in range(processes)]


def _worker(options: Options, address: str, host: str, security: Any, placement: _Placement) -> int:
    if placement.cpus is not None:
        # This process starts the workers of the node's other worker ranks too (their
        # fork server inherits the binding): let them use those ranks' CPUs. The
        # step's cpuset allows it; a binding finer than the step's stays as it was.
        try:
            os.sched_setaffinity(0, placement.cpus)
        except (AttributeError, OSError) as error:
            logger.debug("could not widen the CPU binding to %s: %s", sorted(placement.cpus), error)
    names = [
        name
        for rank in placement.ranks
        for name in _worker_names(
            f"{options.name}-{rank}" if options.name else str(rank), options.worker_processes
        )
    ]
    return _serve_workers(options, address, host, security, names)


def _stand_by(leader: _Peer) -> int:
    """Keep this rank's place in the launch while its node's first worker rank runs.

    The rank stays (a launcher may end a step whose first task exits, e.g. Slurm's
    ``WaitTime``) but holds no work, so it ignores the batch system's signals: the
    rank running the workers drains them. It ends when that rank ends.
    """
    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    logger.debug("workers run in pid %d on this node; standing by", leader.pid)
    _wait_for_exit(leader.pid)
    return 0


def _wait_for_exit(pid: int) -> None:
    """Block until process ``pid`` (not a child) has ended."""
    import select

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):  # before Linux 5.3: look once a second
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            except PermissionError:
                pass
            time.sleep(1.0)
    try:
        select.select([fd], [], [])
    finally:
        os.close(fd)


def _serve_workers(
    options: Options,
    address: str,
    host: str,
    security: Any,
    names: Sequence[str],
    *,
    max_memory_kills: int | None = None,
) -> int:
    from jobstrap.engines.dask.servers import WorkerOptions, serve_workers

    if options.nanny:
        _choose_start_method(len(names))
    worker_options = WorkerOptions(
        host=host,
        security=security,
        processes=len(names),
        nthreads=options.nthreads,
        memory_limit=options.memory_limit,
        local_directory=options.local_directory,
        death_timeout=options.death_timeout,
        lifetime=options.lifetime,
        dashboard=options.dashboard,
        nanny=options.nanny,
        names=list(names),
        max_memory_kills=max_memory_kills,
    )
    return asyncio.run(serve_workers(address, worker_options))


#: The environment variable that chooses how nannies start their workers.
START_METHOD_ENV = "DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD"


def _choose_start_method(nannies: int) -> None:
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
        from jobstrap.engines.dask.servers import start_fork_server

        start_fork_server()


def _client(
    options: Options,
    run: RunDir,
    address: str,
    security: Any,
    expected: int,
    *,
    runner: Any = None,
) -> int:
    """Run the app against the scheduler at ``address``; return its exit code."""
    import dask

    from jobstrap.bootstrap.link import SchedulerLink
    from jobstrap.net.security import tls_env

    env = {
        "DASK_SCHEDULER_ADDRESS": address,
        "JOBSTRAP_RUN_DIR": str(run.path),
        drain.DRAIN_FILE_ENV: str(run.drain_file),
    }
    if options.protocol == "tls":
        env.update(tls_env(run))
    os.environ.update(env)
    dask.config.refresh()  # so a plain Client() in the app sees the address and TLS
    # A drain file left by an earlier launch of this run (a requeued job) is stale.
    with contextlib.suppress(FileNotFoundError):
        run.drain_file.unlink()

    link = SchedulerLink(address, security, death_timeout=options.death_timeout)
    # Sharing the scheduler's process, the app cannot outlive it: no heartbeat needed.
    link.start(heartbeat=runner is None)
    try:
        # A graph needs one worker to start: the scheduler queues its root tasks
        # and hands them to the others as they join, so waiting for all of them
        # only delays the start. An app may count its workers: it waits for all.
        wanted = expected
        if options.start_after_workers is not None:
            wanted = min(expected, options.start_after_workers)
        no_workers = (
            f"no worker joined the scheduler at {address} within "
            f"{options.death_timeout:.0f} s; if the workers' messages show connection "
            "errors, choose an interface both sides share (--interface / "
            "--scheduler-interface)"
        )
        if wanted == 0 and expected > 0:
            # The app starts while the workers do (a graph waits in the scheduler for
            # them); the link stops it, with the same message, if none joins in time.
            link.expect_a_worker(options.death_timeout, no_workers)
            code = _run_app_with_signals(options, link)
        else:
            count = link.wait_for_workers(wanted, timeout=options.death_timeout)
            if count == 0 and expected > 0:
                say(no_workers)
                code = 1
            else:
                if count < wanted:
                    logger.warning(
                        "%d of %d workers joined; starting the app anyway", count, wanted
                    )
                code = _run_app_with_signals(options, link)
        _close_leftover_clients()
        with contextlib.suppress(OSError):
            run.write_exit_code(code)
        if runner is None:
            link.done(code)
        return code
    finally:
        link.stop()


def _run_app_with_signals(options: Options, link: Any) -> int:
    assert options.app is not None
    terms = 0

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal terms
        name = signal.Signals(signum).name
        if signum == signal.SIGTERM:
            terms += 1
            if terms > 1:
                raise SystemExit(128 + signum)
        if drain.request_drain(name):
            logger.info(
                "%s: drain requested; the app has been told (jobstrap.bootstrap.on_drain)", name
            )

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    _install_signal_handlers(on_signal)
    for name in drain.early_signals():
        on_signal(signal.Signals[name], None)
    try:
        code = run_app(options.app, interrupted=link.lost)
    except UserError as error:
        say(str(error))
        code = 2
    finally:
        for signum, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signum, handler)
    if link.lost.is_set():
        return 1
    return code


def _close_leftover_clients() -> None:
    """Close Clients the app left open, before the scheduler goes away under them."""
    from distributed import Client

    instances: Any = Client._instances
    clients: list[Any] = [c for c in list(instances) if c.status not in ("closed", "closing")]
    if not clients:
        return
    silence_for_shutdown()
    for client in clients:
        with contextlib.suppress(Exception):
            client.close(timeout=10)


# ------------------------------------------------------------------------------ workers


def _run_workers_mode(options: Options) -> int:
    from jobstrap.net.network import choose_address

    world = discover_world(use_mpi=False)
    configure_logging(world.rank if world.size > 1 else None)
    try:
        run = _open_run(options)
        _load_dask(forks_workers=options.nanny)
        security = _security(options, run)
        address = options.scheduler_address
        if not address:
            info = _wait_for_info(run, timeout=options.death_timeout, launch=None, not_before=None)
            if info is None or not info.scheduler_address:
                raise UserError(
                    f"bootstrap: no scheduler: {run.info_file} did not appear within "
                    f"{options.death_timeout:.0f} s (or pass --scheduler-address)"
                )
            address = info.scheduler_address
        host = choose_address(options.interface, peer=address)
    except UserError as error:
        say(str(error))
        return 2
    # Names must be unique across the jobs of a cluster: job id (or host) and rank.
    if options.name:
        prefix = f"{options.name}-{world.rank}" if world.size > 1 else options.name
    else:
        prefix = f"{_job_id() or world.hostname}-{world.rank}"
    # A notebook cluster replaces a job whose memory is too small; restarting its
    # worker into the same limit would only repeat until the walltime.
    return _serve_workers(
        options,
        address,
        host,
        security,
        _worker_names(prefix, options.worker_processes),
        max_memory_kills=MEMORY_KILLS_PER_JOB,
    )


# ---------------------------------------------------------------------------- scheduler


def _run_scheduler_mode(options: Options) -> int:
    _load_dask()
    from jobstrap.engines.dask.servers import SchedulerRunner
    from jobstrap.net.network import choose_address

    world = discover_world(use_mpi=False)
    configure_logging()
    try:
        run = _open_run(options)
        security = _security(options, run)
        host = choose_address(options.effective_scheduler_interface)
        runner = SchedulerRunner(
            host=host,
            protocol=options.protocol,
            security=security,
            dashboard=options.dashboard,
            dashboard_port=options.dashboard_port,
            idle_timeout=options.idle_timeout,
        )
        runner.start()
        _write_scheduler_files(run, runner, world)
    except UserError as error:
        say(str(error))
        return 2
    except OSError as error:
        say(f"the scheduler could not start: {error}")
        return 2
    logger.info("scheduler at %s", runner.address)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        runner.finish(0, f"{signal.Signals(signum).name}: stopping the scheduler")

    def on_warning(signum: int, _frame: FrameType | None) -> None:
        # A walltime warning (--signal=USR1@...): the scheduler keeps serving until
        # SIGTERM; its workers drain on their own signal.
        logger.info(
            "%s: the batch system warns of the end of this job", signal.Signals(signum).name
        )

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGUSR1, on_warning)
    for name in drain.early_signals():
        (on_signal if name == "SIGTERM" else on_warning)(signal.Signals[name], None)
    return runner.wait()
