"""The trip count of a counted loop, exactly (plugins/support/arm_loop.py): a counter
stepped by a constant modulo its width, tested at the end of each iteration by the step's
own flags or a later ``cmp``/``test``, and the ``j<cc>`` that stays in the loop.

:func:`trips_of` computes each iteration's flags with Python integers at the instruction's
width (CF, ZF, SF, OF as the Intel SDM defines them for ``add``/``sub``/``cmp``/``test``),
so wrap-around, signed and unsigned exits and steps that do not divide the distance are
exact; an exit on equality is solved at once (:func:`equal_exit`), however large."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CARRY", "CONDITIONS", "MAX_TRIPS", "ExitTest", "Step", "equal_exit", "trips_of"]

MAX_TRIPS = 1 << 16
"""The largest trip count a loop in an arm may have (each iteration runs every time)."""


@dataclass(frozen=True)
class Step:
    """The counter's step: ``c += delta`` modulo ``2**width`` (``sub``/``add`` of an
    immediate, ``inc``, ``dec``); ``carry``: it sets CF (not ``inc``/``dec``); ``subtract``:
    its flags are those of a subtraction of ``-delta`` (``sub``, ``dec``: CF is the borrow)."""

    counter: str  # 64-bit name
    width: int
    delta: int  # modulo 2**width
    carry: bool = True
    subtract: bool = False

    @property
    def stride(self) -> int:
        """The step as a signed number."""
        half = 1 << (self.width - 1)
        return self.delta - (1 << self.width) if self.delta >= half else self.delta


@dataclass(frozen=True)
class ExitTest:
    """The latch's last flags write, on the counter: ``step`` (the step's own flags),
    ``cmp`` (``cmp c, E``), ``rcmp`` (``cmp E, c``) or ``test`` (``test c, c``), at
    ``width`` bits; then ``j<cc>``, which stays in the loop when its condition is
    ``stays``."""

    kind: str
    width: int
    cc: str
    stays: bool


CONDITIONS: dict[str, Callable[[bool, bool, bool, bool], bool]] = {  # cc -> f(cf, zf, sf, of)
    "e": lambda cf, zf, sf, of: zf, "ne": lambda cf, zf, sf, of: not zf,
    "b": lambda cf, zf, sf, of: cf, "ae": lambda cf, zf, sf, of: not cf,
    "be": lambda cf, zf, sf, of: cf or zf, "a": lambda cf, zf, sf, of: not (cf or zf),
    "l": lambda cf, zf, sf, of: sf != of, "ge": lambda cf, zf, sf, of: sf == of,
    "le": lambda cf, zf, sf, of: zf or sf != of, "g": lambda cf, zf, sf, of: not zf and sf == of,
    "s": lambda cf, zf, sf, of: sf, "ns": lambda cf, zf, sf, of: not sf,
}
CARRY = frozenset({"b", "ae", "be", "a"})


def _flags(a: int, b: int, width: int, add: bool) -> tuple[bool, bool, bool, bool]:
    """CF, ZF, SF, OF of ``a + b`` (``add``) or ``a - b`` on ``width``-bit operands."""
    top, mask = 1 << (width - 1), (1 << width) - 1
    r = (a + b if add else a - b) & mask
    cf = a + b > mask if add else a < b
    sa, sb, sr = bool(a & top), bool(b & top), bool(r & top)
    of = sa == sb != sr if add else sa != sb and sr != sa
    return cf, r == 0, sr, of


def trips_of(start: int, step: Step, test: ExitTest, end: int, limit: int = MAX_TRIPS
             ) -> int | None:
    """How many iterations a loop runs that is entered with its counter at ``start`` and
    tests at the end of each iteration (the latch, or the header that steps and tests: a
    do-while, so at least one): the first ``j >= 1`` at which ``test`` (``end``: its ``E``)
    leaves the loop after ``j`` steps, or None when that is after ``limit``.  Exact: every
    iteration is computed with the instruction's wrap at its width (an exit on equality is
    solved at once, :func:`equal_exit`)."""
    if test.kind == "step" and test.cc in CARRY and not step.carry:
        return None  # inc/dec keep CF: the test reads a flag from before the loop
    if (test.cc == "ne") == test.stays and test.cc in ("e", "ne"):
        exact = equal_exit(start, step, test, end)
        return exact if exact is not None and exact <= limit else None
    smask, cmask = (1 << step.width) - 1, (1 << test.width) - 1
    condition = CONDITIONS[test.cc]
    v, e = start & smask, end & cmask
    for j in range(1, limit + 1):
        before, v = v, (v + step.delta) & smask
        if test.kind == "step":
            f = _flags(before, -step.delta & smask, step.width, False) if step.subtract \
                else _flags(before, step.delta, step.width, True)
            if not step.carry:
                f = (False, *f[1:])
        elif test.kind == "test":
            a = v & cmask
            f = (False, a == 0, bool(a >> (test.width - 1)), False)
        elif test.kind == "cmp":
            f = _flags(v & cmask, e, test.width, False)
        else:
            f = _flags(e, v & cmask, test.width, False)
        if condition(*f) != test.stays:
            return j
    return None


def equal_exit(start: int, step: Step, test: ExitTest, end: int) -> int | None:
    """For a test that leaves the loop when the counter equals its end (``jne`` staying,
    ``je`` leaving; the flags of the step, ``test c, c`` or ``cmp``): the exact trip count
    however large (the least ``j >= 1`` with ``start + j * delta`` = the end modulo the
    width), or None when the counter never reaches it."""
    if test.cc not in ("e", "ne") or (test.cc == "ne") != test.stays:
        return None
    target = 0 if test.kind in ("step", "test") else end & ((1 << test.width) - 1)
    w = min(step.width, test.width)
    if target >> w:
        return None  # a 64-bit end above the 32-bit counter's reach
    modulus = 1 << w
    delta, rhs = step.delta % modulus, (target - start) % modulus
    g = math.gcd(delta, modulus)
    if rhs % g:
        return None
    m = modulus // g
    j = (rhs // g) * pow(delta // g, -1, m) % m if m > 1 else 0
    return j or m
