"""The framed run files of function and graph jobs: ``input.pkl``, ``result.pkl``, ``error.pkl``.

Every engine's runner reads what the submitting side shipped and writes its outcome
in the same format, and the submitting side reads it back, so the format lives here,
below both sides:

* a file is *framed*: a magic line, the payload's length and its SHA-256, then the
  payload. A reader checks all three, so a file cut short (a full disk, a node that
  died mid-write, a copy in progress) is never mistaken for a result, even where a
  rename is not atomic;
* ``input.pkl`` is an envelope (format, kind, the versions it was made with, the
  cloudpickled body); ``error.pkl`` is the exception (pickled when it pickles), its
  type, message, traceback text and host.

Importing this module imports no engine and no cloudpickle.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import platform
import socket
import sys
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jobstrap.store.rundir import RunDir, atomic_write_bytes, read_private_bytes

__all__ = [
    "MAGIC",
    "CorruptRunFileError",
    "error_payload",
    "frame",
    "load_work",
    "read_framed",
    "read_payload",
    "unframe",
    "version_mismatch",
    "versions",
    "write_framed",
]

#: First bytes of every framed run file (format version 1).
MAGIC = b"JOBSTRAP-FRAMED-1\n"
_LENGTH = 8
_DIGEST = 32


class CorruptRunFileError(ValueError):
    """A framed run file is truncated, padded or damaged (length or checksum mismatch)."""


def frame(payload: bytes) -> bytes:
    """``payload`` with its header: magic, 8-byte big-endian length, SHA-256."""
    header = MAGIC + len(payload).to_bytes(_LENGTH, "big") + hashlib.sha256(payload).digest()
    return header + payload


def unframe(data: bytes, name: str = "run file") -> bytes:
    """The payload of a framed file, after checking its length and checksum.

    Raises
    ------
    CorruptRunFileError
        The magic, the length or the checksum does not match.
    """
    head = len(MAGIC) + _LENGTH + _DIGEST
    if not data.startswith(MAGIC):
        raise CorruptRunFileError(f"{name}: not a jobstrap run file (bad header)")
    if len(data) < head:
        raise CorruptRunFileError(f"{name}: truncated header ({len(data)} bytes)")
    length = int.from_bytes(data[len(MAGIC) : len(MAGIC) + _LENGTH], "big")
    digest = data[len(MAGIC) + _LENGTH : head]
    payload = data[head:]
    if len(payload) != length:
        raise CorruptRunFileError(f"{name}: expected {length} payload bytes, found {len(payload)}")
    if hashlib.sha256(payload).digest() != digest:
        raise CorruptRunFileError(f"{name}: checksum mismatch")
    return payload


def write_framed(path: str | os.PathLike[str], payload: bytes) -> Path:
    """Write ``payload`` framed, atomically (temporary file, fsync, rename), 0600."""
    return atomic_write_bytes(path, frame(payload))


def read_framed(path: str | os.PathLike[str]) -> bytes:
    """Read and check a framed file (``FileNotFoundError``, :class:`CorruptRunFileError`)."""
    return unframe(read_private_bytes(path), os.fspath(path))


def read_payload(path: str | os.PathLike[str]) -> Any:
    """Unpickle a framed file's payload (a plain pickle of builtins)."""
    return pickle.loads(read_framed(path))


def versions() -> dict[str, str]:
    """Versions that must agree between the submitting side and the job."""
    found = {"python": platform.python_version()}
    for module in ("cloudpickle", "dask", "distributed", "numpy", "pandas", "ray"):
        imported = sys.modules.get(module)
        if imported is not None:
            found[module] = str(getattr(imported, "__version__", "?"))
    return found


def version_mismatch(shipped: Mapping[str, str]) -> str:
    """What differs between the versions ``shipped`` with the input and this process's."""
    # Import what the input was made with, so the comparison covers the same modules.
    for module in shipped:
        if module != "python":
            with contextlib.suppress(ImportError):
                __import__(module)
    here = versions()
    differences = [
        f"{name} {shipped[name]} (submitted) vs {here.get(name, 'missing')} (job)"
        for name in sorted(shipped)
        if here.get(name) != shipped[name] and name != "python"
    ]
    submitted_py = shipped.get("python", "?").rsplit(".", 1)[0]
    if submitted_py != here["python"].rsplit(".", 1)[0]:
        differences.insert(0, f"python {shipped.get('python')} (submitted) vs {here['python']}")
    return "; ".join(differences)


def load_work(run: RunDir) -> dict[str, Any]:
    """What the submitting side shipped in ``input.pkl`` (a dict with its ``kind``).

    Raises
    ------
    RuntimeError
        Nothing was shipped, or it cannot be loaded here (the versions that differ said).
    """
    try:
        envelope = read_payload(run.input_file)
    except FileNotFoundError:
        raise RuntimeError(f"{run.input_file} does not exist: nothing was shipped") from None
    import cloudpickle

    try:
        work = cloudpickle.loads(envelope["body"])
    except Exception as error:
        mismatch = version_mismatch(envelope.get("versions", {}))
        hint = f" (versions differ: {mismatch})" if mismatch else ""
        raise RuntimeError(f"cannot load what was submitted{hint}: {error!r}") from error
    if not isinstance(work, dict) or "kind" not in work:
        raise RuntimeError(f"{run.input_file}: unexpected content")
    return work


def error_payload(error: BaseException) -> bytes:
    """``error.pkl``'s payload for ``error`` (rebuilt by ``jobstrap.batch.remote``)."""
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    pickled: bytes | None
    try:
        import cloudpickle

        pickled = cloudpickle.dumps(error)
    except Exception:  # an exception that cannot travel still travels as text
        pickled = None
    return pickle.dumps(
        {
            "type": type(error).__qualname__,
            "module": type(error).__module__,
            "message": str(error),
            "traceback": text,
            "exception": pickled,
            "host": socket.gethostname(),
            "time": time.time(),
            "versions": versions(),
        },
        protocol=pickle.HIGHEST_PROTOCOL,
    )
