"""Byte-level taint semantics of vector shuffles, unpacks, lane-wise arithmetic and compares,
and of bit-manipulation instructions, as pure functions on label lists.

Each function takes the labels of an instruction's sources (one label set per byte, byte 0
first) and its immediate (or a concrete control value) and returns the labels of its result.
They know nothing of operands, registers or the shadow state: :mod:`leakdbt.analysis.rules`
decodes the operands, calls these functions and registers the resulting rules in its
``RULES`` table.  This module is the lower layer and imports nothing from ``rules``.

Conventions:

- vector sources are 16 bytes (xmm) or 32 (ymm: the rules module gives the upper 16 bytes of
  a ymm register the union of the lower 16); instructions that work per 128-bit lane apply
  the same function to each 16-byte chunk (:func:`per_lane`);
- "lane-wise" (``lanes``): every byte of an ``size``-byte element of the result gets the union
  of that element's bytes in every source (carries, saturation and comparisons stay inside
  an element, but can cross bytes);
- where the result depends on a control value (``pshufb``'s mask, a shift count in a
  register) the rule is precise only when the control is clean and its concrete value is
  known, and conservative otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import reduce
from operator import or_

Labels = list[int]


def union(labels: Sequence[int]) -> int:
    """The union of a list of label sets."""
    return reduce(or_, labels, 0)


def fit(labels: Sequence[int], n: int) -> Labels:
    """``labels`` truncated or zero-padded to ``n`` bytes."""
    return list(labels[:n]) + [0] * (n - len(labels))


def per_lane(fn: Callable[[Labels, Labels], Labels], a: Sequence[int],
             b: Sequence[int]) -> Labels:
    """Apply a two-source 16-byte function to each 128-bit lane (``b`` is padded to ``a``)."""
    b = fit(b, len(a))
    out: Labels = []
    for s in range(0, max(len(a), 16), 16):
        out += fn(fit(a[s:s + 16], 16), fit(b[s:s + 16], 16))
    return out


# -- lane-wise arithmetic, compares, min/max, averages --------------------------------------


def lanes(size: int, *sources: Sequence[int]) -> Labels:
    """Lane-wise: each byte of element i = union of element i's bytes in every source."""
    n = len(sources[0])
    out: Labels = []
    for s in range(0, n, size):
        t = 0
        for src in sources:
            t |= union(src[s:s + size])
        out += [t] * min(size, n - s)
    return out


