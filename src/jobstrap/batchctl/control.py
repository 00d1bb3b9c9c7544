"""Batch control: one object per process per batch system for every batch command.

Everything that talks to a batch system's controller goes through a
:class:`BatchControl` (:meth:`BatchControl.for_system`). It combines running commands
(:mod:`~jobstrap.batchctl.commands`), asking for states (:mod:`~jobstrap.batchctl.query`)
and submitting (:mod:`~jobstrap.batchctl.submit`), and owns the process's one
:class:`~jobstrap.batchctl.watcher.Watcher` for that system.
"""

from __future__ import annotations

import os
import threading
from typing import ClassVar

from jobstrap.batchctl.query import StatusQueries
from jobstrap.batchctl.submit import Submitter
from jobstrap.batchctl.watcher import Watcher

__all__ = ["BatchControl"]


class BatchControl(Submitter, StatusQueries):
    """Runs one batch system's commands: timeouts, retries, rate limit, a watcher.

    Takes :class:`~jobstrap.batchctl.commands.CommandRunner`'s parameters; submission
    comes from :class:`~jobstrap.batchctl.submit.Submitter`, status from
    :class:`~jobstrap.batchctl.query.StatusQueries`. :meth:`for_system` gives the one
    instance per system of the process.
    """

    _instances: ClassVar[dict[tuple[str, int], BatchControl]] = {}
    _instances_lock: ClassVar[threading.Lock] = threading.Lock()

    # The watcher is made on first use; one lock for all instances is enough, as an
    # instance makes its watcher once. Class attributes keep CommandRunner's
    # constructor the only one.
    _watcher: Watcher | None = None
    _watcher_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def for_system(cls, name: str) -> BatchControl:
        """The process's batchctl for batch system ``name`` (created on first use)."""
        key = (name, os.getpid())  # a forked child gets its own (threads do not survive fork)
        with cls._instances_lock:
            batchctl = cls._instances.get(key)
            if batchctl is None:
                batchctl = cls._instances[key] = cls(name)
            return batchctl

    def __repr__(self) -> str:
        return f"BatchControl({self.system.name!r}, calls={dict(self.calls)})"

    @property
    def watcher(self) -> Watcher:
        """This batchctl's watcher (no thread runs until something is tracked)."""
        with self._watcher_lock:
            if self._watcher is None:
                self._watcher = Watcher(self)
            return self._watcher

    def _cancelled(self) -> None:
        # Poll soon, so that waiters see the cancelled jobs go without the backoff delay.
        if self._watcher is not None:
            self._watcher.poke()
