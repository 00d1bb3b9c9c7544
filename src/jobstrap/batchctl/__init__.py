"""Batch control: the only code that runs batch-system commands (submit, status,
cancel), with retries, a rate limit and one watcher per process.

Importing this package starts no thread: a watcher's thread starts with its first
tracked job.
"""

from jobstrap.batchctl.control import BatchControl

__all__ = ["BatchControl"]
