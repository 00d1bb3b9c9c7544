"""Client-side tools around runs: ``jobstrap doctor`` and SSH tunnels."""
