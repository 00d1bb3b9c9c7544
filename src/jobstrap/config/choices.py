"""Choices that both sides read: the profile validates them, the job side obeys them.

Kept apart from :mod:`jobstrap.config.profile` so that the job side can import them
without loading the profile machinery (YAML, templates) into every rank.
"""

from __future__ import annotations

__all__ = [
    "DASHBOARD_BINDS",
    "ENGINES",
    "GRAPH_SCHEDULERS",
    "LOG_FORMATS",
    "LOG_FORMAT_VARIABLE",
    "MEMORY_UNITS",
    "WORKER_LAYOUTS",
]

#: Worker layouts of batch mode: one process per node forks the workers of every
#: worker rank there, or each worker rank runs its own.
WORKER_LAYOUTS = ("node", "rank")

#: Where the scheduler's dashboard (plain HTTP, no login) listens: the node's loopback
#: (the default; ``jobstrap tunnel`` reaches it through the scheduler's node), or the
#: scheduler's network interface, where anyone on that network can read it.
DASHBOARD_BINDS = ("loopback", "interface")

#: What a job's memory request counts: the node (``--mem``), each CPU
#: (``--mem-per-cpu``) or each GPU (``--mem-per-gpu``); a batch system gets one of them.
MEMORY_UNITS = ("node", "cpu", "gpu")

#: The engines a batch job can run (``engine``): Dask (scheduler, client and workers
#: by rank) or Ray (a Ray head and one Ray node per allocated node, the app on the
#: head's rank); the job side finds each as ``jobstrap.engines.<name>``.
ENGINES = ("dask", "ray")

#: How a graph job (``jobstrap.submit``) computes: ``auto`` runs a one-node job that
#: asks for no distributed workers in the job's own process with Dask's threads (no
#: scheduler, no workers, nothing listening), anything else on a scheduler and
#: workers; ``distributed`` always starts the scheduler and workers.
GRAPH_SCHEDULERS = ("auto", "distributed")

#: How a job's tagged log lines are written (``log_format``): Dask's text layout with
#: the tags after the time stamp, or one JSON object per line.
LOG_FORMATS = ("text", "json")

#: The job-side carrier of ``log_format``: the job script exports it, the bootstrap's
#: log tagging reads it (:mod:`jobstrap.bootstrap.logtags`).
LOG_FORMAT_VARIABLE = "JOBSTRAP_LOG_FORMAT"
