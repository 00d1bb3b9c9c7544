"""What a scheduler and its workers need so that one scheduler holds thousands of workers.

Measured with ``bench/bench_scale.py --storm`` (1,000 workers joining one scheduler
at once over TLS, see ``docs/scale.md``); the limits below are what such a storm
reaches first:

* **Open files.** A scheduler keeps one connection per worker (its batched stream)
  and more while it talks to them; a site's usual soft limit of 1,024 descriptors
  ends a scheduler of ~1,000 workers with ``EMFILE`` (accepts fail, workers retry
  until their connect timeout). :func:`raise_open_files_limit` lifts the soft limit
  to the hard one, which a process may do on its own, and says when even that is
  too low.
* **Connect timeout.** ``distributed`` gives each connect attempt a fifth of
  ``distributed.comm.timeouts.connect`` (6 s of the default 30 s) before it cancels
  it and tries again. Behind thousands of TLS handshakes queued in the
  scheduler's one event loop an attempt can take longer: the scheduler has paid for
  the handshake by then and pays again for the retry. 60 s gives each attempt 12 s.
* **Listen backlog.** Connections the scheduler has not accepted yet wait in its
  listen queue (``distributed.comm.socket-backlog``, 2,048, further capped by the
  kernel's ``somaxconn``); beyond it the kernel drops the connection request and
  the client's TCP retries after 1, then 3 s. 4,096 holds twice as many.
* **Worker time-to-live.** The scheduler asks for a heartbeat every
  ``n / 200 + 1`` s at ``n`` workers (51 s at 10,000) and drops a worker silent for
  ``distributed.scheduler.worker-ttl`` (5 minutes: under six heartbeats at that
  size, so a scheduler busy for a while can drop healthy workers). 10 minutes keeps
  ten heartbeats at 10,000 workers; jobstrap's own death watch ends a run whose
  workers are really gone.
* **Jittered joining.** Workers started in the same instant (one launch, thousands
  of ranks) all open their connection in the same instant too. Spread over
  :func:`join_jitter` seconds they arrive at the rate the scheduler registers them
  (:data:`JOIN_RATE`, or ``$JOBSTRAP_JOIN_RATE``), instead of queueing in its listen
  backlog and its event loop.

The configuration is installed as *defaults* (``dask.config.update_defaults``): a
user's own setting (YAML, ``DASK_*`` variables) still wins.
"""

from __future__ import annotations

import os
import resource
from typing import Any

__all__ = [
    "JITTER_FROM",
    "JOIN_RATE",
    "SCALE_DEFAULTS",
    "apply_scale_defaults",
    "join_jitter",
    "join_rate",
    "raise_open_files_limit",
    "world_workers",
]

#: Dask settings that hold one scheduler at 10,000 workers (see the module's docstring).
SCALE_DEFAULTS: dict[str, Any] = {
    "distributed": {
        "comm": {"timeouts": {"connect": "60s"}, "socket-backlog": 4096},
        "scheduler": {"worker-ttl": "10 minutes"},
    }
}

#: Worker registrations per second one scheduler sustains over TLS on one core: it
#: spent 2.2-3.7 ms of CPU per registration in the storms of ``bench/bench_scale.py``
#: (docs/scale.md), so 270-450 a second; paced at the slow end.
JOIN_RATE = 250.0
#: Below this many workers a launch joins at once: the scheduler's backlog holds them
#: and a spread would only delay the start.
JITTER_FROM = 512
#: The longest spread: a launch of any size has joined within it plus the queue.
MAX_JITTER_S = 60.0

_applied = False


def apply_scale_defaults() -> None:
    """Install :data:`SCALE_DEFAULTS` as Dask defaults (idempotent; the user's config wins)."""
    global _applied
    if _applied:
        return
    import dask.config

    dask.config.update_defaults(SCALE_DEFAULTS)
    _applied = True


def join_rate(environ: Any = None) -> float:
    """Registrations per second to pace a launch at: ``$JOBSTRAP_JOIN_RATE``, else
    :data:`JOIN_RATE` (a slower scheduler node, or one sharing its cores, wants less)."""
    text = (os.environ if environ is None else environ).get("JOBSTRAP_JOIN_RATE", "")
    try:
        rate = float(text)
    except ValueError:
        return JOIN_RATE
    return rate if rate > 0 else JOIN_RATE


def join_jitter(workers: int, rate: float | None = None) -> float:
    """The window (s) over which ``workers`` started at once spread their first connect.

    0 below :data:`JITTER_FROM`; else ``workers / rate`` (default :func:`join_rate`),
    at most :data:`MAX_JITTER_S`. Each worker waits a uniform random part of it.
    """
    if workers < JITTER_FROM:
        return 0.0
    return min(MAX_JITTER_S, workers / (rate or join_rate()))


def world_workers(environ: Any = None) -> int:
    """Ranks of this launch, from the launcher's environment (1 when not launched)."""
    from jobstrap.bootstrap.ranks import env_rank

    found = env_rank(os.environ if environ is None else environ)
    return found[1] if found else 1


def raise_open_files_limit(wanted: int = 65536) -> tuple[int, int]:
    """Raise this process's soft limit of open files towards ``wanted`` (up to the hard one).

    Returns
    -------
    tuple of int
        The soft and hard limits now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft, hard
