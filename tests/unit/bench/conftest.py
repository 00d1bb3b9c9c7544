"""bench/ is a folder of scripts that import each other by name (``from stats import ...``):
put it on the path for its tests."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
