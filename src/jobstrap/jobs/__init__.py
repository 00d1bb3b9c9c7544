"""What one batch job is, before any batch system sees it: the job spec, how its
tasks are launched (srun, mpiexec), the rendered script, and why a job failed.
Pure: no I/O beyond reading templates.
"""
