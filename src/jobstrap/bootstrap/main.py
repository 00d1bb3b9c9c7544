"""``python -m jobstrap.bootstrap``: what runs on every rank of a job.

Modes:

``mpi``
    One allocation, one cluster: rank 0 the head (Dask: scheduler), rank 1 the app
    (client), every other rank workers, all over the chosen network. The job ends
    when the app ends, with the app's exit code on the client and head ranks.
``workers``
    Every rank runs workers for a head found in ``info.json`` or given with
    ``--scheduler-address`` (notebook clusters' worker jobs).
``scheduler``
    The head alone, until told to stop or idle.
``in-process``
    The app alone in the job's one process: no head, no workers, no engine started,
    nothing listening (one-node graph jobs computed with Dask's threads). Drain
    signals, the drain file and the exit code are the same as in ``mpi`` mode.

The engine (``--engine``, Dask by default) is found by name
(:func:`jobstrap.bootstrap.engine.get_engine`) and imported only once MPI is up.

Exit codes: the app's in ``mpi`` mode; 2 for a usage or setup problem (one line on
stderr says which and how to fix it); 1 when a rank lost its scheduler or its
workers could not join.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from jobstrap.bootstrap import drain
from jobstrap.bootstrap.engine import Engine, get_engine
from jobstrap.bootstrap.gpus import GPU_RESOURCE, GpuWorker, gpu_allocation, gpu_workers
from jobstrap.bootstrap.messages import configure_logging, logger, say
from jobstrap.bootstrap.options import Options, parse_args
from jobstrap.bootstrap.placement import (
    Placement,
    gather_peers,
    placement,
    single_host,
    stand_by,
    widen_binding,
)
from jobstrap.bootstrap.ranks import World, discover_world, in_slurm_batch_script
from jobstrap.bootstrap.rendezvous import (
    job_id,
    open_run,
    process_start,
    publish_error,
    wait_for_info,
)
from jobstrap.bootstrap.roles import (
    Role,
    check_world_size,
    expected_workers,
    node_groups,
    role_of,
    worker_names,
)
from jobstrap.errors import UserError
from jobstrap.store.rundir import RunDir

__all__ = ["main"]

#: Worker deaths by the job's memory limit that end a worker job (workers mode).
MEMORY_KILLS_PER_JOB = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bootstrap; return the process exit code."""
    drain.catch_early_signals()
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
        engine = get_engine(options.engine)
    except UserError as error:
        configure_logging()
        say(str(error))
        return 2
    if options.mode == "mpi":
        return _run_mpi(engine, options)
    if options.mode == "workers":
        return _run_workers_mode(engine, options)
    if options.mode == "in-process":
        return _run_in_process(options)
    return _run_scheduler_mode(engine, options)


def _check_tls(engine: Engine, options: Options, run: RunDir) -> None:
    """Fail like :meth:`Engine.security` would, without importing the engine.

    A rank that stands by for its node's worker rank never needs the engine:
    keeping it from importing Dask is the point of the ``node`` layout.
    """
    from jobstrap.net.security import tls_files

    if options.protocol == "tls" and not tls_files(run).exist():
        engine.security(options, run)  # raises the one message for missing TLS material


# --------------------------------------------------------------------------------- mpi


def _run_mpi(engine: Engine, options: Options) -> int:
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
        run = open_run(options)
        _check_tls(engine, options, run)
        _gpu_workers(options)  # every rank: a node without GPUs stops the launch
    except UserError as exc:
        error = str(exc)
    if _any_rank_failed(world, error, run):
        return 2
    assert run is not None

    peers = gather_peers(world)
    on_one_host = single_host(world, peers)
    role = role_of(world.rank, client_on_scheduler_rank=options.client_on_scheduler_rank)
    logger.debug("rank %d of %d (%s): %s", world.rank, world.size, world.source, role.value)
    if role in (Role.SCHEDULER, Role.SCHEDULER_AND_CLIENT):
        from jobstrap.bootstrap.head import scheduler_rank

        return scheduler_rank(engine, options, world, run, on_one_host, role)
    where = placement(options, world, peers) if role is Role.WORKER else None
    expected: int | None = None
    if options.gpu_workers and len(peers) == world.size:
        # One worker per GPU on each node with worker ranks, every node given as
        # many GPUs as this one (a job asks for GPUs per node).
        hosts = node_groups(
            [p.host for p in peers], client_on_scheduler_rank=options.client_on_scheduler_rank
        )
        expected = len(hosts) * len(_gpu_workers(options))
    return _other_rank(engine, options, world, run, on_one_host, role, where, expected)


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
        publish_error(run, world, error)  # ranks coordinated by files stop waiting
    return True


