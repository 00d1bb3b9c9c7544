"""``python -m jobstrap`` runs the command line."""

from jobstrap.cli import main

main()
