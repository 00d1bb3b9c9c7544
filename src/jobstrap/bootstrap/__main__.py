"""``python -m jobstrap.bootstrap``: see :mod:`jobstrap.bootstrap.main`."""

from __future__ import annotations

from jobstrap.bootstrap.main import main

if __name__ == "__main__":
    raise SystemExit(main())
