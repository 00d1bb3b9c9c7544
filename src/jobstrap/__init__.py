"""jobstrap: Dask on HPC batch systems.

Importing this package has no side effects: no files written, no signal handlers
installed, no network calls. Heavy parts (``distributed``) load lazily on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
