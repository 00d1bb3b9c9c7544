"""In-job entry point of notebook-cluster workers: names, then the bootstrap.

::

    python -m jobstrap.bootstrap.worker_entry NAME_TEMPLATE -- BOOTSTRAP_ARGS...

A scale-up goes out as one job array, so every task runs the same script; what
tells the tasks apart is the array task id. This module turns the cluster's name
template into the job's name (``{task}`` becomes ``$JOBSTRAP_ARRAY_TASK_ID``), adds
the rank of this launcher task (one per node) and runs the bootstrap in this
process with ``--name <job name>-<rank>``. The bootstrap then names its workers
``<job name>-<rank>`` (one process per node) or ``<job name>-<rank>-<k>``, exactly
the names the cluster planned for the job (:func:`worker_suffixes`), so the
scheduler, the adaptive loop and the cluster agree on which job a worker is in.

Runs inside the job: it imports nothing from the client side (batchctl, cluster).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

__all__ = ["expand_name", "main", "rank_of"]

#: Launcher variables holding this task's rank, most specific first.
_RANK_VARIABLES = ("SLURM_PROCID", "PMIX_RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK")


def expand_name(template: str, environ: Mapping[str, str]) -> str:
    """The job's name from the template: ``{task}`` is the array task id.

    Raises
    ------
    ValueError
        ``{task}`` is used but the job is not an array task.
    """
    if "{task}" not in template:
        return template
    task = environ.get("JOBSTRAP_ARRAY_TASK_ID", "").strip()
    if not task.isdigit():
        raise ValueError(
            f"the name template {template!r} needs JOBSTRAP_ARRAY_TASK_ID (got {task!r})"
        )
    return template.replace("{task}", task)


def rank_of(environ: Mapping[str, str]) -> int:
    """This launcher task's rank (0 when there is no launcher: a one-node job)."""
    for name in _RANK_VARIABLES:
        value = environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Name this task's workers and run the bootstrap; return its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[1] != "--":
        print("usage: python -m jobstrap.bootstrap.worker_entry NAME_TEMPLATE -- BOOTSTRAP_ARGS...",
              file=sys.stderr)  # fmt: skip
        return 2
    template, bootstrap_args = args[0], args[2:]
    try:
        name = expand_name(template, os.environ)
    except ValueError as error:
        print(f"jobstrap.bootstrap.worker_entry: {error}", file=sys.stderr)
        return 2
    from jobstrap.bootstrap.main import main as bootstrap

    return bootstrap([*bootstrap_args, "--name", f"{name}-{rank_of(os.environ)}"])


if __name__ == "__main__":
    sys.exit(main())
