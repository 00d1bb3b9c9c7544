"""Engines: what runs inside the jobs (Dask today). Each engine is one package that the
job side (:mod:`jobstrap.bootstrap`) finds by name; an engine imports nothing from the
client side.
"""
