"""Running the user's app on the client rank, in this process, as ``__main__``.

In-process (``runpy``) rather than a child process because:

* a child of an MPI rank inherits the launcher's PMI variables and would try to
  join the MPI job if the app imports mpi4py;
* signals from the batch system reach the app directly;
* exit codes and tracebacks stay exactly what ``python app.py`` gives:
  ``sys.exit(3)`` is 3, an uncaught exception prints its traceback (starting at
  the app's own frames) and is 1, ``KeyboardInterrupt`` is 130.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from jobstrap.errors import UserError

__all__ = ["AppSpec", "exit_code_of", "parse_app", "run_app"]

_OWN_FILES = {os.path.abspath(__file__), os.path.abspath(runpy.__file__)}


@dataclass(frozen=True)
class AppSpec:
    """What to run: a script path or a module, with its arguments."""

    kind: str  # "path" or "module"
    target: str
    args: tuple[str, ...] = ()

    @property
    def argv(self) -> list[str]:
        """``sys.argv`` as the app will see it."""
        return [self.target, *self.args]

    def describe(self) -> str:
        """``app.py a b`` or ``-m pkg.mod a b``."""
        head = self.target if self.kind == "path" else f"-m {self.target}"
        return " ".join([head, *self.args])


def parse_app(argv: Sequence[str]) -> AppSpec | None:
    """Parse what follows ``--``: ``app.py [args]`` or ``-m module [args]``.

    Raises
    ------
    UserError
        For ``-m`` without a module name.
    """
    items = list(argv)
    if not items:
        return None
    if items[0] == "-m":
        if len(items) < 2:
            raise UserError("app: '-m' needs a module name, e.g. -- -m mypackage.main")
        return AppSpec("module", items[1], tuple(items[2:]))
    return AppSpec("path", items[0], tuple(items[1:]))


def exit_code_of(code: object) -> int:
    """Map a ``SystemExit.code`` to a process exit code the way Python does."""
    if code is None:
        return 0
    if isinstance(code, bool):
        return int(code)
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr, flush=True)
    return 1


def _trim(tb: TracebackType | None) -> TracebackType | None:
    # Drop the frames of this runner and runpy so the traceback starts in the app,
    # as it would under `python app.py`.
    while tb is not None and _is_own(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return tb


def _is_own(filename: str) -> bool:
    return filename == "<frozen runpy>" or os.path.abspath(filename) in _OWN_FILES


def _report(error: BaseException) -> None:
    # Python's excepthook prints the exception's own __traceback__, so trim that.
    trimmed = _trim(error.__traceback__)
    error.__traceback__ = trimmed
    sys.excepthook(type(error), error, trimmed)


def run_app(app: AppSpec, *, interrupted: threading.Event | None = None) -> int:
    """Run ``app`` as ``__main__`` in this process and return its exit code.

    ``sys.argv`` and ``sys.path[0]`` are set as Python would set them. Uncaught
    exceptions are printed through ``sys.excepthook`` (so an app's own hook is
    honoured).

    Parameters
    ----------
    app
        What to run.
    interrupted
        Set when the bootstrap itself interrupted the app (its scheduler is gone
        and that was already said); the resulting ``KeyboardInterrupt`` is then
        not printed as if the user had pressed Ctrl-C.
    """
    saved_argv = sys.argv[:]
    saved_path = sys.path[:]
    sys.argv = app.argv
    try:
        if app.kind == "path":
            path = os.path.abspath(app.target)
            if not os.path.exists(path):
                raise UserError(f"app: {app.target}: no such file")
            sys.path.insert(0, os.path.dirname(path))
            sys.argv[0] = app.target
            runpy.run_path(path, run_name="__main__")
        else:
            sys.path.insert(0, os.getcwd())
            runpy.run_module(app.target, run_name="__main__", alter_sys=True)
        return 0
    except SystemExit as exit_:
        return exit_code_of(exit_.code)
    except UserError:
        raise
    except KeyboardInterrupt as error:
        if interrupted is None or not interrupted.is_set():
            _report(error)
        return 130
    except BaseException as error:
        _report(error)
        return 1
    finally:
        sys.argv = saved_argv
        sys.path[:] = saved_path
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