def _other_rank(
    engine: Engine,
    options: Options,
    world: World,
    run: RunDir,
    on_one_host: bool,
    role: Role,
    where: Placement | None,
    expected: int | None = None,
) -> int:
    """A rank other than the head's: the app's, or a worker rank.

    ``expected``: the workers the app waits for, when the ranks do not say (GPUs).
    """
    from jobstrap.errors import NetworkError
    from jobstrap.net.network import choose_address

    leader = where.leader if where is not None else None  # set: stand by for it
    # Load the TLS material (importing Dask) while rank 0 starts the scheduler rather
    # than after: it is most of this rank's start-up. Standing ranks never need it.
    security: Any = None
    problem: str | None = None
    if leader is None:
        try:
            engine.load(forks_workers=role is Role.WORKER and options.nanny)
            security = engine.security(options, run)
        except UserError as exc:  # told to every rank below, not left in a collective
            problem = str(exc)
            say(problem)
    if world.uses_mpi:
        published = world.bcast(None)
        if published["error"]:
            return 2  # rank 0 said why
        address = str(published["address"])
    else:
        info = wait_for_info(
            run,
            timeout=max(60.0, 2 * options.death_timeout),
            launch=world.launch,
            not_before=process_start() - 60,
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
            host = choose_address(options.interface, peer=address, allow_loopback=on_one_host)
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
        return stand_by(leader)
    if role is Role.CLIENT:
        from jobstrap.bootstrap.client import run_client

        if expected is None:
            expected = expected_workers(
                world.size,
                worker_processes=options.worker_processes,
                client_on_scheduler_rank=options.client_on_scheduler_rank,
            )
        return run_client(engine, options, run, address, security, expected)
    assert where is not None
    widen_binding(where)
    gpus = _gpu_workers(options)
    per_rank = len(gpus) if gpus else options.worker_processes
    names = [
        name
        for rank in where.ranks
        for name in worker_names(f"{options.name}-{rank}" if options.name else str(rank), per_rank)
    ]
    return engine.serve_workers(options, address, host, security, names, **_gpu_kwargs(gpus))


# --------------------------------------------------------------------------- in-process


def _run_in_process(options: Options) -> int:
    """``in-process`` mode: the app alone in this process, no engine started."""
    world = discover_world(use_mpi=False)
    configure_logging()
    try:
        if world.size > 1:
            raise UserError(
                f"bootstrap: in-process mode runs one process, but {world.size} were "
                f"launched ({world.source}); launch one task"
            )
        if options.app is None:
            raise UserError("bootstrap: in-process mode needs an app: ... -- app.py | -m module")
        run = open_run(options)
    except UserError as error:
        say(str(error))
        return 2
    from jobstrap.bootstrap.client import run_alone

    return run_alone(options, run)


# ------------------------------------------------------------------------------ workers


def _run_workers_mode(engine: Engine, options: Options) -> int:
    """``workers`` mode: every rank runs workers for a published or given head."""
    from jobstrap.net.network import choose_address

    world = discover_world(use_mpi=False)
    configure_logging(world.rank if world.size > 1 else None)
    try:
        run = open_run(options)
        engine.load(forks_workers=options.nanny)
        security = engine.security(options, run)
        address = options.scheduler_address
        if not address:
            info = wait_for_info(run, timeout=options.death_timeout, launch=None, not_before=None)
            if info is None or not info.scheduler_address:
                raise UserError(
                    f"bootstrap: no scheduler: {run.info_file} did not appear within "
                    f"{options.death_timeout:.0f} s (or pass --scheduler-address)"
                )
            address = info.scheduler_address
        host = choose_address(options.interface, peer=address)
        gpus = _gpu_workers(options)
    except UserError as error:
        say(str(error))
        return 2
    # Names must be unique across the jobs of a cluster: job id (or host) and rank.
    if options.name:
        prefix = f"{options.name}-{world.rank}" if world.size > 1 else options.name
    else:
        prefix = f"{job_id() or world.hostname}-{world.rank}"
    # A notebook cluster replaces a job whose memory is too small; restarting its
    # worker into the same limit would only repeat until the walltime.
    return engine.serve_workers(
        options,
        address,
        host,
        security,
        worker_names(prefix, len(gpus) if gpus else options.worker_processes),
        max_memory_kills=MEMORY_KILLS_PER_JOB,
        **_gpu_kwargs(gpus),
    )


# ------------------------------------------------------------------------------- GPUs


def _gpu_workers(options: Options) -> list[GpuWorker]:
    """This task's GPU workers (none without ``--gpu-workers``); UserError if it has no GPU."""
    if not options.gpu_workers:
        return []
    workers = gpu_workers(gpu_allocation(os.environ))
    if not workers:
        raise UserError(
            "bootstrap: one worker per GPU was asked for, but this task was given no GPU "
            "(CUDA_VISIBLE_DEVICES, SLURM_STEP_GPUS and SLURM_JOB_GPUS name none); "
            "ask the batch system for GPUs (profile: gpus)"
        )
    if len(workers) > 1 and not options.nanny:
        raise UserError(
            "bootstrap: one worker per GPU needs nannies (each worker its own process "
            "and CUDA_VISIBLE_DEVICES); drop --no-nanny"
        )
    return workers


def _gpu_kwargs(workers: Sequence[GpuWorker]) -> dict[str, Any]:
    """The engine's per-worker environments and resources for ``workers``."""
    if not workers:
        return {}
    return {
        "environments": [w.environment() for w in workers],
        "resources": {GPU_RESOURCE: 1},
    }


# ---------------------------------------------------------------------------- scheduler


def _run_scheduler_mode(engine: Engine, options: Options) -> int:
    """``scheduler`` mode: the head alone (see :func:`serve_head_alone`)."""
    from jobstrap.bootstrap.head import serve_head_alone

    engine.load()
    world = discover_world(use_mpi=False)
    configure_logging()
    return serve_head_alone(engine, options, world)
