"""Notebook clusters (client side): ``SLURMCluster``, ``PBSCluster`` and
``LocalBatchCluster`` on distributed's ``SpecCluster``, counting in jobs.
"""
