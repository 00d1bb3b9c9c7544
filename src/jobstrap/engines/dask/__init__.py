"""Dask's engine: scheduler and worker servers, the graph runner, dask-mpi
compatibility, same-host comms and the scheduler job's watchdog plugin.
"""
