"""Batch control: the only code that runs batch-system commands (submit, status,
cancel), with retries, a rate limit and one watcher per process.
"""
