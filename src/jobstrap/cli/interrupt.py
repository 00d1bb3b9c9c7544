"""What an interrupt does to a command that follows a job (``run``, ``submit --wait``).

One rule for both commands. Each has a default that says what it is for:

* ``jobstrap run`` runs the app in the foreground, like ``srun`` or ``mpirun``: an
  interrupt **cancels** the job;
* ``jobstrap submit --wait`` follows a job handed to the batch system: an interrupt
  **detaches**, the job keeps running, and the line printed says how to reattach or
  cancel it.

Ctrl-C from a person (stdin is a terminal) first asks, with that default
(``cancel run R (job N)? [Y/n]`` or ``[y/N]``); a second Ctrl-C at the question
cancels. SIGTERM (``timeout``, a CI runner, a batch script) and a SIGINT without a
terminal never ask: the default happens at once. Either way one line says what
happened, and the exit code is 128 + the signal (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import click

__all__ = ["Interrupted", "handle_interrupt", "interrupts"]


class Interrupted(BaseException):
    """SIGTERM, raised in the main thread like ``KeyboardInterrupt`` is for SIGINT.

    A BaseException, so that no ``except Exception`` on the way swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextmanager
def interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Interrupted` (SIGINT: KeyboardInterrupt)."""
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _uninterruptible() -> Iterator[None]:
    # The cancel (or the message) must finish: a third Ctrl-C must not leave a job behind.
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _ask(question: str, default: bool) -> tuple[bool, int]:
    """Ask ``question``; (the answer, the signal that ends the command)."""
    choices = "[Y/n]" if default else "[y/N]"
    try:  # a second Ctrl-C may come at any point once the question is on its way
        click.echo(f"\n{question} {choices} (Ctrl-C again: cancel) ", nl=False, err=True)
        answer = sys.stdin.readline()
    except KeyboardInterrupt:
        click.echo("", err=True)
        return True, signal.SIGINT
    except Interrupted as error:
        click.echo("", err=True)
        return default, error.signum
    if not sys.stderr.isatty():
        click.echo("", err=True)  # a terminal echoed the answer's newline; a file did not
    words = answer.strip().lower()
    if not words:  # Enter, or end of input
        return default, signal.SIGINT
    return words in ("y", "yes"), signal.SIGINT


def handle_interrupt(
    error: BaseException,
    run_id: str,
    job_id: str,
    cancel: Callable[[], object],
    *,
    cancel_by_default: bool,
) -> int:
    """Cancel or detach after ``error`` (KeyboardInterrupt or Interrupted); the exit code.

    Parameters
    ----------
    error
        What interrupted the follower.
    run_id, job_id
        The run and its (first) job, for the line printed.
    cancel
        Cancels the run's jobs; False means they had already ended.
    cancel_by_default
        What happens without a person to ask (``run``: True; ``submit --wait``: False).

    Returns
    -------
    int
        128 + the signal number.
    """
    signum = error.signum if isinstance(error, Interrupted) else int(signal.SIGINT)
    cancelling = cancel_by_default
    if signum == signal.SIGINT and sys.stdin is not None and sys.stdin.isatty():
        cancelling, signum = _ask(f"cancel run {run_id} (job {job_id})?", cancel_by_default)
    name = signal.Signals(signum).name
    with _uninterruptible():
        if cancelling:
            if cancel() is False:  # it ended while we were being interrupted
                click.echo(f"{name}: run {run_id} (job {job_id}) had already ended", err=True)
            else:
                click.echo(f"{name}: cancelled run {run_id} (job {job_id})", err=True)
        else:
            click.echo(
                f"{name}: detached; run {run_id} (job {job_id}) keeps running: "
                f"jobstrap logs -f {run_id} | jobstrap status {run_id} | "
                f"jobstrap cancel {run_id}",
                err=True,
            )
    return 128 + signum
