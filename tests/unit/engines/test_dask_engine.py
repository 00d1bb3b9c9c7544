"""Loading Dask on a rank: no GC collections, frozen after, thread limits for forked workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any


def test_dask_is_imported_without_collections_and_then_frozen() -> None:
    # Every rank imports Dask on start-up: no collection may run during it, the GC
    # must be back on afterwards, and what the import made must be frozen.
    probe = textwrap.dedent(
        """
        import gc, sys
        from jobstrap.engines.dask.engine import load_dask as _load_dask
        assert "distributed" not in sys.modules
        collections = []
        gc.callbacks.append(lambda phase, info: collections.append(phase))
        _load_dask()
        print(len(collections), gc.isenabled(), gc.get_freeze_count(), "distributed" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    collections, enabled, frozen, imported = out
    assert collections == "0"
    assert enabled == "True"
    assert imported == "True"
    assert int(frozen) > 10_000


#: Prints the process's thread-count variables and its BLAS thread count once Dask
#: (and numpy) are loaded the way a rank loads them.
BLAS_PROBE = textwrap.dedent(
    """
    import ctypes, json, os, sys
    from jobstrap.engines.dask.engine import load_dask as _load_dask
    _load_dask(forks_workers=sys.argv[1] == "fork")
    import numpy  # loaded with distributed already; this only names it
    def blas_threads():
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
        for path in paths:
            library = ctypes.CDLL(path)
            for symbol in ("openblas_get_num_threads", "scipy_openblas_get_num_threads64_"):
                if hasattr(library, symbol):
                    return getattr(library, symbol)()
        return None
    keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    print(json.dumps({"env": {k: os.environ.get(k) for k in keys}, "blas": blas_threads()}))
    """
)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _blas_probe(mode: str, **environ: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env.update(environ)
    done = subprocess.run(
        [sys.executable, "-c", BLAS_PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
    )
    return dict(json.loads(done.stdout))


def test_a_rank_that_forks_its_workers_limits_their_threads_like_distributed() -> None:
    # A nanny that forks cannot set these for its worker: numpy has read them by
    # then. Without the limit every worker thread's BLAS calls use all the CPUs.
    forked = _blas_probe("fork")
    own = _blas_probe("own")  # a client or nanny-less worker rank: the user's tasks

    assert forked == {"env": dict.fromkeys(THREAD_VARIABLES, "1"), "blas": 1}
    assert own["env"] == dict.fromkeys(THREAD_VARIABLES)  # untouched
    assert own["blas"] is not None
    assert own["blas"] >= 1


def test_the_users_dask_config_of_the_pre_spawn_environment_wins() -> None:
    setting = {"DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON": '{"OPENBLAS_NUM_THREADS": 2}'}

    forked = _blas_probe("fork", **setting)

    assert forked["env"]["OPENBLAS_NUM_THREADS"] == "2"
    assert forked["env"]["OMP_NUM_THREADS"] == "1"


def test_the_pre_spawn_environment_is_the_one_distributed_ships() -> None:
    import importlib.util

    import yaml

    from jobstrap.engines.dask.forkserver import PRE_SPAWN_ENVIRON

    spec = importlib.util.find_spec("distributed")
    assert spec is not None
    assert spec.submodule_search_locations
    shipped = Path(next(iter(spec.submodule_search_locations))) / "distributed.yaml"
    config = yaml.safe_load(shipped.read_text(encoding="utf-8"))

    assert config["distributed"]["nanny"]["pre-spawn-environ"] == PRE_SPAWN_ENVIRON
