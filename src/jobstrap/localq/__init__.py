"""The embedded batch system: a spool of jobs run as local process groups, with
sbatch-like commands (``python -m jobstrap.localq``). Used by the ``local`` system,
only through that command line (as Slurm is used through ``sbatch``).

Modules: ``cli`` (argument parsing, ``main``), ``submit`` (queue a script, start its
supervisor), ``supervisor`` (the detached per-job process enforcing the walltime),
``control`` (status, cancel, signal, find), ``launch`` (N ranks without MPI),
``directives`` (``#JOBSTRAP`` options), ``processes`` (a task's processes and their
signals), ``spool`` (the job records on disk and their locks).
"""
