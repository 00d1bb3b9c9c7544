"""The client-rank program of a graph job: compute what ``batch.submit`` shipped.

Inside a batch job the bootstrap runs it on the client rank, with the scheduler's
address and the run's TLS material in the environment::

    python -m jobstrap.engines.dask.graph_runner [--threads N] RUN_DIR
    python -m jobstrap.engines.dask.graph_runner --app RUN_DIR -- app.py [args] | -m module [args]

The first form loads ``input.pkl``, computes it on the allocation's workers and writes
``result.pkl`` (or ``error.pkl`` with the remote traceback) atomically; the second runs
a user's script unchanged (``jobstrap run``) and only reports progress. Both keep
``progress.json`` up to date as tasks finish, from a small scheduler plugin that counts
task transitions.

With ``--threads N`` (the bootstrap's ``in-process`` mode: a one-node job that asks
for no distributed workers, see :mod:`jobstrap.batch.inprocess`) the first form
computes in this process with Dask's threaded scheduler on N threads instead, and
counts tasks with a Dask callback: no scheduler, no client, nothing listening. The
rest (phases, ``progress.json``, the framed result or error) is the same code.

Run files (``input.pkl``, ``result.pkl``, ``error.pkl``) are *framed*
(:mod:`jobstrap.store.runfiles`, shared with the Ray engine's runner; the names are
re-exported here). Importing this module does not import ``distributed``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jobstrap.store.rundir import RunDir, atomic_write_json
from jobstrap.store.runfiles import (
    MAGIC,
    CorruptRunFileError,
    error_payload,
    frame,
    load_work,
    read_framed,
    read_payload,
    unframe,
    versions,
    write_framed,
)

__all__ = [
    "MAGIC",
    "CorruptRunFileError",
    "frame",
    "main",
    "read_framed",
    "read_payload",
    "unframe",
    "versions",
    "write_framed",
]

#: Seconds between two ``progress.json`` updates while tasks run.
PROGRESS_INTERVAL = 0.5
_PLUGIN_NAME = "jobstrap-progress"
_HANDLER = "jobstrap_progress"


# ---------------------------------------------------------------- scheduler-side counter


def _counter_class() -> type:
    from distributed.diagnostics.plugin import SchedulerPlugin

    class TaskCounter(SchedulerPlugin):
        """Counts tasks seen, finished and failed, once each, on the scheduler."""

        name = _PLUGIN_NAME

        def __init__(self) -> None:
            self.seen: set[Any] = set()
            self.done: set[Any] = set()
            self.erred: set[Any] = set()
            self.started = time.time()

        def transition(self, key: Any, start: str, finish: str, *args: Any, **kw: Any) -> None:
            if finish in ("waiting", "queued", "no-worker", "processing"):
                self.seen.add(key)
            elif finish == "memory" and start == "processing":
                self.done.add(key)
            elif finish == "erred":
                self.erred.add(key)

    return TaskCounter


def _install_counter(dask_scheduler: Any) -> None:
    # Runs on the scheduler (run_on_scheduler pickles this function by reference, and
    # the class is created there), so nothing has to be shipped but a name.
    if _PLUGIN_NAME not in dask_scheduler.plugins:
        dask_scheduler.add_plugin(_counter_class()(), name=_PLUGIN_NAME)

    # A handler of its own, so polling it twice a second does not log a line each
    # time (run_on_scheduler logs every call at INFO).
    def handler() -> dict[str, Any]:
        return _read_counter(dask_scheduler)

    dask_scheduler.handlers[_HANDLER] = handler


def _read_counter(dask_scheduler: Any) -> dict[str, Any]:
    plugin = dask_scheduler.plugins.get(_PLUGIN_NAME)
    workers = dask_scheduler.workers.values()
    snapshot = {
        "workers": len(workers),
        "threads": sum(int(getattr(ws, "nthreads", 0)) for ws in workers),
        "total": 0,
        "done": 0,
        "erred": 0,
    }
    if plugin is not None:
        snapshot["total"] = len(plugin.seen | plugin.done)
        snapshot["done"] = len(plugin.done)
        snapshot["erred"] = len(plugin.erred)
    return snapshot


class _SchedulerCounts:
    """Task counts from the allocation's scheduler (its plugin, installed here)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        client.run_on_scheduler(_install_counter)

    def __call__(self) -> dict[str, Any]:
        return dict(self.client.sync(getattr(self.client.scheduler, _HANDLER)))


