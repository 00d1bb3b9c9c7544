"""The head's rank: start the engine's head, publish it, and end the run in order.

In ``mpi`` mode rank 0 runs the head (and, with ``--client-on-scheduler-rank``,
the app); in ``scheduler`` mode the head runs alone until told to stop or idle.
Both start it the same way (:func:`start_head`); what the batch system's signals
do differs, as each docstring says.
"""

from __future__ import annotations

import signal
from typing import Any

from jobstrap.bootstrap.client import run_client
from jobstrap.bootstrap.engine import Engine, Head
from jobstrap.bootstrap.messages import logger, say
from jobstrap.bootstrap.options import Options
from jobstrap.bootstrap.ranks import World
from jobstrap.bootstrap.rendezvous import publish_error, write_head_files
from jobstrap.bootstrap.roles import Role, expected_workers
from jobstrap.bootstrap.signals import BATCH_SIGNALS, SignalPolicy
from jobstrap.errors import UserError
from jobstrap.store.rundir import RunDir

__all__ = ["scheduler_rank", "serve_head_alone", "start_head"]


def start_head(
    engine: Engine,
    options: Options,
    world: World,
    run: RunDir,
    *,
    single_host: bool = False,
    idle_timeout: float | None = None,
) -> tuple[Head, Any]:
    """Start the head on the scheduler interface and publish it; return it and the security.

    Raises
    ------
    UserError
        TLS material or the interface is missing.
    OSError
        The head could not listen.
    """
    from jobstrap.net.network import choose_address

    security = engine.security(options, run)
    host = choose_address(options.effective_scheduler_interface, allow_loopback=single_host)
    head = engine.start_head(options, host, security, idle_timeout=idle_timeout)
    write_head_files(run, head, world)
    return head, security


def scheduler_rank(
    engine: Engine, options: Options, world: World, run: RunDir, single_host: bool, role: Role
) -> int:
    """Rank 0 in ``mpi`` mode: the head, and the app too with ``SCHEDULER_AND_CLIENT``.

    The first SIGTERM or SIGINT is the app's rank's to act on (the app winds down
    and the run ends in order); a second one ends the run here.
    """
    engine.load()
    head: Head | None = None
    error: str | None = None
    security: Any = None
    try:
        head, security = start_head(engine, options, world, run, single_host=single_host)
    except UserError as exc:
        error = str(exc)
    except OSError as exc:
        error = f"the scheduler could not start: {exc}"
    except Exception as exc:  # a bug must not leave the other ranks waiting for us
        logger.exception("the scheduler could not start")
        error = f"the scheduler could not start: {type(exc).__name__}: {exc}"

    if world.uses_mpi:
        world.bcast({"address": None if error or head is None else head.address, "error": error})
    elif error:
        publish_error(run, world, error)
    if error or head is None:
        say(error or "the scheduler could not start")
        return 2
    logger.info(
        "scheduler at %s%s",
        head.address,
        f", dashboard at {head.dashboard_address}" if head.dashboard_address else "",
    )

    if world.uses_mpi:
        problems = [p for p in world.allgather(None) if p]
        world.release()
        if problems:
            # Each failing rank printed its own reason; stop everything now rather
            # than run with a cluster that is missing pieces.
            head.finish(2, f"{len(problems)} rank(s) could not join (see above); stopping")
            return head.wait()

    expected = expected_workers(
        world.size,
        worker_processes=options.worker_processes,
        client_on_scheduler_rank=options.client_on_scheduler_rank,
    )
    if role is Role.SCHEDULER_AND_CLIENT:
        code = run_client(engine, options, run, head.address, security, expected, head=head)
        head.finish(code)
        head.wait()
        return code

    first_contact = (
        options.death_timeout if world.uses_mpi else max(60.0, 2 * options.death_timeout)
    )
    head.watch_client(death_timeout=options.death_timeout, first_contact_timeout=first_contact)
    running = head

    def told(sig: signal.Signals) -> None:
        logger.info("%s: the app has been told to wind down", sig.name)

    def stop(sig: signal.Signals) -> None:
        running.finish(128 + sig, f"{sig.name} again: stopping the run")

    # Ctrl-C under mpiexec reaches every rank: the app (rank 1) ends with 130 and
    # the run stops in order; here SIGINT only counts like SIGTERM.
    SignalPolicy(
        told, stop, signals=BATCH_SIGNALS, counted=(signal.SIGTERM, signal.SIGINT)
    ).install()
    return head.wait()


def serve_head_alone(engine: Engine, options: Options, world: World) -> int:
    """``scheduler`` mode: the head alone, until SIGTERM/SIGINT or its idle timeout.

    SIGUSR1 (a walltime warning) only gets a line: the head keeps serving until
    SIGTERM, and its workers drain on their own signal.
    """
    from jobstrap.bootstrap.rendezvous import open_run

    try:
        run = open_run(options)
        head, _ = start_head(engine, options, world, run, idle_timeout=options.idle_timeout)
    except UserError as error:
        say(str(error))
        return 2
    except OSError as error:
        say(f"the scheduler could not start: {error}")
        return 2
    logger.info("scheduler at %s", head.address)

    def on_signal(sig: signal.Signals) -> None:
        if sig == signal.SIGUSR1:
            logger.info("%s: the batch system warns of the end of this job", sig.name)
        else:
            head.finish(0, f"{sig.name}: stopping the scheduler")

    SignalPolicy(on_signal, signals=BATCH_SIGNALS, counted=()).install()
    return head.wait()
