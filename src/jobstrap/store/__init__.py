"""What is kept on disk: the run directory layout and the registry of runs."""
