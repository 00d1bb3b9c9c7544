"""Ray's first example, unchanged, as a batch job: ``jobstrap submit --engine ray``.

    jobstrap submit --engine ray --nodes 3 --wait examples/ray_square.py

The job starts a Ray head on its first node and one Ray node on each other node,
then runs this file on the head's node once every node has joined. A plain
``ray.init()`` (or ``ray.init(address="auto")``) joins that cluster: the job set
``RAY_ADDRESS`` and the run's token (and TLS) for it. The script's exit code is
the job's.
"""

from __future__ import annotations

import ray

ray.init()


@ray.remote
def square(x: int) -> int:
    return x * x


futures = [square.remote(i) for i in range(4)]
print(ray.get(futures))  # [0, 1, 4, 9]
