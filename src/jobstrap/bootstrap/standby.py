"""A rank standing by: wait for its node's first worker rank to end, in a small process.

This file runs on its own (``python -S standby.py PID``) as well as imported: a
standing rank replaces its interpreter with one that loads nothing but this file,
so it lets go of MPI, mpi4py and the bootstrap's modules (about five sixths of its
memory: 19.6 to 3.4 MiB of PSS on the test cluster) while it keeps its place in the
launch. Standard library only, and no imports of the package, for that reason.
"""

from __future__ import annotations

import os
import select
import sys
import time

__all__ = ["wait_for_exit"]


def wait_for_exit(pid: int) -> None:
    """Block until process ``pid`` (not a child) has ended."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):  # before Linux 5.3: look once a second
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            except PermissionError:
                pass
            time.sleep(1.0)
    try:
        select.select([fd], [], [])
    finally:
        os.close(fd)


if __name__ == "__main__":
    wait_for_exit(int(sys.argv[1]))
