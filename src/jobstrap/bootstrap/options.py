"""The bootstrap command line (the contract job scripts are rendered against)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Sequence

from jobstrap.bootstrap.app import AppSpec, parse_app
from jobstrap.config.choices import DASHBOARD_BINDS, WORKER_LAYOUTS
from jobstrap.errors import UserError

__all__ = ["MODES", "Options", "parse_args"]

MODES = ("mpi", "workers", "scheduler", "in-process")

USAGE = """\
python -m jobstrap.bootstrap --run-dir DIR [--mode mpi|workers|scheduler|in-process]
       [--interface ib0,eth0] [--scheduler-interface NAME[,NAME]]
       [--protocol tls|tcp] [--nthreads N] [--worker-processes K] [--memory-limit BYTES]
       [--local-directory D] [--death-timeout S] [--no-dashboard] [--client-on-scheduler-rank]
       [--lifetime S] [--scheduler-address ADDR] [--name NAME] [--dashboard-port P]
       [--dashboard-bind loopback|interface]
       [--idle-timeout S] [--start-after-workers N] [--no-nanny] [--worker-layout node|rank]
       [--engine NAME] [--gpu-workers] [--worker-class MODULE.CLASS]
       -- app.py [args] | -m module [args]"""


@dataclasses.dataclass(frozen=True)
class Options:
    """Parsed bootstrap options; see ``python -m jobstrap.bootstrap --help``."""

    run_dir: str
    mode: str = "mpi"
    interface: str = "auto"
    scheduler_interface: str | None = None
    protocol: str = "tls"
    nthreads: int | None = None
    worker_processes: int = 1
    memory_limit: str | int = "auto"
    local_directory: str | None = None
    death_timeout: float = 60.0
    dashboard: bool = True
    #: Workers in processes of their own under a nanny (restarts after memory kills).
    nanny: bool = True
    dashboard_port: int = 8787
    #: ``loopback`` (the node's 127.0.0.1, reached through ``jobstrap tunnel``) or
    #: ``interface`` (the scheduler's address: anyone on that network).
    dashboard_bind: str = "loopback"
    client_on_scheduler_rank: bool = False
    lifetime: float | None = None
    scheduler_address: str | None = None
    name: str | None = None
    idle_timeout: float | None = None
    #: Start the app once this many workers joined (default: all of them).
    start_after_workers: int | None = None
    #: ``node``: one process per node imports Dask and forks the workers of every
    #: worker rank there (the others stand by); ``rank``: each rank runs its own.
    worker_layout: str = "node"
    #: The engine run in the job, by name (see :mod:`jobstrap.bootstrap.engine`).
    engine: str = "dask"
    #: One worker per GPU of the task's allocation, each with its own device first
    #: (see :mod:`jobstrap.bootstrap.gpus`); in mpi mode, by each node's first worker rank.
    gpu_workers: bool = False
    #: The worker class by dotted name (the engine's default when None).
    worker_class: str | None = None
    app: AppSpec | None = None

    @property
    def effective_scheduler_interface(self) -> str:
        """``--scheduler-interface``, else ``--interface``."""
        return self.scheduler_interface or self.interface


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"bootstrap: {message} (usage: {self.prog} --help)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        from dask.utils import parse_timedelta

        try:
            value = float(parse_timedelta(text))
        except (ValueError, KeyError):
            raise argparse.ArgumentTypeError(f"not a duration: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}: {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1)
_count = _int_at_least(0)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}")
    return value


def _memory(text: str) -> str | int:
    return int(text) if text.isdigit() else text


def _parser() -> _Parser:
    p = _Parser(
        prog="python -m jobstrap.bootstrap",
        usage=USAGE,
        description="Start Dask inside a batch job: scheduler, client app and workers by rank.",
    )
    p.add_argument("--run-dir", default=os.environ.get("JOBSTRAP_RUN_DIR"))
    p.add_argument("--mode", choices=MODES, default="mpi")
    p.add_argument("--interface", default="auto", help="worker/client interfaces, or auto")
    p.add_argument("--scheduler-interface", default=None, help="default: --interface")
    p.add_argument("--protocol", choices=("tls", "tcp"), default="tls")
    p.add_argument("--nthreads", type=_positive_int, default=None)
    p.add_argument("--worker-processes", type=_positive_int, default=1)
    p.add_argument("--memory-limit", type=_memory, default="auto")
    p.add_argument("--local-directory", default=None)
    p.add_argument("--death-timeout", type=_seconds, default=60.0)
    p.add_argument("--no-dashboard", dest="dashboard", action="store_false")
    p.add_argument(
        "--no-nanny", dest="nanny", action="store_false",
        help="workers in the rank's own process (no restarts after memory kills)",
    )  # fmt: skip
    p.add_argument("--dashboard-port", type=_port, default=8787)
    p.add_argument(
        "--dashboard-bind", choices=DASHBOARD_BINDS, default="loopback",
        help="loopback: the node's 127.0.0.1 (reach it with jobstrap tunnel); interface: "
        "the scheduler's address, readable by anyone on that network",
    )  # fmt: skip
    p.add_argument("--client-on-scheduler-rank", action="store_true")
    p.add_argument("--lifetime", type=_seconds, default=None)
    p.add_argument("--scheduler-address", default=None)
    p.add_argument("--name", default=None, help="worker name prefix")
    p.add_argument("--idle-timeout", type=_seconds, default=None)
    p.add_argument(
        "--start-after-workers", type=_count, default=None,
        help="start the app once N workers joined (default: all; 0: at once, failing "
        "if none joins within the death timeout)",
    )  # fmt: skip
    p.add_argument(
        "--worker-layout", choices=WORKER_LAYOUTS, default="node",
        help="node: one process per node forks every local worker rank's workers; "
        "rank: each worker rank runs its own",
    )  # fmt: skip
    p.add_argument("--engine", default="dask", help="the engine run in the job (default: dask)")
    p.add_argument(
        "--gpu-workers", action="store_true",
        help="one worker per GPU of the job's allocation, its own device first",
    )  # fmt: skip
    p.add_argument("--worker-class", default=None, help="worker class, module.Class")
    return p


def parse_args(argv: Sequence[str]) -> Options:
    """Parse the bootstrap's argv (without the program name).

    Everything after the first ``--`` is the app (``app.py args`` or ``-m mod args``).

    Raises
    ------
    UserError
        With a one-line message for any invalid option.
    """
    items = list(argv)
    app_argv: list[str] = []
    if "--" in items:
        cut = items.index("--")
        items, app_argv = items[:cut], items[cut + 1 :]
    ns = _parser().parse_args(items)
    if not ns.run_dir:
        raise UserError("bootstrap: --run-dir is required (or set JOBSTRAP_RUN_DIR)")
    app = parse_app(app_argv)
    if app is not None and ns.mode not in ("mpi", "in-process"):
        raise UserError(
            f"bootstrap: an app (after --) runs in mpi or in-process mode, not {ns.mode!r}"
        )
    # The parser's destinations are Options' field names, one for one.
    given = {f.name: getattr(ns, f.name) for f in dataclasses.fields(Options) if f.name != "app"}
    return Options(**given, app=app)
