"""``distributed.Security`` as a run uses it: listeners issue no TLS session tickets.

In TLS 1.3 a server sends session tickets after every handshake (two by default in
OpenSSL) so that a client may resume the session later. ``distributed`` never
resumes one: each connection is a full handshake. The tickets are pure cost, paid
by the process that listens, which is the scheduler when a thousand workers
connect at once: with OpenSSL 3.0 a listener's half of a handshake with the run's
P-256 certificates costs ~1.6 ms of CPU with the tickets and ~1.2 ms without
(``docs/scale.md``). Without tickets there is also no resumption secret to leak.

Imported only where a ``Security`` is built (it imports ``distributed``).
"""

from __future__ import annotations

import ssl
from typing import Any

from distributed import Security

__all__ = ["RunSecurity"]


class RunSecurity(Security):
    """A ``distributed.Security`` whose listening contexts send no session tickets."""

    def _get_tls_context(self, tls: dict[str, Any], purpose: ssl.Purpose) -> Any:
        context = super()._get_tls_context(tls, purpose)  # type: ignore[no-untyped-call]
        # CLIENT_AUTH is the purpose of a server-side context (it authenticates clients).
        if context is not None and purpose == ssl.Purpose.CLIENT_AUTH:
            context.num_tickets = 0
        return context
