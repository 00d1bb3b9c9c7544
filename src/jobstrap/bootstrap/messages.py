"""One-line notices from the job side, tagged with the rank and host that says them.

Every engine and every role prints through :func:`say` and the ``jobstrap.bootstrap``
logger, so a job log reads the same whatever runs in it. Imports nothing heavy: the
bootstrap configures it before MPI is initialised.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

__all__ = ["configure_logging", "logger", "say"]

logger = logging.getLogger("jobstrap.bootstrap")

_prefix = "jobstrap"


def configure_logging(rank: int | None = None) -> None:
    """Send ``jobstrap.*`` log records to stderr, tagged with rank and host."""
    global _prefix
    host = socket.gethostname()
    _prefix = f"jobstrap[{host}" + (f" rank {rank}]" if rank is not None else "]")
    root = logging.getLogger("jobstrap")
    for handler in list(root.handlers):
        if getattr(handler, "_jobstrap", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._jobstrap = True  # type: ignore[attr-defined]
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s - {_prefix} - %(levelname)s - %(message)s")
    )
    root.addHandler(handler)
    root.setLevel(os.environ.get("JOBSTRAP_LOG_LEVEL", "INFO").upper())
    root.propagate = False


def say(message: str) -> None:
    """Print one line to stderr, prefixed with this rank's identity, and flush."""
    # One write of the whole line: ranks share the job log, and print() writes the
    # text and the newline separately, so lines of different ranks could interleave.
    sys.stderr.write(f"{_prefix}: {message}\n")
    sys.stderr.flush()
