"""SSH tunnels to a run's dashboard (and scheduler), or to a Prometheus, from a laptop.

The scheduler of a run lives on a compute node behind a login node; a browser on a
laptop reaches it only through ``ssh -L``. This module has two halves:

* a pure *plan* (:class:`TunnelPlan`): where to forward what, and the exact ``ssh``
  argv that does it. It is built from a run's ``info.json`` (:func:`plan_for`) and
  tested by its output alone;
* a *keeper* (:class:`TunnelKeeper`): runs that argv, waits until the local port
  answers, and when ``ssh`` exits (network blip, laptop suspend, killed) starts it
  again with exponential backoff.

SSH is used only for the tunnel, with the user's own ``~/.ssh/config``, keys and
agent; nothing is ever submitted through it. Forwarded ports listen on the laptop's
loopback only, so nobody else on a café network reaches the dashboard.

:func:`dashboard_link` is what a cluster object shows as its ``dashboard_link`` when
a tunnel is configured (``JOBSTRAP_TUNNEL_VIA`` or the profile's ``tunnel_via``).
"""

from __future__ import annotations

from jobstrap.backoff import Backoff
from jobstrap.tools.tunnel.keeper import TunnelKeeper, port_open
from jobstrap.tools.tunnel.plans import (
    DEFAULT_SSH_OPTIONS,
    PROMETHEUS_PORT,
    VIA_ENV,
    Forward,
    TunnelPlan,
    dashboard_link,
    free_local_port,
    plan_for,
    prometheus_plan,
    resolve_via,
)
from jobstrap.tools.tunnel.targets import (
    Endpoint,
    RunTarget,
    find_target,
    parse_endpoint,
    remote_target,
    remote_target_argv,
    target_from_info,
)

__all__ = [
    "DEFAULT_SSH_OPTIONS",
    "PROMETHEUS_PORT",
    "VIA_ENV",
    "Backoff",
    "Endpoint",
    "Forward",
    "RunTarget",
    "TunnelKeeper",
    "TunnelPlan",
    "dashboard_link",
    "find_target",
    "free_local_port",
    "parse_endpoint",
    "plan_for",
    "port_open",
    "prometheus_plan",
    "remote_target",
    "remote_target_argv",
    "resolve_via",
    "target_from_info",
]
