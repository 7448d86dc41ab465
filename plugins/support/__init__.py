"""Machinery shared by the built-in passes and detectors (not entry points)."""
