"""No leaked jobs: the jobs an object submitted are cancelled when it goes away.

:class:`JobGuard` keeps the ids an owner (a notebook cluster, a Ray cluster job)
still has to cancel and a ``weakref.finalize`` that cancels them when the owner is
garbage collected and, since a finalizer also runs at interpreter exit, when the
interpreter exits with the owner still alive. The finalizer must not reference
its owner, so it holds only the system's name and the ids.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable

from jobstrap.batchctl.control import BatchControl

__all__ = ["JobGuard"]

logger = logging.getLogger(__name__)


def _cancel_orphans(system: str, active: set[str], lock: threading.Lock) -> None:
    """Cancel whatever is left of an owner's jobs (finalizer; must not reference the owner)."""
    with lock:
        ids = sorted(active)
        active.clear()
    if not ids:
        return
    try:
        BatchControl.for_system(system).cancel(ids)
    except Exception as error:  # at exit there is nobody left to raise to
        logger.error("could not cancel jobs %s: %s", " ".join(ids), error)


class JobGuard:
    """The job ids an owner must cancel before it goes, and the finalizer that does it.

    Parameters
    ----------
    owner
        Its garbage collection (or the interpreter's exit) cancels the jobs still active.
    system
        The batch system's name (batch control is looked up again when it runs).
    """

    def __init__(self, owner: object, system: str) -> None:
        self._active: set[str] = set()
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(owner, _cancel_orphans, system, self._active, self._lock)

    def add(self, job_ids: Iterable[str]) -> None:
        """These jobs were submitted: cancel them if the owner goes away."""
        with self._lock:
            self._active.update(job_ids)

    def discard(self, job_ids: Iterable[str]) -> None:
        """These jobs ended or were cancelled: nothing left to do for them."""
        with self._lock:
            self._active.difference_update(job_ids)

    def leftovers(self) -> list[str]:
        """Jobs still to cancel."""
        with self._lock:
            return sorted(self._active)

    def cancel_now(self) -> None:
        """Run the finalizer now (once): cancel every job still active."""
        self._finalizer()
