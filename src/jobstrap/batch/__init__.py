"""Apps and graphs as batch jobs (client side): ``submit()``, ``BatchClient``,
``JobFuture`` and progress.
"""
