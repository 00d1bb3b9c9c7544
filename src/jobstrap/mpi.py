"""dask-mpi compatibility: ``from jobstrap.mpi import initialize``.

The stable public path of :mod:`jobstrap.engines.dask.mpi_compat`, where the code
lives (it is Dask's engine, run inside an MPI job). An existing dask-mpi script keeps
working with one changed import::

    from jobstrap.mpi import initialize      # was: from dask_mpi import initialize
"""

from __future__ import annotations

from jobstrap.engines.dask.mpi_compat import (
    WorldTooSmallException,
    initialize,
    send_close_signal,
)

__all__ = ["WorldTooSmallException", "initialize", "send_close_signal"]
