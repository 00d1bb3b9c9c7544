"""Log lines that say which run, job, node, rank and role wrote them.

:func:`install` puts a filter and a formatter on the handlers of the ``distributed``
and ``jobstrap`` loggers of this process: every record gets ``run``, ``job_id``,
``array_task``, ``node``, ``rank`` and ``role``. Text lines (the default) keep Dask's
layout with the tags after the time stamp; ``JOBSTRAP_LOG_FORMAT=json`` in the
job's environment (exported by the job script for the profile's ``log_format: json``)
writes one JSON object per line
(``time`` in epoch seconds, ``level``, ``logger``, ``message`` and the tags), which
``jobstrap logs RUN --all`` merges as well as the text form. A forked worker keeps
its nanny's handlers and so its tags; :func:`set_role` says what this process is.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from typing import Any

from jobstrap.config.choices import LOG_FORMAT_VARIABLE

__all__ = ["TAGS", "TagFilter", "install", "set_role", "tags"]

#: The tags every record gets, in the order text lines show them.
TAGS = ("run", "job_id", "array_task", "node", "rank", "role")

_role: str | None = None
_TEXT = "%(asctime)s - [%(jobstrap_tags)s] - %(name)s - %(levelname)s - %(message)s"


def set_role(role: str) -> None:
    """This process's role from now on (``scheduler``, ``worker``, ``client``)."""
    global _role
    _role = role


def tags() -> dict[str, str]:
    """The tags of this process, from the job's environment and the launcher's rank."""
    from jobstrap.bootstrap.ranks import env_rank

    found = env_rank(os.environ)
    run_dir = os.environ.get("JOBSTRAP_RUN_DIR", "")
    return {
        "run": os.path.basename(run_dir.rstrip("/")),
        "job_id": os.environ.get("JOBSTRAP_JOB_ID", ""),
        "array_task": os.environ.get("JOBSTRAP_ARRAY_TASK_ID", ""),
        "node": socket.gethostname().split(".")[0],
        "rank": os.environ.get("JOBSTRAP_RANK", "") if found is None else str(found[0]),
        "role": _role or os.environ.get("JOBSTRAP_ROLE", ""),
    }


class TagFilter(logging.Filter):
    """Adds the tags to each record (``record.jobstrap``, ``record.jobstrap_tags``)."""

    def __init__(self) -> None:
        super().__init__()
        self._base = tags()

    def filter(self, record: logging.LogRecord) -> bool:
        values = dict(self._base, role=_role or self._base["role"])
        record.jobstrap = values
        record.jobstrap_tags = " ".join(f"{k}={values[k]}" for k in TAGS if values[k])
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the tags."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "jobstrap", {}),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def install(loggers: tuple[str, ...] = ("distributed", "jobstrap")) -> None:
    """Tag every record that the handlers of ``loggers`` write (idempotent)."""
    as_json = os.environ.get(LOG_FORMAT_VARIABLE, "").lower() == "json"
    for name in loggers:
        for handler in logging.getLogger(name).handlers:
            if any(isinstance(f, TagFilter) for f in handler.filters):
                continue
            handler.addFilter(TagFilter())
            handler.setFormatter(JsonFormatter() if as_json else logging.Formatter(_TEXT))
