"""Networks and trust, for both sides: interface choice (``ib*`` before Ethernet),
per-run TLS material.
"""
