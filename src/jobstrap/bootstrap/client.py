"""The app's rank: point the app at the head, wait for workers, run it, report its code.

The engine says how the app finds the head (:meth:`Engine.tell_app`) and keeps the
rank's line to it (:meth:`Engine.connect`); the rest is the same for every engine:
the run directory and drain file in the environment, when the app starts, what the
batch system's signals do while it runs, and the exit code.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

from jobstrap.bootstrap import drain
from jobstrap.bootstrap.app import run_app
from jobstrap.bootstrap.engine import Engine, Head, Link
from jobstrap.bootstrap.messages import logger, say
from jobstrap.bootstrap.options import Options
from jobstrap.bootstrap.signals import DRAIN_SIGNALS, SignalPolicy
from jobstrap.errors import UserError
from jobstrap.store.rundir import RunDir

__all__ = ["run_alone", "run_client"]


def _prepare(run: RunDir) -> None:
    """The app's environment: its run directory and drain file; no stale drain file."""
    os.environ.update(
        {"JOBSTRAP_RUN_DIR": str(run.path), drain.DRAIN_FILE_ENV: str(run.drain_file)}
    )
    # A drain file left by an earlier launch of this run (a requeued job) is stale.
    with contextlib.suppress(FileNotFoundError):
        run.drain_file.unlink()


def run_alone(options: Options, run: RunDir) -> int:
    """Run the app in this process with no head and no workers; return its exit code.

    The same app environment, drain signals and exit-code file as :func:`run_client`,
    without an engine: nothing is started, nothing listens.
    """
    say("in-process: the app runs in this process; no scheduler, no workers, no listener")
    _prepare(run)
    code = _run_app_with_signals(options, None)
    with contextlib.suppress(OSError):
        run.write_exit_code(code)
    return code


def run_client(
    engine: Engine,
    options: Options,
    run: RunDir,
    address: str,
    security: Any,
    expected: int,
    *,
    head: Head | None = None,
) -> int:
    """Run the app against the head at ``address``; return its exit code.

    ``head``: the head runs in this process (``--client-on-scheduler-rank``).
    """
    _prepare(run)
    engine.tell_app(options, run, address)

    link = engine.connect(address, security, death_timeout=options.death_timeout)
    # Sharing the head's process, the app cannot outlive it: no heartbeat needed.
    link.start(heartbeat=head is None)
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
        engine.close_app_clients()
        with contextlib.suppress(OSError):
            run.write_exit_code(code)
        if head is None:
            link.done(code)
        return code
    finally:
        link.stop()


def _run_app_with_signals(options: Options, link: Link | None) -> int:
    """Run the app; SIGTERM/SIGUSR1 tell it to drain, a second SIGTERM ends it now.

    SIGINT stays Python's: the app gets its ``KeyboardInterrupt`` (exit code 130).
    """
    assert options.app is not None

    def tell_the_app(sig: signal.Signals) -> None:
        if drain.request_drain(sig.name):
            logger.info(
                "%s: drain requested; the app has been told (jobstrap.bootstrap.on_drain)",
                sig.name,
            )

    def end_now(sig: signal.Signals) -> None:
        raise SystemExit(128 + sig)

    policy = SignalPolicy(tell_the_app, end_now, signals=DRAIN_SIGNALS, counted=(signal.SIGTERM,))
    policy.install()
    lost = link.lost if link is not None else None  # alone, no head to lose
    try:
        code = run_app(options.app, interrupted=lost)
    except UserError as error:
        say(str(error))
        code = 2
    finally:
        policy.restore()
    if lost is not None and lost.is_set():
        return 1
    return code
