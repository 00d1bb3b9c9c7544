"""What TLS costs a Dask comm per MiB moved, against plain TCP (one process, both ends).

Both ends of one ``distributed`` comm run in this process, so the CPU time measured
is what sender and receiver spend together per MiB: the figure that decides how much
slower a shuffle-heavy graph runs with TLS on a CPU-bound node.

``tls_same_host_socket`` is the same ``tls://`` comm with jobstrap's backend
installed, as in every process of a job (``jobstrap.engines.dask.samehost``): both ends are on
this host, so it takes the Unix socket. ``tls_batched_reads`` repeats the TLS run
with tornado's SSL stream reading as many TLS records per call as are available
(instead of one 16 KB record per event-loop pass), to show whether the Python-level
read loop is where the time goes.

Appends a run to ``bench/results/tls.json``::

    .venv/bin/python bench/bench_tls.py [--messages 40] [--mib 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import ssl
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from history import append_run, new_run

RESULTS = Path(__file__).resolve().parent / "results" / "tls.json"


def batch_ssl_reads() -> None:
    """Make tornado's SSL stream read every record that is ready in one call."""
    from tornado.iostream import SSLIOStream

    def read_from_fd(self: Any, buf: bytearray | memoryview) -> int | None:
        if self._ssl_accepting:
            return None
        view = memoryview(buf)
        total = 0
        while total < len(view):
            try:
                got = self.socket.recv_into(view[total:], len(view) - total)
            except (ssl.SSLWantReadError, BlockingIOError):
                break
            if not got:
                if total == 0:
                    return 0  # closed by the peer
                break
            total += got
        return total or None

    SSLIOStream.read_from_fd = read_from_fd  # type: ignore[method-assign]


@contextlib.contextmanager
def same_host_sockets() -> Iterator[None]:
    """jobstrap's tls backend (what job processes use) for the duration."""
    from distributed.comm import registry

    from jobstrap.engines.dask import samehost

    stock = registry.backends["tls"]
    if not samehost.install():
        raise SystemExit(f"same-host sockets are turned off ({samehost.ENV})")
    try:
        yield
    finally:
        registry.backends["tls"] = stock


async def move(protocol: str, messages: int, size: int) -> dict[str, float]:
    """Send ``messages`` frames of ``size`` bytes over one comm; MiB/s and CPU ms/MiB."""
    from distributed.comm.core import connect, listen
    from distributed.security import Security

    security = Security.temporary() if protocol == "tls" else None  # type: ignore[no-untyped-call]
    listen_args = security.get_listen_args("scheduler") if security else {}
    connect_args = security.get_connection_args("worker") if security else {}

    async def receive(comm: Any) -> None:
        for _ in range(messages):
            await comm.read()
        await comm.write("done")
        await comm.close()

    listener = listen(f"{protocol}://127.0.0.1:0", receive, **listen_args)  # type: ignore[no-untyped-call]
    await listener.start()
    comm = await connect(listener.contact_address, **connect_args)  # type: ignore[no-untyped-call]
    payload = os.urandom(size)  # incompressible, like the benchmark's random array
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(messages):
        await comm.write({"data": payload})
    await comm.read()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await comm.close()
    listener.stop()
    mib = messages * size / 2**20
    return {"mib_per_s": mib / wall, "cpu_ms_per_mib": 1000 * cpu / mib}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=40)
    parser.add_argument("--mib", type=int, default=8, help="MiB per message")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    size = args.mib * 2**20
    runs: dict[str, list[dict[str, float]]] = {
        "tcp": [],
        "tls": [],
        "tls_same_host_socket": [],
        "tls_batched_reads": [],
    }
    for _ in range(args.repeats):  # interleaved, so the machine's load affects all alike
        runs["tcp"].append(asyncio.run(move("tcp", args.messages, size)))
        runs["tls"].append(asyncio.run(move("tls", args.messages, size)))
        with same_host_sockets():
            runs["tls_same_host_socket"].append(asyncio.run(move("tls", args.messages, size)))
    batch_ssl_reads()  # from here on for the rest of the process: measured last
    for _ in range(args.repeats):
        runs["tls_batched_reads"].append(asyncio.run(move("tls", args.messages, size)))

    summary = {
        name: {
            key: round(statistics.median(r[key] for r in results), 2)
            for key in ("mib_per_s", "cpu_ms_per_mib")
        }
        for name, results in runs.items()
    }
    import distributed
    import tornado

    series = tls_series(runs)
    run = new_run(
        "bench/bench_tls.py",
        settings={"messages": args.messages, "mib_per_message": args.mib, "repeats": args.repeats},
        versions={
            "python": platform.python_version(),
            "openssl": ssl.OPENSSL_VERSION,
            "distributed": getattr(distributed, "__version__", "?"),
            "tornado": tornado.version,
        },
        series=series,
        measures=TLS_MEASURES,
        workload={"messages": args.messages, "mib_per_message": args.mib},
        detail={"median": summary, "runs": runs},
    )
    append_run(
        args.output,
        run,
        benchmark="CPU per MiB moved by one distributed comm, both ends in one process",
        script="bench/bench_tls.py",
    )
    print(json.dumps(summary, indent=2))
    print(f"appended a run to {args.output}")
    return 0


# CPU per MiB of each TLS variant against plain TCP, paired by repeat.
TLS_MEASURES = {
    f"cpu_per_mib_{tag}_vs_tcp": {
        "series": "cpu_ms_per_mib",
        "ours": method,
        "anchor": "tcp",
        "unit": "ms/MiB",
    }
    for tag, method in (
        ("tls", "tls"),
        ("same_host_socket", "tls_same_host_socket"),
        ("batched_reads", "tls_batched_reads"),
    )
}


def tls_series(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, list[float | None]]]:
    """CPU ms and MiB/s per repeat by method."""
    return {
        key: {m: [r.get(key) for r in rs] for m, rs in runs.items()}
        for key in ("cpu_ms_per_mib", "mib_per_s")
    }


if __name__ == "__main__":
    raise SystemExit(main())
