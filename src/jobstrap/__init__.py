"""jobstrap: Dask on HPC batch systems.

Importing this package has no side effects: no files written, no signal handlers
installed, no network calls. Heavy parts (``distributed``) load lazily on first use:
``from jobstrap import SLURMCluster`` imports the cluster module only then.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from jobstrap._version import __version__

#: Public name -> module that defines it (imported on first access).
_LAZY = {
    "BatchCluster": "jobstrap.cluster.core",
    "LocalBatchCluster": "jobstrap.cluster.core",
    "PBSCluster": "jobstrap.cluster.core",
    "SLURMCluster": "jobstrap.cluster.core",
    "BatchClient": "jobstrap.batch.client",
    "submit": "jobstrap.batch.client",
    "RayCluster": "jobstrap.batch.raycluster",
}

__all__ = [
    "BatchClient",
    "BatchCluster",
    "LocalBatchCluster",
    "PBSCluster",
    "RayCluster",
    "SLURMCluster",
    "__version__",
    "submit",
]

if TYPE_CHECKING:
    from jobstrap.batch.client import BatchClient, submit
    from jobstrap.batch.raycluster import RayCluster
    from jobstrap.cluster.core import BatchCluster, LocalBatchCluster, PBSCluster, SLURMCluster


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jobstrap' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
