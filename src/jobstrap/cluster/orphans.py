"""No orphans: every job a cluster submitted is cancelled when the cluster goes away.

``close()`` and context exit cancel what is left; at interpreter exit the live
clusters are closed while their loop still runs; a finalizer cancels the jobs of a
cluster that was garbage collected (it must not reference the cluster). And the run
is in the registry (kind ``cluster``) so ``jobstrap cancel`` can clean up by hand.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from distributed.core import Status

from jobstrap.batchctl.control import BatchControl
from jobstrap.batchctl.guard import JobGuard
from jobstrap.config.profile import Profile
from jobstrap.states import JobState
from jobstrap.store.rundir import RunDir
from jobstrap.systems import JobRecord, get_system

__all__ = ["OrphanGuard", "RegistryEntry", "weak_callback"]

logger = logging.getLogger(__name__)

WatchCallback = Callable[[str, JobState, JobRecord], None]


def weak_callback(method: WatchCallback) -> WatchCallback:
    """A watcher callback that does not keep its owner alive (the watcher is global)."""
    ref = weakref.WeakMethod(method)

    def on_change(job_id: str, old: JobState, record: JobRecord) -> None:
        target = ref()
        if target is not None:
            target(job_id, old, record)

    return on_change


#: Live clusters and their guards, for the exit hook (weak: a dropped cluster leaves).
_LIVE: weakref.WeakKeyDictionary[Any, OrphanGuard] = weakref.WeakKeyDictionary()
_ATEXIT_REGISTERED = False


def _close_live_clusters() -> None:
    """At interpreter exit: close clusters gracefully while the loop still runs."""
    for cluster, guard in list(_LIVE.items()):
        with contextlib.suppress(Exception):
            if cluster.status not in (Status.closed, Status.closing):
                cluster.close(timeout=10)
        with contextlib.suppress(Exception):
            guard.cancel_now()


def _register_atexit() -> None:
    global _ATEXIT_REGISTERED
    if not _ATEXIT_REGISTERED:
        # Registered after the first weakref.finalize, so it runs before the
        # finalizers' own exit hook (atexit is last-in, first-out).
        atexit.register(_close_live_clusters)
        _ATEXIT_REGISTERED = True


class OrphanGuard(JobGuard):
    """A cluster's :class:`~jobstrap.batchctl.guard.JobGuard`, and the exit hook that
    closes the cluster gracefully first.

    Parameters
    ----------
    owner
        The cluster; its garbage collection cancels the jobs still active.
    system
        The batch system's name (batch control is looked up again at exit).
    """

    def __init__(self, owner: object, system: str) -> None:
        super().__init__(owner, system)
        _register_atexit()

    def protect(self, cluster: Any) -> None:
        """Close ``cluster`` at interpreter exit unless it was closed before."""
        _LIVE[cluster] = self

    def release(self, cluster: Any) -> None:
        """The cluster closed: no exit hook, and cancel whatever is still left."""
        _LIVE.pop(cluster, None)
        self.cancel_now()


class RegistryEntry:
    """The cluster's record (kind ``cluster``) so ``jobstrap status/cancel`` find its jobs.

    Bookkeeping must never break the cluster: failures to write are logged.
    """

    def __init__(self, run_id: str, run_dir: RunDir, profile: Profile, profile_name: str) -> None:
        self.run_id = run_id
        self._run_dir = run_dir
        self._profile = profile
        self._profile_name = profile_name
        self.registered = False

    def save(self, job_ids: Iterable[str], extra: dict[str, Any], tags: Iterable[str]) -> None:
        """Create the record, or update its job ids, tags and logs."""
        from jobstrap.store import registry

        ids, tags = sorted(job_ids), list(tags)
        logs = self._log_paths(ids)
        try:
            if not self.registered:
                registry.save(
                    registry.RunRecord(
                        run_id=self.run_id,
                        kind="cluster",
                        system=self._profile.system,
                        controller=BatchControl.for_system(self._profile.system).controller(),
                        run_dir=str(self._run_dir),
                        job_ids=ids,
                        tags=tags,
                        # The run root in effect, as batch runs record it (for prune).
                        profile={
                            "name": self._profile_name,
                            "resolved": {
                                **self._profile.to_dict(),
                                "run_root": str(self._run_dir.path.parent),
                            },
                        },
                        logs=logs,
                        extra=extra,
                    )
                )
                self.registered = True
            else:
                registry.update(self.run_id, job_ids=ids, tags=tags, logs=logs)
        except Exception as error:  # bookkeeping must never break the cluster
            logger.warning("could not record cluster %s in the registry: %s", self.run_id, error)

    def finish(self) -> None:
        """Mark the cluster closed (when it was recorded at all).

        Closing cancels every job the cluster still had, so ``jobstrap status`` shows
        the ones the batch system has not released yet as CANCELLING, not RUNNING.
        """
        if self.registered:
            from jobstrap.store import registry

            with contextlib.suppress(Exception):
                registry.update(self.run_id, status="closed")

    def _log_paths(self, job_ids: Iterable[str]) -> dict[str, dict[str, str]]:
        # Recorded even in the default place (<run dir>/logs): the registry alone would
        # guess <job id>.out, and PBS's templates write 7.out for 7.server.
        system = get_system(self._profile.system)
        base = self._profile.log_directory or str(self._run_dir.logs_dir)
        logs = {}
        for j in job_ids:
            stem = os.path.join(base, system.log_stems(j)[0])  # what the template writes
            logs[j] = {"out": f"{stem}.out", "err": f"{stem}.err"}
        return logs
