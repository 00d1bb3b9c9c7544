"""What is shipped into a graph job: the object to compute, serialised for the job.

The graph (or the function and its arguments) is pickled with cloudpickle into an
envelope that also names the versions it was made with; the graph runner in the job
reads it back from ``input.pkl``. Modules the job could not import by name (a
notebook's sibling module, a test folder) travel by value. A size cap keeps data
embedded in a graph from travelling through the file system and the scheduler.
"""

from __future__ import annotations

import functools
import os
import pickle
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from jobstrap.errors import UserError
from jobstrap.store.runfiles import versions, write_framed

if TYPE_CHECKING:
    from jobstrap.store.rundir import RunDir

__all__ = [
    "DEFAULT_MAX_INPUT_SIZE",
    "describe",
    "input_size_limit",
    "serialise",
    "work_for",
    "write_input",
]

#: Default cap on the serialised graph (bytes); ``$JOBSTRAP_MAX_INPUT_SIZE`` overrides it.
DEFAULT_MAX_INPUT_SIZE = 100 * 2**20


def input_size_limit(value: int | str | None) -> int:
    """The cap on the serialised object, in bytes.

    ``value`` if given, else ``$JOBSTRAP_MAX_INPUT_SIZE``, else 100 MiB.
    """
    from jobstrap.config.units import parse_memory

    if value is None:
        value = os.environ.get("JOBSTRAP_MAX_INPUT_SIZE") or DEFAULT_MAX_INPUT_SIZE
    return parse_memory(value, "max_input_size")


def describe(obj: object) -> str:
    """The qualified type name of ``obj``, for messages and the run record."""
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def work_for(obj: Any, args: Sequence[Any], kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the graph runner computes: a collection (or nest of them) or a function call."""
    from dask.base import is_dask_collection, unpack_collections

    if is_dask_collection(obj) or isinstance(obj, list | tuple | dict | set):
        collections, _ = unpack_collections(obj, traverse=True)  # type: ignore[no-untyped-call]
        if collections:
            if args or kwargs:
                raise UserError(
                    "arguments are for functions; a Dask collection is shipped as it is"
                )
            return {"kind": "collection", "obj": obj}
    if callable(obj):
        return {
            "kind": "function",
            "function": obj,
            "args": tuple(args),
            "kwargs": dict(kwargs or {}),
        }
    raise UserError(
        f"nothing to compute in a {describe(obj)}: submit a Dask collection (array, "
        "dataframe, bag, delayed), a list or dict of them, or a function"
    )


@functools.cache
def _job_sys_path(python: str, cwd: str) -> tuple[str, ...]:
    """``sys.path`` of a fresh ``python`` started in ``cwd``, as the job's will be.

    It includes what a plain interpreter sees (site-packages, editable installs,
    ``$PYTHONPATH``), but not what this process added at run time (a test runner's
    folders, a notebook's ``sys.path.append``).
    """
    import json
    import subprocess

    try:
        done = subprocess.run(
            [python, "-c", "import json, sys; print(json.dumps(sys.path))"],
            capture_output=True, text=True, timeout=60, cwd=cwd, check=True,
        )  # fmt: skip
        entries = json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        entries = [p for p in sys.path if "site-packages" in p or p.startswith(sys.base_prefix)]
    return tuple(os.path.realpath(os.path.join(cwd, p)) for p in ["", *entries])


def _importable(name: str, path: str, roots: Sequence[str]) -> bool:
    """Whether ``import name`` from one of ``roots`` finds the file at ``path``."""
    for root in roots:
        base = os.path.join(root, *name.split("."))
        if path in (base + ".py", os.path.join(base, "__init__.py")) or path.startswith(base + "."):
            return True
    return False


def _local_modules(work: Mapping[str, Any], python: str) -> list[Any]:
    """Modules of the shipped function that the job could not import by name.

    A function is pickled by reference (module and name), which works when the job
    can import its module: installed packages and modules in the working directory
    (the job starts there). A module found only through a ``sys.path`` entry of this
    process (a notebook's sibling directory, a test folder) is shipped by value.
    """
    function = work.get("function")
    name = getattr(function, "__module__", None)
    module = sys.modules.get(name) if isinstance(name, str) else None
    path = getattr(module, "__file__", None)
    if module is None or not isinstance(name, str) or name == "__main__" or not path:
        return []
    if _importable(name, os.path.realpath(path), _job_sys_path(python, os.getcwd())):
        return []
    return [module]


def serialise(work: Mapping[str, Any], limit: int, python: str = sys.executable) -> bytes:
    """The ``input.pkl`` envelope of ``work``; UserError if it does not pickle or is too big."""
    import cloudpickle

    from jobstrap.config.units import format_memory

    by_value = _local_modules(work, python)
    for module in by_value:
        cloudpickle.register_pickle_by_value(module)
    try:
        body = cloudpickle.dumps(dict(work), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as error:
        raise UserError(
            f"cannot serialise the {work['kind']} for the job: {error} (everything the graph "
            "or function refers to must pickle; open files, locks and clients do not)"
        ) from error
    finally:
        for module in by_value:
            cloudpickle.unregister_pickle_by_value(module)
    if len(body) > limit:
        raise UserError(
            f"the {work['kind']} serialises to {format_memory(len(body))}, more than "
            f"max_input_size={format_memory(limit)}: data embedded in it (a NumPy array "
            "wrapped with da.from_array, a big closure or argument) travels through the "
            "file system and the scheduler; read the data inside the graph instead "
            "(da.from_zarr, dd.read_parquet, dask.delayed(load)(path)) or raise "
            "max_input_size"
        )
    envelope = {"format": 1, "kind": work["kind"], "versions": versions(), "body": body}
    return pickle.dumps(envelope, protocol=pickle.HIGHEST_PROTOCOL)


def write_input(run: RunDir, envelope: bytes) -> None:
    """Write the envelope as the run's ``input.pkl`` (framed, 0600, atomically)."""
    write_framed(run.input_file, envelope)
