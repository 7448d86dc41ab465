"""The runtime monitor: tenancy detection and switching between the fast and hardened caches."""
