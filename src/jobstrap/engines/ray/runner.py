"""What the head rank of a Ray function job or Ray cluster job runs as its app.

The bootstrap runs it in the head rank's process (``--client-on-scheduler-rank``),
once every Ray node has joined, with ``RAY_ADDRESS`` and the run's token and TLS
settings in the environment (:meth:`jobstrap.engines.ray.engine.RayEngine.tell_app`)::

    python -m jobstrap.engines.ray.runner RUN_DIR            # jobstrap.submit(fn, engine="ray")
    python -m jobstrap.engines.ray.runner --serve RUN_DIR    # jobstrap.RayCluster

The first form loads the function ``input.pkl`` holds and calls it here, as the
cluster's Ray driver: ``ray.init()`` (or Ray's own connection on the first
``.remote()``) joins this run's cluster. Its value goes to ``result.pkl``, its
exception with the traceback to ``error.pkl`` (the framed files of
:mod:`jobstrap.store.runfiles`, as Dask's graph runner writes them), so the
submitting side's :class:`~jobstrap.batch.future.JobFuture` reads either engine's
outcome alike.

The second form says the cluster is ready (``progress.json``, phase ``ready``) and
waits until the batch system tells the job to end (``jobstrap cancel``, the
walltime's warning or its end): the cluster is for drivers elsewhere.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import socket
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

from jobstrap.bootstrap import drain
from jobstrap.store.rundir import RunDir, atomic_write_json
from jobstrap.store.runfiles import error_payload, load_work, write_framed

__all__ = ["PHASE_READY", "main", "run_function", "serve_cluster"]

#: The phase ``progress.json`` says once a Ray cluster job serves drivers.
PHASE_READY = "ready"
_STARTED = time.time()


def _phase(run: RunDir, phase: str, **extra: Any) -> None:
    data = {
        "phase": phase,
        "started": _STARTED,
        "updated": time.time(),
        "host": socket.gethostname(),
        **extra,
    }
    with contextlib.suppress(OSError):  # progress is a courtesy, never the outcome
        atomic_write_json(run.progress_file, data)


def _value(value: Any) -> Any:
    """``value``, with a returned ``ObjectRef`` (or a list of them) fetched while Ray runs."""
    ray = sys.modules.get("ray")
    if ray is None:
        return value
    if isinstance(value, ray.ObjectRef):
        return ray.get(value)
    if isinstance(value, list) and value and all(isinstance(v, ray.ObjectRef) for v in value):
        return ray.get(value)
    return value


def run_function(run_dir: str | os.PathLike[str]) -> int:
    """Call the function ``input.pkl`` holds; write ``result.pkl`` or ``error.pkl``.

    Returns
    -------
    int
        0 when the result was written, 1 when the error was (or the job was told
        to end while the function ran: then nothing is written and the submitting
        side reports how the job ended).
    """
    import cloudpickle

    run = RunDir.open(run_dir)
    _phase(run, "loading")
    try:
        work = load_work(run)
        if work["kind"] != "function":
            raise RuntimeError(
                f"the Ray engine runs functions, not a {work['kind']}: "
                "submit Dask collections with engine='dask'"
            )
        _phase(run, "running")
        value = _value(work["function"](*work.get("args", ()), **work.get("kwargs", {})))
        payload = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        # The final phase is on disk before the result: whoever sees it sees "done".
        _phase(run, "done")
        write_framed(run.result_file, payload)
    except Exception as error:
        # The function's own failure becomes error.pkl; one that comes from the job
        # being ended (SIGTERM, the walltime) leaves none, so the job's end is told.
        interrupted = drain.draining()
        _phase(run, "failed", error=f"{type(error).__name__}: {error}"[:500])
        if not interrupted:
            write_framed(run.error_file, error_payload(error))
        what = "was interrupted" if interrupted else "failed"
        sys.stderr.write(
            f"jobstrap: the function {what}: {type(error).__name__}: {error}\n"
            + "".join(traceback.format_exception(type(error), error, error.__traceback__))
        )
        sys.stderr.flush()
        return 1
    return 0


def serve_cluster(run_dir: str | os.PathLike[str], *, poll: float = 1.0) -> int:
    """Say the cluster is ready, then wait until the job is told to end; return 0.

    Every node has joined when this runs (the bootstrap starts the app then). The
    batch system's SIGTERM (``jobstrap cancel``, ``RayCluster.close()``) or its
    walltime warning ends the wait, and with it the job: the bootstrap then tears
    every node down.
    """
    run = RunDir.open(run_dir)
    _phase(run, PHASE_READY, address=os.environ.get("RAY_ADDRESS", ""))
    while not drain.wait_for_drain(poll):
        if drain.draining():  # the drain file: told in another process of the job
            break
    _phase(run, "done")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``RUN_DIR`` or ``--serve RUN_DIR``."""
    parser = argparse.ArgumentParser(prog="python -m jobstrap.engines.ray.runner")
    parser.add_argument("run_dir")
    parser.add_argument("--serve", action="store_true", help="serve a Ray cluster until told")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.serve:
        return serve_cluster(args.run_dir)
    return run_function(args.run_dir)


if __name__ == "__main__":
    sys.exit(main())
