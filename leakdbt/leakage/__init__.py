"""Leakage checking: what an adversary can observe of a run, compared across secrets."""
