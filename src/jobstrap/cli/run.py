"""``jobstrap run app.py`` (submit, follow, exit with the app's code) and ``jobstrap result``."""

from __future__ import annotations

import json
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import click

from jobstrap.batch.client import submit_app
from jobstrap.batch.future import JobFuture
from jobstrap.batch.progress import ProgressDisplay
from jobstrap.batch.remote import RemoteError
from jobstrap.cli.complete import file_names
from jobstrap.cli.failure import explain_failure
from jobstrap.cli.interrupt import Interrupted, handle_interrupt, interrupts
from jobstrap.cli.options import profile_options, resolve
from jobstrap.errors import JobFailedError, UserError
from jobstrap.states import JobState
from jobstrap.store.rundir import atomic_write_bytes

#: Seconds between looks at the job's output and progress while following it.
_FOLLOW_INTERVAL = 0.25


class _Follower:
    """Copies new bytes of the job's stdout to ours as they appear."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0

    def read_new(self) -> bytes:
        """The new complete lines, so a line is never split by the progress display."""
        return self._read(whole_lines=True)

    def read_rest(self) -> bytes:
        """Everything not yet copied, a last unfinished line included."""
        return self._read(whole_lines=False)

    def _read(self, *, whole_lines: bool) -> bytes:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except OSError:
            return b""
        end = data.rfind(b"\n") + 1 if whole_lines else len(data)
        self.offset += end
        return data[:end]


def _follow(future: JobFuture, quiet: bool, python: str) -> int:
    """Stream state, progress and the app's stdout until the job ends; return the exit code.

    A failed app or job ends with its reason (traceback, explanation, log path); an
    interrupt cancels the job (see :mod:`jobstrap.cli.interrupt`).
    """
    display = ProgressDisplay(future.run_id)
    out_path, err_path = future.log_files()
    follower = _Follower(out_path)

    def emit(data: bytes) -> None:
        if data and not quiet:
            display.clear()
            sys.stdout.buffer.write(data)
            sys.stdout.flush()

    with interrupts():
        try:
            while True:
                emit(follower.read_new())
                future.show_progress(display)
                try:
                    code = int(future.result(timeout=_FOLLOW_INTERVAL))
                except TimeoutError:
                    continue
                state = future.state
                break
        except JobFailedError as error:
            code, state = 1, JobState.__members__.get(error.state, JobState.UNKNOWN)
        except (KeyboardInterrupt, Interrupted) as error:
            # `run` means "run it now": an interrupt stops the job (use `jobstrap
            # submit` for jobs that outlive the terminal).
            display.close()
            return handle_interrupt(
                error, future.run_id, future.job_id, future.cancel, cancel_by_default=True
            )
    emit(follower.read_rest())
    display.close()
    if code != 0 or state is not JobState.COMPLETED:
        explain_failure(future.run_id, future.job_id, err_path, state, code, python)
    return code


# Everything after APP is the app's (see `jobstrap submit`); an unknown option before
# APP is a usage error rather than being taken for the app.
@click.command(context_settings={"allow_interspersed_args": False})
@profile_options
@click.option(
    "--module",
    "-m",
    "module",
    is_flag=True,
    help="APP is a module name (python -m APP) rather than a file.",
)
@click.option("--quiet", "-q", is_flag=True, help="Do not copy the app's stdout here.")
@click.argument("app", shell_complete=file_names)  # a file, or a module name with -m
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(app: str, args: tuple[str, ...], module: bool, quiet: bool, **options: Any) -> None:
    """Run APP (a Python file, or a module with -m) with ARGS as one batch job and wait.

    The job is a whole Dask cluster: scheduler, the app (where ``distributed.Client()``
    connects to it) and workers. State, task progress and the app's output are shown as
    the job runs; the exit code is the app's, and a failure ends with the app's
    exception and the log path. Ctrl-C asks whether to cancel (in a terminal); SIGTERM,
    or SIGINT without a terminal, cancels the job.

    With the default profile (``system: local``) the job runs on this machine: no
    batch system needed.
    """
    profile_name = options.get("profile_name")
    profile = resolve(**options)
    words = ["-m", app, *args] if module else [app, *args]
    # The record keeps the name the user chose, for `jobstrap status`.
    future = submit_app(
        words, profile=profile, profile_name=profile_name if isinstance(profile_name, str) else None
    )
    out, err = future.log_files()
    click.echo(f"run {future.run_id}: job {future.job_id} on {future.system}", err=True)
    click.echo(f"logs {out} {err}", err=True)
    sys.exit(_follow(future, quiet, profile.python))


def _save(value: Any, path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        import numpy

        with open(path, "wb") as handle:
            numpy.save(handle, numpy.asarray(value), allow_pickle=False)
        os.chmod(path, 0o600)
    elif suffix == ".json":
        try:
            text = json.dumps(value, indent=2, default=_plain)
        except TypeError as error:
            raise UserError(
                f"--output {path}: the result is not JSON ({error}); use .pkl"
            ) from None
        atomic_write_bytes(path, (text + "\n").encode("utf-8"))
    else:
        atomic_write_bytes(path, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def _plain(value: Any) -> Any:
    # NumPy scalars and arrays become plain numbers and lists.
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False),
    help="Save instead of printing: .npy (NumPy), .json, anything else pickle.",
)
@click.option(
    "--wait/--no-wait",
    default=False,
    help="Wait for a run that has not finished (default: fail at once).",
)
@click.option("--timeout", type=float, default=None, help="Seconds to wait with --wait.")
def result(run_id: str, output: str | None, wait: bool, timeout: float | None) -> None:
    """Print (or save) the result of a finished graph run RUN (a unique prefix is enough).

    A run that failed prints its remote traceback and exits 1; an app run prints its
    exit code.
    """
    future = JobFuture.attach(run_id)
    started = time.monotonic()
    if not wait and not future.done():
        # One fresh look at the batch system before saying "not yet".
        future.refresh()
        if not future.done():
            raise UserError(
                f"run {future.run_id} has not finished ({future.state}); pass --wait to wait for it"
            )
    remaining = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
    try:
        value = future.result(timeout=remaining)
    except (JobFailedError, RemoteError) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    except TimeoutError as error:
        raise UserError(str(error)) from None
    except Exception as error:  # the graph's own exception, rebuilt here
        text = getattr(error, "remote_traceback", "") or f"{type(error).__name__}: {error}"
        click.echo(f"run {future.run_id} failed in the job:\n{text.rstrip()}", err=True)
        sys.exit(1)
    if output:
        _save(value, Path(output))
        click.echo(f"saved {type(value).__name__} to {output}", err=True)
        return
    click.echo(value if isinstance(value, str) else repr(value))


def register(group: click.Group) -> None:
    group.add_command(run)
    group.add_command(result)
