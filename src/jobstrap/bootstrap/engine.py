"""What the bootstrap asks of an engine (Dask today), and how it finds one by name.

The bootstrap owns what every engine shares: ranks and roles, the network choice,
the run directory, signals, the drain file and exit codes. An engine owns its
servers: the head (Dask's scheduler) the other ranks connect to, the workers of a
rank or of a node, the line from the app's rank to the head, and telling the app
where to connect. It drains its workers itself on the batch system's signals (see
:mod:`jobstrap.bootstrap.signals`) and tears the run down through
:meth:`Head.finish`.

An engine is the package ``jobstrap.engines.<name>`` or an entry point of the
``jobstrap.engines`` group, either providing ``engine()`` that returns an
:class:`Engine`. Finding one must stay cheap: the package is imported before MPI
is initialised, so it imports its framework only in :meth:`Engine.load`.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from jobstrap.errors import UserError

if TYPE_CHECKING:
    from jobstrap.bootstrap.options import Options
    from jobstrap.store.rundir import RunDir

__all__ = [
    "DEFAULT_ENGINE",
    "ENTRY_POINT_GROUP",
    "Engine",
    "Head",
    "Link",
    "frozen_imports",
    "get_engine",
]

DEFAULT_ENGINE = "dask"
ENTRY_POINT_GROUP = "jobstrap.engines"


class Head(Protocol):
    """The running head of a run (Dask: the scheduler on its own thread)."""

    @property
    def address(self) -> str:
        """Where workers and the app connect."""
        ...

    @property
    def dashboard_address(self) -> str | None:
        """The dashboard's URL, or ``None``."""
        ...

    def identity(self) -> dict[str, Any]:
        """What the head says of itself (written as ``scheduler.json``)."""
        ...

    def watch_client(self, *, death_timeout: float, first_contact_timeout: float) -> None:
        """End the run if the app's rank never checks in or goes silent."""
        ...

    def finish(self, code: int, reason: str | None = None) -> None:
        """Tear the run down with exit ``code`` (thread-safe; the first call wins)."""
        ...

    def wait(self) -> int:
        """Block until the run is torn down; return its exit code."""
        ...


class Link(Protocol):
    """The app's rank's line to the head: heartbeats, worker count, the end."""

    #: Set when the link stopped the app (head lost, or no worker came).
    lost: threading.Event

    def start(self, *, heartbeat: bool = True) -> None:
        """Start the link (heartbeats unless ``heartbeat`` is false)."""
        ...

    def wait_for_workers(self, expected: int, timeout: float) -> int:
        """Wait for ``expected`` workers or ``timeout``; return how many joined."""
        ...

    def expect_a_worker(self, timeout: float, message: str) -> None:
        """Stop the app with ``message`` if no worker joins within ``timeout``."""
        ...

    def done(self, code: int) -> bool:
        """Tell the head the app ended with ``code``."""
        ...

    def stop(self) -> None:
        """Stop the link."""
        ...


class Engine(Protocol):
    """One engine's part of the bootstrap (see the module's docstring)."""

    name: str

    def load(self, *, forks_workers: bool = False) -> None:
        """Import the engine's framework (idempotent); ``forks_workers``: this rank forks."""
        ...

    def security(self, options: Options, run: RunDir) -> Any:
        """The run's TLS settings in the engine's form; :class:`UserError` if missing."""
        ...

    def start_head(
        self, options: Options, host: str, security: Any, *, idle_timeout: float | None
    ) -> Head:
        """Start the head listening on ``host``; raises ``OSError`` or UserError."""
        ...

    def serve_workers(
        self,
        options: Options,
        address: str,
        host: str,
        security: Any,
        names: Sequence[str],
        *,
        max_memory_kills: int | None = None,
        environments: Sequence[Mapping[str, str]] = (),
        resources: Mapping[str, float] | None = None,
    ) -> int:
        """Run the workers ``names`` for the head at ``address`` until they end.

        They drain on the batch system's signals. Returns 0 once closed or drained,
        1 when the head was lost or they could not join. ``environments`` (one per
        name, when given) are set in each worker's process (a GPU worker's devices);
        ``resources`` are what each worker offers the head (``{"GPU": 1}``).
        """
        ...

    def tell_app(self, options: Options, run: RunDir, address: str) -> None:
        """Set this process's environment so the app connects to ``address``."""
        ...

    def connect(self, address: str, security: Any, *, death_timeout: float) -> Link:
        """The app's rank's :class:`Link` to the head at ``address`` (not started)."""
        ...

    def close_app_clients(self) -> None:
        """Close what the app left connected, before the head goes away under it."""
        ...


def get_engine(name: str = DEFAULT_ENGINE) -> Engine:
    """The engine called ``name``: ``jobstrap.engines.<name>``, else an entry point.

    Raises
    ------
    UserError
        No engine of that name is installed.
    """
    factory: Any = None
    if not name.isidentifier():
        raise UserError(f"bootstrap: no engine named {name!r} (e.g. {DEFAULT_ENGINE!r})")
    try:
        module = importlib.import_module(f"jobstrap.engines.{name}")
        factory = getattr(module, "engine", None)
    except ModuleNotFoundError as error:
        if error.name != f"jobstrap.engines.{name}":
            raise
    if factory is None:
        # Only for engines installed by other packages: reading the metadata costs time.
        from importlib.metadata import entry_points

        for point in entry_points(group=ENTRY_POINT_GROUP, name=name):
            factory = point.load()
            break
    if factory is None:
        raise UserError(f"bootstrap: no engine named {name!r} (e.g. {DEFAULT_ENGINE!r})")
    engine: Engine = factory()
    return engine


@contextlib.contextmanager
def frozen_imports() -> Iterator[None]:
    """Import an engine's framework with the cyclic GC paused, then freeze what it made.

    Importing ``distributed`` makes some 60 000 objects, none of them garbage, and
    the collections their allocation triggers (about 150, one of them full) are a
    tenth of the import's CPU time: on a busy node, where every rank imports at
    once, a tenth of a worker's start-up. Freezing what the import made then keeps
    it out of every later collection, and a forked worker from writing to (so
    copying) those pages when a collection would have touched them.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.freeze()
