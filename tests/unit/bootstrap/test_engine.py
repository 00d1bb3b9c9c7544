"""Finding the engine by name, and what finding it must not import."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from jobstrap.bootstrap.engine import get_engine
from jobstrap.bootstrap.options import parse_args
from jobstrap.errors import UserError


def test_dask_is_the_default_engine() -> None:
    assert get_engine().name == "dask"
    assert parse_args(["--run-dir", "/r"]).engine == "dask"
    assert parse_args(["--run-dir", "/r", "--engine", "other"]).engine == "other"


@pytest.mark.parametrize("name", ["nosuchengine", "../dask", ""])
def test_an_unknown_engine_is_a_usage_error(name: str) -> None:
    with pytest.raises(UserError, match="no engine named"):
        get_engine(name)


def test_finding_the_engine_imports_neither_dask_nor_mpi() -> None:
    # The bootstrap gets its engine before MPI is initialised.
    probe = textwrap.dedent(
        """
        import sys
        import jobstrap.bootstrap.main
        from jobstrap.bootstrap.engine import get_engine
        get_engine("dask")
        print(sorted(m for m in ("dask", "distributed", "mpi4py", "numpy") if m in sys.modules))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()

    assert out == "[]"


def test_an_unknown_engine_ends_the_bootstrap_with_code_2() -> None:
    # In a process of its own: the bootstrap configures logging and signals.
    done = subprocess.run(
        [sys.executable, "-m", "jobstrap.bootstrap", "--run-dir", "/r", "--engine", "nosuch"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 2
    assert "no engine named 'nosuch'" in done.stderr