def pack(size: int, a: Sequence[int], b: Sequence[int]) -> Labels:
    """packss/packus: ``size``-byte elements of a then b saturate to half-size elements, each
    of whose bytes depends on the whole input element (per 128-bit lane)."""
    def one(x: Labels, y: Labels) -> Labels:
        out: Labels = []
        for src in (x, y):
            for s in range(0, 16, size):
                out += [union(src[s:s + size])] * (size // 2)
        return out
    return per_lane(one, a, b)


def extend(src: Sequence[int], from_size: int, to_size: int, signed: bool) -> Labels:
    """pmovzx/pmovsx: element i of ``from_size`` bytes widened to ``to_size`` bytes (zero
    extension is clean; sign extension copies the element's top byte)."""
    out: Labels = []
    for i in range(16 // to_size):
        el = fit(src[i * from_size:(i + 1) * from_size], from_size)
        out += el + [el[-1] if signed else 0] * (to_size - from_size)
    return out


def sad(a: Sequence[int], b: Sequence[int]) -> Labels:
    """psadbw: per 8-byte half, a 16-bit sum of the 8 absolute differences (the upper 6 bytes
    of each half are always zero)."""
    out: Labels = []
    for s in range(0, len(a), 8):
        t = union(a[s:s + 8]) | union(b[s:s + 8])
        out += [t, t, 0, 0, 0, 0, 0, 0]
    return out


# -- shuffles and unpacks -------------------------------------------------------------------


def unpack(size: int, high: bool, a: Sequence[int], b: Sequence[int]) -> Labels:
    """punpckl*/punpckh* (and unpcklps/...): interleave the ``size``-byte elements of the low
    (or high) halves of a and b, per 128-bit lane."""
    def one(x: Labels, y: Labels) -> Labels:
        off = 8 if high else 0
        out: Labels = []
        for s in range(off, off + 8, size):
            out += x[s:s + size] + y[s:s + size]
        return out
    return per_lane(one, a, b)


def pshufd(src: Sequence[int], imm: int) -> Labels:
    """pshufd: dword i of each 128-bit lane = dword ``imm[2i+1:2i]`` of the source's lane."""
    out: Labels = []
    for s in range(0, max(len(src), 16), 16):
        lane = fit(src[s:s + 16], 16)
        for i in range(4):
            k = (imm >> (2 * i)) & 3
            out += lane[4 * k:4 * k + 4]
    return out


def pshufw(src: Sequence[int], imm: int, high: bool) -> Labels:
    """pshuflw/pshufhw: shuffle the low (high) four words by ``imm``; the other half copies."""
    out: Labels = []
    for s in range(0, max(len(src), 16), 16):
        lane = fit(src[s:s + 16], 16)
        off = 8 if high else 0
        words = [lane[off + 2 * ((imm >> (2 * i)) & 3):off + 2 * ((imm >> (2 * i)) & 3) + 2]
                 for i in range(4)]
        shuffled = [t for w in words for t in w]
        out += lane[:8] + shuffled if high else shuffled + lane[8:]
    return out


def pshufb(a: Sequence[int], mask: Sequence[int], values: bytes | None) -> Labels:
    """pshufb: byte j = 0 if mask byte j has its top bit set, else a[mask[j] & 15] (per
    128-bit lane), plus the mask byte's own labels.  A tainted mask byte, or one whose value
    is unknown, gives the union of the whole lane of a."""
    out: Labels = []
    for s in range(0, max(len(a), 16), 16):
        lane = fit(a[s:s + 16], 16)
        every = union(lane)
        for j in range(16):
            mt = mask[s + j] if s + j < len(mask) else 0
            v = values[s + j] if values is not None and s + j < len(values) else None
            if mt or v is None:
                out.append(mt | every)
            else:
                out.append(0 if v & 0x80 else lane[v & 15])
    return out


def palignr(imm: int, a: Sequence[int], b: Sequence[int]) -> Labels:
    """palignr: the 32 bytes a:b (b low) shifted right by ``imm`` bytes, low 16 kept (per
    128-bit lane)."""
    def one(x: Labels, y: Labels) -> Labels:
        cat = y + x
        return [cat[j + imm] if j + imm < 32 else 0 for j in range(16)]
    return per_lane(one, a, b)


def byte_shift(src: Sequence[int], count: int, left: bool) -> Labels:
    """pslldq/psrldq: shift each 128-bit lane by ``count`` bytes, filling with zeros."""
    out: Labels = []
    for s in range(0, max(len(src), 16), 16):
        lane = fit(src[s:s + 16], 16)
        if left:
            out += [lane[j - count] if 0 <= j - count < 16 else 0 for j in range(16)]
        else:
            out += [lane[j + count] if j + count < 16 else 0 for j in range(16)]
    return out


def shufps(imm: int, a: Sequence[int], b: Sequence[int]) -> Labels:
    """shufps: dwords 0-1 from a, 2-3 from b, each chosen by two bits of ``imm``."""
    def one(x: Labels, y: Labels) -> Labels:
        out: Labels = []
        for i, src in enumerate((x, x, y, y)):
            k = (imm >> (2 * i)) & 3
            out += src[4 * k:4 * k + 4]
        return out
    return per_lane(one, a, b)


def shufpd(imm: int, a: Sequence[int], b: Sequence[int]) -> Labels:
    """shufpd: qword 0 = a's qword imm[0], qword 1 = b's qword imm[1] (per 128-bit lane; a
    256-bit form takes imm[3:2] for the upper lane)."""
    out: Labels = []
    a, b = list(a), fit(b, len(a))
    for n, s in enumerate(range(0, max(len(a), 16), 16)):
        x, y = fit(a[s:s + 16], 16), fit(b[s:s + 16], 16)
        k0, k1 = (imm >> (2 * n)) & 1, (imm >> (2 * n + 1)) & 1
        out += x[8 * k0:8 * k0 + 8] + y[8 * k1:8 * k1 + 8]
    return out


def insert(dst: Sequence[int], src: Sequence[int], size: int, index: int) -> Labels:
    """pinsr*: element ``index`` (of ``size`` bytes) of dst replaced by src's low bytes."""
    out = fit(dst, 16)
    at = (index % (16 // size)) * size
    out[at:at + size] = fit(src, size)
    return out


def extract(src: Sequence[int], size: int, index: int) -> Labels:
    """pextr*: element ``index`` (of ``size`` bytes) of src."""
    at = (index % (16 // size)) * size
    return fit(src[at:at + size], size)


def movmsk(src: Sequence[int], size: int) -> Labels:
    """movmskps/pd, pmovmskb: bit i = the sign of element i, taken from its top byte; the
    result is a 32-bit register, its bytes beyond the mask's bits clean."""
    out = [0, 0, 0, 0]
    for i in range(len(src) // size):
        out[i // 8] |= src[i * size + size - 1]
    return out


# -- shifts, by bits --------------------------------------------------------------------------


def shift_bytes(src: Sequence[int], count: int, kind: str) -> Labels:
    """An integer of len(src) bytes shifted by ``count`` bits (``kind``: 'l' left, 'r'
    logical right, 'a' arithmetic right): byte j gets the source bytes its bits come from
    (a count of the width or more: zero, or all sign for 'a')."""
    size = len(src)
    bits = 8 * size
    k = min(count, bits)
    out: Labels = []
    for j in range(size):
        if kind == "l":
            lo, hi = 8 * j - k, 8 * j + 7 - k
        else:
            lo, hi = 8 * j + k, 8 * j + 7 + k
        t = 0
        if hi >= 0:
            for b in range(max(lo, 0) // 8, min(hi, bits - 1) // 8 + 1):
                t |= src[b]
        if kind == "a" and hi > bits - 1:
            t |= src[-1]
        out.append(t)
    return out


def lane_shift(src: Sequence[int], size: int, count: int, kind: str) -> Labels:
    """psll/psrl/psra by a known count: :func:`shift_bytes` within each element."""
    out: Labels = []
    for s in range(0, len(src), size):
        out += shift_bytes(src[s:s + size], count, kind)
    return out


def rotate_bytes(src: Sequence[int], count: int) -> Labels:
    """An integer rotated right by ``count`` bits: byte j gets the (one or two) source bytes
    its bits come from."""
    size = len(src)
    bits = 8 * size
    k = count % bits
    return [src[((8 * j + k) % bits) // 8] | src[((8 * j + 7 + k) % bits) // 8]
            for j in range(size)]


def prefix(src: Sequence[int]) -> Labels:
    """Byte j = union of bytes 0..j: results whose bit i depends on the bits at or below i
    (blsi/blsr/blsmsk borrows, left shifts by an unknown count)."""
    out: Labels = []
    t = 0
    for x in src:
        t |= x
        out.append(t)
    return out


def suffix(src: Sequence[int]) -> Labels:
    """Byte j = union of bytes j..n-1: results whose bit i depends on the bits at or above i
    (right shifts by an unknown count, pext)."""
    return prefix(list(src)[::-1])[::-1]
