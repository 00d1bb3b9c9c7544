"""Dask's engine: scheduler and worker servers, the graph runner, dask-mpi
compatibility, same-host comms, the scheduler job's watchdog plugin and the drain
that retires a worker job's workers without interrupting their tasks (``drain``).

:func:`engine` is what the bootstrap finds by name (``dask``); importing this package
imports nothing of Dask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jobstrap.engines.dask.engine import DaskEngine


def engine() -> DaskEngine:
    """The bootstrap's Dask engine (:class:`~jobstrap.engines.dask.engine.DaskEngine`)."""
    from jobstrap.engines.dask.engine import DaskEngine

    return DaskEngine()
