"""Prometheus discovery, scrape configuration, alert rules and dashboards of runs.

Shared by both sides: the job side (a run's scheduler) writes a run's targets file
(:mod:`jobstrap.metrics.targets`), the client side prints what a Prometheus needs to
read them (:mod:`jobstrap.metrics.assets`). :mod:`jobstrap.metrics.pki` keeps the
per-user client certificate a Prometheus presents to the runs' metrics endpoints
(mutual TLS; see docs/metrics.md). :mod:`jobstrap.metrics.jobs` turns a notebook
cluster's job book into Prometheus metrics. Nothing here imports Dask, and
``prometheus_client`` only where metrics are served.
"""
