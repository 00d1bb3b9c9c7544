"""Apps and graphs as batch jobs (client side).

``client`` (``submit()``, ``submit_app()``, ``BatchClient``), ``package`` (what is
shipped into the job), ``submit`` (the one submission pipeline), ``future``
(``JobFuture``), ``remote`` (the job's exceptions rebuilt here), ``progress`` and
``raycluster`` (``RayCluster``, a Ray cluster job for drivers on this machine).
"""
