"""Ray's engine: a Ray head on the head rank, one Ray worker node per other rank
(one rank per allocated node), the app as a plain Ray driver on the head's node.

Every Ray process of a run lives in a private temporary directory, on ports chosen
for the run, in process groups the run tears down itself (never ``ray stop``), with
a per-run authentication token and, with protocol ``tls``, per-node certificates.

:func:`engine` is what the bootstrap finds by name (``ray``); importing this package
imports nothing of Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jobstrap.engines.ray.engine import RayEngine


def engine() -> RayEngine:
    """The bootstrap's Ray engine (:class:`~jobstrap.engines.ray.engine.RayEngine`)."""
    from jobstrap.engines.ray.engine import RayEngine

    return RayEngine()
