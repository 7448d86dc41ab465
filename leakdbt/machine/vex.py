"""Find VEX-encoded vector instructions, which Unicorn (QEMU 5 TCG) executes with wrong results.

Unicorn decodes the VEX prefix but runs e.g. ``vpxor xmm0, xmm1, xmm2`` as the two-operand SSE
``pxor xmm0, xmm2``, silently.  The guest CPU does not advertise AVX, so correct programs never
pick such code at run time; a program built with ``-mavx`` runs it unconditionally.  We vet each
code page the first time the guest may execute it (the TLB fill of an executable page) with a
linear sweep, and the machine plants a one-instruction hook on every vector VEX instruction
found: the hook stops the guest with a clear error only if that instruction really runs.

EVEX (0x62) needs no hook: it is BOUND in 64-bit mode, so the engine raises #UD and the fault
handler names it.  BMI1/BMI2 use VEX on general-purpose registers and are emulated correctly.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
from functools import cache
from typing import Any

# VEX.0F38 opcodes that are BMI1/BMI2 (andn, blsr/blsmsk/blsi, bzhi/pdep/pext, mulx,
# bextr/shlx/sarx/shrx) and VEX.0F3A F0 (rorx): general-purpose registers only.
_BMI = {(2, 0xF2), (2, 0xF3), (2, 0xF5), (2, 0xF6), (2, 0xF7), (3, 0xF0)}
# Prefixes that may precede VEX: segment overrides and address size.
_VEX_OK_PREFIXES = frozenset((0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x67))
# First bytes an instruction needs for vector_vex_at to say yes: checked before calling it,
# because a page holds about a thousand instructions and only a few start like this.
_VEX_FIRST_BYTES = _VEX_OK_PREFIXES | {0xC4, 0xC5}
SWEEP_BACK = 32  # bytes decoded before a page so the sweep is in step at the page start


@cache
def _disassembler() -> Any:
    import capstone

    return capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)


def vector_vex_at(code: bytes) -> bool:
    """Whether the instruction at the start of ``code`` is a VEX-encoded vector instruction."""
    i = 0
    while i < len(code) and i < 4 and code[i] in _VEX_OK_PREFIXES:
        i += 1
    if i + 3 >= len(code) or code[i] not in (0xC4, 0xC5):
        return False
    if code[i] == 0xC5:
        return True  # two-byte VEX implies map 0F: SSE/AVX or AVX-512 mask instructions
    return (code[i + 1] & 0x1F, code[i + 3]) not in _BMI


def vector_vex_instructions(code: bytes, address: int, start: int, end: int) -> list[int]:
    """Addresses in [start, end) of vector VEX instructions in ``code`` (which begins at
    ``address``), found by a linear sweep that skips undecodable bytes."""
    if b"\xc4" not in code and b"\xc5" not in code:
        return []
    md = _disassembler()
    found: list[int] = []
    offset = 0
    while offset < len(code):
        pos = offset
        for insn_addr, size, _mn, _ops in md.disasm_lite(code[offset:], address + offset):
            if insn_addr >= end:
                return found
            rel = insn_addr - address
            if (insn_addr >= start and code[rel] in _VEX_FIRST_BYTES
                    and vector_vex_at(code[rel:rel + 16])):
                found.append(insn_addr)
            pos = rel + size
        offset = pos + 1 if pos < len(code) else pos  # skip one undecodable byte
    return found


def clusters(addresses: list[int], gap: int) -> list[tuple[int, int]]:
    """``addresses`` (ascending) as ``(first, last)`` runs whose neighbours are at most
    ``gap`` bytes apart."""
    out: list[tuple[int, int]] = []
    for a in addresses:
        if out and a - out[-1][1] <= gap:
            out[-1] = (out[-1][0], a)
        else:
            out.append((a, a))
    return out


SWEEP_CACHE_VERSION = 1
SWEEP_CACHE_LIMIT = 100_000  # entries; a larger cache starts afresh rather than grow forever


def default_cache_dir() -> str | None:
    """Where sweep results are kept across runs: ``$LEAKDBT_CACHE_DIR`` (empty: nowhere),
    else ``$XDG_CACHE_HOME/leakdbt`` or ``~/.cache/leakdbt``."""
    explicit = os.environ.get("LEAKDBT_CACHE_DIR")
    if explicit is not None:
        return explicit or None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "leakdbt")


class SweepCache:
    """Results of :func:`vector_vex_instructions` by a digest of the bytes swept.

    A program's code pages are the same on every run (glibc's 41 pages for a static
    hello-world), and the sweep is a pure function of the bytes, so its results are kept in
    one JSON file per user.  That saves the sweep and the Capstone import at start-up.  A
    missing, unreadable or foreign file is an empty cache; a file that cannot be written is
    not written.  The file is leakdbt's own state: the guest never sees or names it.
    """

    def __init__(self, directory: str | None) -> None:
        self.path = (os.path.join(directory, f"vex-sweeps-v{SWEEP_CACHE_VERSION}.json")
                     if directory else None)
        self._entries: dict[str, list[int]] | None = None  # loaded on first use
        self.hits = self.misses = 0

    def vector_vex_instructions(self, code: bytes, address: int, start: int, end: int
                                ) -> list[int]:
        """:func:`vector_vex_instructions`, from the cache when these bytes were swept
        before (offsets are kept relative to ``address``: PIE code hits too)."""
        entries = self._load()
        key = hashlib.blake2b(code + (start - address).to_bytes(8, "little")
                              + (end - address).to_bytes(8, "little"),
                              digest_size=16).hexdigest()
        offsets = entries.get(key)
        if offsets is not None:
            self.hits += 1
            return [address + o for o in offsets]
        self.misses += 1
        found = vector_vex_instructions(code, address, start, end)
        entries[key] = [a - address for a in found]
        return found

    def save(self) -> None:
        """Write the cache if this run swept anything new (atomically: concurrent runs each
        leave a whole file)."""
        if self.path is None or not self.misses or self._entries is None:
            return
        import tempfile  # only when there is something to write

        entries = self._entries if len(self._entries) <= SWEEP_CACHE_LIMIT else {}
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(entries, f, separators=(",", ":"))
            os.replace(tmp, self.path)
        except OSError:
            return  # a cache we cannot write is only slower
        self.misses = 0

    def _load(self) -> dict[str, list[int]]:
        if self._entries is None:
            self._entries = {}
            if self.path is not None:
                try:
                    with open(self.path) as f:
                        data = json.load(f)
                except (OSError, ValueError):
                    data = None
                if isinstance(data, dict) and all(
                        isinstance(v, list) and all(isinstance(o, int) for o in v)
                        for v in data.values()):
                    self._entries = data
        return self._entries


@cache
def sweep_cache() -> SweepCache:
    """The process's sweep cache (one load per process, one save at exit)."""
    shared = SweepCache(default_cache_dir())
    atexit.register(shared.save)
    return shared