class _ProgressWriter:
    """Keeps ``progress.json`` current from a background thread."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.started = time.time()
        self.phase = "starting"
        self.source: Callable[[], dict[str, Any]] | None = None
        self.counts: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def set_phase(self, phase: str, **extra: Any) -> None:
        with self._lock:
            self.phase = phase
            self.counts.update(extra)
        self.write()

    def write(self) -> None:
        with self._lock:
            data = {
                "phase": self.phase,
                "started": self.started,
                "updated": time.time(),
                "host": socket.gethostname(),
                **self.counts,
            }
        with contextlib.suppress(OSError):  # progress is best effort, never fatal
            atomic_write_json(self.run.progress_file, data)

    def start(self, source: Callable[[], dict[str, Any]]) -> None:
        """Poll ``source`` (task counts) until :meth:`stop`."""
        self.source = source
        self._thread = threading.Thread(target=self._loop, name="jobstrap-progress", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        last: dict[str, Any] = {}
        while not self._stop.wait(PROGRESS_INTERVAL):
            self.poll_once(last)

    def poll_once(self, last: dict[str, Any] | None = None) -> None:
        if self.source is None:
            return
        try:
            counts = self.source()
        except Exception:  # the scheduler is closing; the final phase says the rest
            return
        with self._lock:
            self.counts.update(counts)
        if last is None or counts != last:
            self.write()
            if last is not None:
                last.clear()
                last.update(counts)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.poll_once()


# ---------------------------------------------------------------------------- running


def _connect(run: RunDir) -> Any:
    """A client of this allocation's scheduler (environment first, then ``info.json``)."""
    import dask
    from distributed import Client

    if dask.config.get("scheduler-address", None):
        return Client(set_as_default=False)  # type: ignore[no-untyped-call]
    from jobstrap.net.security import load_security

    deadline = time.monotonic() + 300
    while True:
        try:
            info = run.read_info()
            break
        except (FileNotFoundError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    security = load_security(run, require=False)
    return Client(  # type: ignore[no-untyped-call]
        info.scheduler_address, security=security, set_as_default=False
    )


def _compute(client: Any, work: Mapping[str, Any]) -> Any:
    if work["kind"] == "function":
        future = client.submit(
            work["function"], *work.get("args", ()), pure=False, **work.get("kwargs", {})
        )
        return future.result()
    from dask.base import unpack_collections

    collections, repack = unpack_collections(work["obj"], traverse=True)  # type: ignore[no-untyped-call]
    futures = client.compute(list(collections))
    results = client.gather(futures)
    return repack(results)[0]


def _interrupted(error: BaseException) -> bool:
    """Whether ``error`` comes from the job ending rather than from the graph.

    The batch system asked the job to wind down (SIGTERM on ``scancel``, the
    walltime's warning), or the client lost its scheduler (the scheduler rank
    stopped the run: its workers were gone). Either way distributed raises a
    ``FutureCancelledError`` that says nothing about why.
    """
    from jobstrap.bootstrap import drain

    return drain.draining() or getattr(error, "reason", None) == "scheduler-connection-lost"


def run_graph(run_dir: str | os.PathLike[str], *, threads: int | None = None) -> int:
    """Compute ``input.pkl`` of ``run_dir``; write ``result.pkl`` or ``error.pkl``.

    Parameters
    ----------
    run_dir
        The run directory.
    threads
        Compute in this process with that many of Dask's threads (the in-process
        path) instead of on the allocation's scheduler.

    Returns
    -------
    int
        0 when the result was written, 1 when the error was.
    """
    run = RunDir.open(run_dir)
    progress = _ProgressWriter(run)
    progress.set_phase("loading")
    client = None
    try:
        work = load_work(run)
        if threads is None:
            progress.set_phase("connecting")
            client = _connect(run)
            progress.start(_SchedulerCounts(client))
            progress.set_phase("computing")
            value = _compute(client, work)
        else:
            from jobstrap.engines.dask.threads import compute_here, thread_counter

            counter = thread_counter(threads)
            progress.start(counter)
            progress.set_phase("computing")
            value = compute_here(work, threads, counter)
        progress.set_phase("saving")
        import cloudpickle

        payload = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        # The final counts and phase go on disk before the result appears: whoever sees
        # the result must also see a finished progress (one scheduler round trip more).
        progress.stop()
        progress.set_phase("done")
        write_framed(run.result_file, payload)
    except Exception as error:
        # Only the graph's own failures become error.pkl. An interrupt (the batch system
        # ending the job, the scheduler gone) leaves no file, so the submitting side
        # reports the job's real end (TIMEOUT, CANCELLED, ...) rather than a side effect.
        progress.stop()
        progress.set_phase("failed", error=f"{type(error).__name__}: {error}"[:500])
        interrupted = _interrupted(error)
        if not interrupted:
            write_framed(run.error_file, error_payload(error))
        what = "was interrupted" if interrupted else "failed"
        print(f"jobstrap: the graph {what}: {type(error).__name__}: {error}", file=sys.stderr)
        traceback.print_exception(type(error), error, error.__traceback__)
        return 1
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.close(timeout=10)
    return 0


def run_app(run_dir: str | os.PathLike[str], app: Sequence[str]) -> int:
    """Run a user's script or module as ``__main__`` while reporting progress.

    Returns
    -------
    int
        The app's exit code (``sys.exit`` value; 1 for an uncaught exception).
    """
    import runpy

    if not app:
        raise SystemExit("graph_runner --app needs an app: app.py [args] | -m module [args]")
    run = RunDir.open(run_dir)
    progress = _ProgressWriter(run)
    progress.set_phase("connecting")
    client = None
    with contextlib.suppress(Exception):  # progress is a courtesy; the app runs regardless
        client = _connect(run)
        progress.start(_SchedulerCounts(client))
    progress.set_phase("running")
    code = 0
    saved_argv = sys.argv
    try:
        if app[0] == "-m":
            if len(app) < 2:
                raise SystemExit("-m needs a module name")
            sys.argv = [app[1], *app[2:]]
            runpy.run_module(app[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(app)
            sys.path.insert(0, os.path.dirname(os.path.abspath(app[0])))
            runpy.run_path(app[0], run_name="__main__")
    except SystemExit as exit_:
        code = _exit_code(exit_.code)
    except BaseException:
        # One write: the job's stderr is shared by every rank, and a traceback printed
        # line by line gets other ranks' log lines spliced into it.
        sys.stderr.write(traceback.format_exc())
        sys.stderr.flush()
        code = 1
    finally:
        sys.argv = saved_argv
        progress.stop()
        if client is not None:
            with contextlib.suppress(Exception):
                client.close(timeout=10)
    progress.set_phase("done" if code == 0 else "failed", exit_code=code)
    return code


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message") prints it and exits 1
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``RUN_DIR`` or ``--app RUN_DIR -- app.py [args]``."""
    words = list(sys.argv[1:] if argv is None else argv)
    app: list[str] = []
    if "--" in words:
        split = words.index("--")
        words, app = words[:split], words[split + 1 :]
    parser = argparse.ArgumentParser(prog="python -m jobstrap.engines.dask.graph_runner")
    parser.add_argument("run_dir")
    parser.add_argument("--app", action="store_true", help="run the app after -- instead")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="compute in this process with N of Dask's threads (no scheduler)",
    )  # fmt: skip
    args = parser.parse_args(words)
    if args.app:
        return run_app(args.run_dir, app)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, not {args.threads}")
    return run_graph(args.run_dir, threads=args.threads)


if __name__ == "__main__":
    sys.exit(main())
