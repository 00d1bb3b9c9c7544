"""``python -m jobstrap.localq``: the embedded batch system's command line."""

from __future__ import annotations

import sys

from jobstrap.localq.cli import main

if __name__ == "__main__":
    sys.exit(main())
