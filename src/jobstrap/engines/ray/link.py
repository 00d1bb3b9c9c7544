"""The app's rank's view of the Ray cluster: nodes joined, nodes lost.

The head rank runs the app (Ray's driver belongs on the head's node), so there is
no heartbeat to send: the link asks Ray's GCS which nodes are alive. Before the
app it waits until every node has joined (the bootstrap's ``death_timeout`` as
deadline, or ``--start-after-workers`` of them); while the app runs it polls once
a second and stops the app with one line when a node that had joined dies or the
GCS stops answering for ``death_timeout``.

The GCS is asked through Ray's own client (``ray._raylet.GcsClient``): it speaks
the run's token and TLS from the environment, and it registers no driver, so the
app's own ``ray.init()`` in this process stays the first.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from jobstrap.bootstrap.messages import logger, say
from jobstrap.bootstrap.silence import Silence, WaitStalls

__all__ = ["NodeView", "RayLink", "alive_nodes", "interrupt_main"]

#: Seconds between two looks at the cluster while the app runs.
POLL_INTERVAL = 1.0
#: How long the app gets to unwind after it was stopped, before a hard exit.
LOST_GRACE = 10.0


def interrupt_main() -> None:
    """Stop the app running in the main thread with KeyboardInterrupt.

    A real SIGINT to the main thread (Python's handler while the app runs): it also
    wakes a blocking call, which ``_thread.interrupt_main()`` alone would not. The
    bootstrap does not print that KeyboardInterrupt (the link's ``lost`` is set).
    """
    try:
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
    except (OSError, ValueError):
        _thread.interrupt_main()


class NodeView:
    """One node as the GCS lists it."""

    def __init__(self, node_id: str, address: str, alive: bool, head: bool) -> None:
        self.node_id = node_id
        self.address = address
        self.alive = alive
        self.head = head


def alive_nodes(client: Any, timeout: float = 5.0) -> list[NodeView]:
    """Every node the GCS knows, alive or dead (``GcsClient.get_all_node_info``)."""
    from ray.core.generated import gcs_pb2

    views = []
    for node_id, info in client.get_all_node_info(timeout=timeout).items():
        views.append(
            NodeView(
                node_id.hex(),
                str(info.node_manager_address),
                info.state == gcs_pb2.GcsNodeInfo.ALIVE,
                bool(info.is_head_node),
            )
        )
    return views


class RayLink:
    """The :class:`jobstrap.bootstrap.engine.Link` of the Ray engine.

    Parameters
    ----------
    address
        The GCS address (``ip:port``).
    death_timeout
        Seconds the GCS may stay silent before the app is stopped.
    on_hard_exit
        Called when the stopped app did not end within :data:`LOST_GRACE`: tears
        the run down before the process exits.
    on_all_joined
        Called once every expected node is alive (the CA's key can go).
    interrupt
        Stops the app (default: SIGINT to the main thread, see :func:`interrupt_main`).
    client
        A GCS client (tests); default Ray's, made on first use.
    """

    def __init__(
        self,
        address: str,
        *,
        death_timeout: float,
        on_hard_exit: Callable[[], None] | None = None,
        on_all_joined: Callable[[], None] | None = None,
        interrupt: Callable[[], None] | None = None,
        client: Any = None,
    ) -> None:
        self.address = address
        self.death_timeout = death_timeout
        #: Set when the link stopped the app (a node died, the GCS went silent).
        self.lost = threading.Event()
        self.lost_message: str | None = None
        self._client = client
        self._on_hard_exit = on_hard_exit
        self._on_all_joined = on_all_joined
        self._interrupt = interrupt or interrupt_main
        self._stopping = threading.Event()
        self._joined: dict[str, str] = {}
        self._watch: threading.Thread | None = None

    # ------------------------------------------------------------------ protocol

    def start(self, *, heartbeat: bool = True) -> None:
        """Nothing to start: the head runs in this process (``heartbeat`` is moot)."""

    def wait_for_workers(self, expected: int, timeout: float) -> int:
        """Wait until ``expected`` worker nodes (and the head's) are alive.

        Returns the worker nodes alive when the wait ended; from then on, a node
        of those that dies stops the app.
        """
        deadline = time.monotonic() + timeout
        nodes: list[NodeView] = []
        while not self._stopping.is_set():
            with contextlib.suppress(Exception):  # not answering yet: the deadline decides
                nodes = [n for n in alive_nodes(self._gcs()) if n.alive]
            if len(nodes) >= expected + 1 or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        self._joined = {n.node_id: n.address for n in nodes}
        if len(nodes) >= expected + 1 and self._on_all_joined is not None:
            self._on_all_joined()
        self._start_watch()
        return max(0, len(nodes) - 1)

    def expect_a_worker(self, timeout: float, message: str) -> None:
        """The app starts now; it is stopped with ``message`` if no worker node joins."""

        def watch() -> None:
            if self.wait_for_workers(1, timeout) == 0 and not self._stopping.is_set():
                self._stop_app(message)

        threading.Thread(target=watch, name="jobstrap-ray-join", daemon=True).start()

    def done(self, code: int) -> bool:
        """Nothing to tell: the head is in this process and ends with the run."""
        self._stopping.set()
        return True

    def stop(self) -> None:
        """Stop watching."""
        self._stopping.set()
        if self._watch is not None:
            self._watch.join(timeout=5)

    # ----------------------------------------------------------------- internals

    def _gcs(self) -> Any:
        if self._client is None:
            from ray._raylet import GcsClient  # type: ignore[attr-defined]  # compiled; its stub lags

            self._client = GcsClient(address=self.address)
        return self._client

    def _start_watch(self) -> None:
        if self._watch is None:
            self._watch = threading.Thread(target=self._watch_nodes, name="jobstrap-ray-watch")
            self._watch.daemon = True
            self._watch.start()

    def _watch_nodes(self) -> None:
        # Silence this thread could observe: a stopped or CPU-starved process is not
        # the GCS being gone (jobstrap.bootstrap.silence).
        stalls = WaitStalls()
        silence = Silence(self.death_timeout, stalls)
        while not stalls.wait(self._stopping, POLL_INTERVAL):
            try:
                nodes = alive_nodes(self._gcs())
            except Exception as error:
                if silence.lost():
                    self._stop_app(
                        f"the Ray head at {self.address} stopped answering "
                        f"{silence.account()} ({type(error).__name__}); stopping the app"
                    )
                    return
                continue
            silence.heard()
            for node in nodes:
                if node.alive and node.node_id not in self._joined:
                    self._joined[node.node_id] = node.address  # a late joiner
            dead = [n for n in nodes if not n.alive and n.node_id in self._joined]
            if dead and not self._stopping.is_set():
                where = ", ".join(sorted({n.address for n in dead}))
                self._stop_app(
                    f"{len(dead)} Ray node(s) died ({where}); stopping the app "
                    "(see the job's error output and the ray-*.log files in the run's logs)"
                )
                return

    def _stop_app(self, message: str) -> None:
        if self.lost.is_set() or self._stopping.is_set():
            return
        self.lost_message = message
        say(message)
        self.lost.set()
        self._interrupt()

        def hard_exit() -> None:
            if self._stopping.wait(LOST_GRACE):
                return
            logger.warning("the app did not stop within %.0f s; exiting", LOST_GRACE)
            if self._on_hard_exit is not None:
                with contextlib.suppress(Exception):
                    self._on_hard_exit()
            os._exit(1)

        threading.Thread(target=hard_exit, name="jobstrap-ray-exit", daemon=True).start()
