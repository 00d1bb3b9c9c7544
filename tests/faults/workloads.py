"""The computations the fault suite breaks: small, slow enough to hit, and self-counting.

Every task appends its name to a log file on the shared file system when it starts,
so a test can tell how many tasks ran more than once (results lost with a worker and
computed again). The graph is two stages: ``block-i`` makes an array that stays in
worker memory, ``part-i`` reduces it slowly; ``total`` adds the parts. Its value is
known in advance (:func:`expected`), so a wrong or partial answer cannot pass.

Workers cannot import this module (it lives in the test folder), so tests ship it
by value (:func:`ship_by_value`).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

#: Elements per block: 1 MiB of float64 each, held in worker memory.
BLOCK = 131_072


def _note(log: str, name: str) -> None:
    # O_APPEND writes of one short line do not interleave.
    with open(log, "a") as handle:
        handle.write(name + "\n")


def block(i: int, log: str, size: int = BLOCK) -> np.ndarray:
    """Task ``block-i``: an array of ``size`` copies of ``i``."""
    _note(log, f"block-{i}")
    return np.full(size, float(i))


def part(values: np.ndarray, i: int, log: str, seconds: float) -> float:
    """Task ``part-i``: the sum of a block, slowly (the window a fault lands in)."""
    _note(log, f"part-{i}")
    time.sleep(seconds)
    return float(values.sum())


def total(parts: list[float]) -> float:
    """Task ``total``."""
    return float(sum(parts))


def expected(n: int, size: int = BLOCK) -> float:
    """The right answer of :func:`graph` with ``n`` blocks."""
    return float(size * n * (n - 1) // 2)


def graph(n: int, log: str, seconds: float = 1.0, size: int = BLOCK) -> Any:
    """The whole computation as one ``Delayed`` (what graph jobs and batch apps run)."""
    from dask import delayed

    blocks = [delayed(block)(i, log, size, dask_key_name=f"block-{i}") for i in range(n)]
    parts = [
        delayed(part)(b, i, log, seconds, dask_key_name=f"part-{i}") for i, b in enumerate(blocks)
    ]
    return delayed(total)(parts, dask_key_name="total")


def persist_blocks(client: Any, n: int, log: str, size: int = BLOCK) -> list[Any]:
    """Stage one on a notebook cluster: ``n`` blocks computed and held in worker memory."""
    return [client.submit(block, i, log, size, key=f"block-{i}", pure=False) for i in range(n)]


def reduce_blocks(client: Any, blocks: list[Any], log: str, seconds: float) -> Any:
    """Stage two: the slow parts and their total, as one future."""
    parts = [
        client.submit(part, b, i, log, seconds, key=f"part-{i}", pure=False)
        for i, b in enumerate(blocks)
    ]
    return client.submit(total, parts, key="total", pure=False)


def hog(megabytes: int) -> int:
    """A task that needs far more memory than its worker has."""
    held = [bytearray(2**20) for _ in range(megabytes)]
    return len(held)


def sum_all(arrays: list[np.ndarray]) -> float:
    """The sum of many arrays (a task that needs them all at once)."""
    return float(sum(float(a.sum()) for a in arrays))


def ship_by_value() -> None:
    """Pickle this module's functions by value, so workers need not import it."""
    import sys

    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def host_of_worker() -> str:
    """The host a worker runs on (for ``client.run``)."""
    return os.uname().nodename
