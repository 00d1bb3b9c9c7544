"""What runs inside a job: roles by rank, network choice, TLS, scheduler/client/workers.

Run it as ``python -m jobstrap.bootstrap`` (see :mod:`jobstrap.bootstrap.main`).
An app started by the bootstrap can hear the batch system's "wind down" signals::

    from jobstrap.bootstrap import on_drain, draining

Importing this package is cheap and has no side effects: ``distributed`` and
mpi4py are only imported by the bootstrap's entry point.
"""

from __future__ import annotations

from jobstrap.bootstrap.drain import (
    DRAIN_FILE_ENV,
    drain_file,
    drain_reason,
    draining,
    on_drain,
    wait_for_drain,
)

# request_drain stays in bootstrap.drain: applications read the drain, jobstrap sets it.
__all__ = ["DRAIN_FILE_ENV", "drain_file", "drain_reason", "draining", "on_drain", "wait_for_drain"]
