"""The in-process path of a graph job: Dask's threaded scheduler in the job's own process.

Used by :mod:`jobstrap.engines.dask.graph_runner` with ``--threads N`` (a one-node
graph job that asks for no distributed workers, see :mod:`jobstrap.batch.inprocess`):
the graph is computed here on N threads and its tasks are counted by a Dask callback,
giving ``progress.json`` the same counts the scheduler's plugin gives on the
distributed path. No scheduler, no client, nothing listening.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

__all__ = ["compute_here", "thread_counter"]


def thread_counter(threads: int) -> Any:
    """A Dask callback counting the tasks this process computes with its threads.

    The same counts as the scheduler's plugin: ``total`` tasks seen, ``done``,
    ``erred``; one worker (this process) with ``threads`` threads. A function
    submitted counts as one task, and so does every task of what it computes.
    """
    from dask.callbacks import Callback

    class ThreadCounter(Callback):
        def __init__(self) -> None:
            super().__init__()  # type: ignore[no-untyped-call]
            self._lock = threading.Lock()
            self.total = self.done = self.erred = 0

        def _start_state(self, dsk: Any, state: Mapping[str, Any]) -> None:
            tasks = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
            with self._lock:
                self.total += tasks

        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker: Any) -> None:
            with self._lock:
                self.done += 1

        def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
            if errored:  # the threaded scheduler stops at its first failed task
                with self._lock:
                    self.erred += 1

        def task(self, finished: bool | None) -> None:
            """A task outside a graph (the function itself): begun, or ended."""
            with self._lock:
                if finished is None:
                    self.total += 1
                elif finished:
                    self.done += 1
                else:
                    self.erred += 1

        def __call__(self) -> dict[str, Any]:
            with self._lock:
                return {"workers": 1, "threads": threads, "total": self.total,
                        "done": self.done, "erred": self.erred}  # fmt: skip

    return ThreadCounter()


#: The start of distributed's error when ``get_client()`` finds no cluster.
_NO_CLIENT = "No global client found"


def compute_here(work: Mapping[str, Any], threads: int, counter: Any) -> Any:
    """Compute ``work`` in this process with Dask's threaded scheduler on ``threads``."""
    import dask

    # Also what a function computes, and what the graph's tasks compute inside.
    with dask.config.set(scheduler="threads", num_workers=threads), counter:
        try:
            if work["kind"] == "function":
                counter.task(None)
                value = work["function"](*work.get("args", ()), **work.get("kwargs", {}))
                counter.task(True)
                return value
            from dask.base import compute, unpack_collections

            collections, repack = unpack_collections(work["obj"], traverse=True)  # type: ignore[no-untyped-call]
            return repack(compute(*collections, traverse=False))[0]  # type: ignore[no-untyped-call]
        except Exception as error:
            if work["kind"] == "function":
                counter.task(False)
            if _NO_CLIENT in str(error) and hasattr(error, "add_note"):
                error.add_note(
                    "jobstrap: this graph job ran in the job's own process (one node, no "
                    "distributed workers asked for); submit it with "
                    "graph_scheduler='distributed' to give it a scheduler and workers"
                )
            raise
