"""The embedded batch system: a spool of jobs run as local process groups, with
sbatch-like commands (``python -m jobstrap.localq``). Used by the ``local`` system.
"""
