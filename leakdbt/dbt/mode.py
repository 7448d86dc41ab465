"""Which block cache a contract region runs from: a module of its own, so that a run without
regions (plain ``leakdbt exec``) can name the default without importing the translator."""

from __future__ import annotations

import enum


class Mode(enum.Enum):
    """Which block cache a region runs from."""

    FAST = "fast"  # the original code
    HARDENED = "hardened"  # the translated copy
