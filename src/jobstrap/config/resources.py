"""Find the shipped ``templates/`` and ``configs/`` directories.

In a wheel they are package data under ``jobstrap/_data/``; in a checkout (editable
install) they are the repository's top-level directories. Looking in both keeps one
copy of each file in the repository.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent  # src/jobstrap


@cache
def _find(name: str) -> Path:
    packaged = _PACKAGE / "_data" / name
    if packaged.is_dir():
        return packaged
    checkout = _PACKAGE.parent.parent / name  # src/jobstrap -> repository root
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"jobstrap installation is missing its {name}/ directory")


def templates_dir() -> Path:
    """Directory of the shipped job-script templates."""
    return _find("templates")


def configs_dir() -> Path:
    """Directory of the shipped site profiles."""
    return _find("configs")
