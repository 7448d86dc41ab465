"""Loads at addresses a loop computes, from a base the loop does not change: table lookups
inside a bounded loop (bounded-loop's "computed loads", docs/passes.md).

``movsx esi, byte ptr [r9 + rsi]`` with R9 fixed in the loop and RSI computed from the data
(a decoder's character table) runs in every one of the bounded loop's iterations, also in
those the original never makes: its index may then be anything.  It is replaced by

1. the effective address EA (``lea``), and whether the access is *in contract*: inside the
   memory that holds the base's value at the loop's entry (:func:`allocation_bounds`: the
   live allocation, or the sized ELF data object, found once before the loop), not
   straddling a 64-byte unit;
2. a scan of that memory: one ``w``-byte read at EA's offset in every 64-byte unit of the
   span covering it (the same for every EA), keeping EA's value (``cmovne`` into a slot):
   the lines touched do not depend on EA;
3. the instruction itself on the slot (its memory operand replaced), flags and borrowed
   registers restored before it: its result (extension, flags) is its own.

An access that is not in contract takes a branch to the original instruction (``.insn``) —
when its block is *on* (a program bug, or memory the translator knows no bounds of: then
correct, but it leaks, as oblivious-table's out-of-contract accesses do); when the block is
off (an iteration or path the original does not run), it reads nothing: the instruction
runs on the slot and the block's commit throws the result away.  So a masked iteration never
touches memory the original would not, whatever its index.

Bounds unknown (0, 0: no allocation or data object holds the base, or outside the
emulator): every access is out of contract; the loop stays correct and memory-safe.

Cost per access: about 30 instructions plus 6 per 64-byte unit of the memory (an 80-byte
table: 2 or 3 units).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence

from leakdbt.plugin_api import BlockView, allocation_bounds, original
from plugins.support.predication import GPR, XMM, Engine, InsnInfo, Mem, Pred, Special, body

__all__ = ["UNIT", "TableEngine", "computed_loads"]

UNIT = 64
"""The unit the scan reads one value of: a cache line."""
_LOAD = {1: "movzx r8d, byte ptr [rcx]", 2: "movzx r8d, word ptr [rcx]",
         4: "mov r8d, dword ptr [rcx]", 8: "mov r8, qword ptr [rcx]"}
_OPERAND = re.compile(r"\[[^\]]*\]")


def computed_loads(blocks: Iterable[BlockView], infos: Mapping[int, InsnInfo],
                   written: frozenset[str], induction: frozenset[str]) -> dict[int, Mem]:
    """The loads (instruction address -> operand) this module rewrites: one memory operand,
    read only, 1 to 8 bytes, no segment, a base register the loop does not write (not RSP
    or RIP) and an index it computes (not an induction variable); no xmm register."""
    out: dict[int, Mem] = {}
    for b in blocks:
        for insn in body(b):
            info = infos[insn.address]
            if len(info.mems) != 1 or insn.prefixes \
                    or any(r in XMM for r in info.reads | info.writes):
                continue
            m = info.mems[0]
            if m.write or not m.read or m.width not in _LOAD or m.segment is not None \
                    or m.base is None or m.index is None or m.base not in GPR \
                    or m.index not in GPR or GPR[m.base] in ("rsp", *written) \
                    or GPR[m.index] not in written or GPR[m.index] in induction \
                    or len(_OPERAND.findall(insn.op_str)) != 1:
                continue
            out[insn.address] = m
    return out


class TableEngine(Engine):
    """The predicated-block engine with :func:`computed_loads` rewritten (module doc)."""

    def __init__(self, bias: int, loads: Mapping[int, Mem]) -> None:
        super().__init__(bias)
        self.loads = dict(loads)
        self.pred: Pred | None = None  # the predicate of the block being emitted
        # per base register: [start, size] (the .bounds pair), aligned start, units
        self.bases = {GPR[m.base]: (self.alloc(16), self.alloc(), self.alloc())
                      for m in loads.values() if m.base is not None}
        self.borrowed = {r: self.alloc() for r in ("rax", "rcx", "rdx", "r8")}
        self.flags_at, self.selected, self.bad = self.alloc(), self.alloc(), self.alloc()
        self.count = 0

    def bounds(self) -> list[str]:
        """At the loop's entry (flags free, RAX borrowed here): each base's memory, its
        64-byte-aligned start and its number of units (0 when unknown)."""
        t1 = self.at(self.t1)
        out = [f"mov {t1}, rax"]
        for n, (base, (pair, aligned, units)) in enumerate(sorted(self.bases.items())):
            start, size = self.at(pair), self.at(pair - 8)
            out += [allocation_bounds(base, pair),
                    f"mov rax, {start}", f"and rax, {(1 << 64) - UNIT:#x}",
                    f"mov {self.at(aligned)}, rax",
                    f"mov rax, {start}", f"add rax, {size}", "sub rax, 1",
                    f"shr rax, {UNIT.bit_length() - 1}", f"mov {self.at(units)}, rax",
                    f"mov rax, {start}", f"shr rax, {UNIT.bit_length() - 1}",
                    f"sub {self.at(units)}, rax", f"add {self.at(units)}, 1",
                    f"cmp {size}, 0", f"jne lt_known{n}", f"mov {self.at(units)}, 0",
                    f"lt_known{n}:"]
        return [*out, f"mov rax, {t1}"]

    def block(self, block: BlockView, infos: dict[int, InsnInfo], pred: Pred | None,
              inside: Callable[[int, int], bool], npreds: dict[int, int], special: Special,
              unmasked: frozenset[str] = frozenset(), late: Sequence[str] = ()) -> list[str]:
        self.pred = pred
        return super().block(block, infos, pred, inside, npreds, special, unmasked, late)

    def original(self, info: InsnInfo) -> list[str]:
        m = self.loads.get(info.insn.address)
        if m is None:
            return super().original(info)
        assert self.depth == 0 and m.base is not None
        pair, aligned, units = self.bases[GPR[m.base]]
        n, w = self.count, m.width
        self.count += 1
        keep = [f"mov {self.at(s)}, {r}" for r, s in self.borrowed.items()]
        back = [f"mov {r}, {self.at(s)}" for r, s in self.borrowed.items()]
        out = [*self.save_flags(self.flags_at), *keep, f"lea rax, {m.address()}",
               # in contract: start <= EA <= start + size - w, EA's unit holds all w bytes
               "mov rcx, rax", f"sub rcx, {self.at(pair)}",
               f"mov rdx, {self.at(pair - 8)}", f"sub rdx, {w}", "setb r8b",
               "cmp rdx, rcx", "setb dl", "or r8b, dl",
               "mov ecx, eax", f"and ecx, {UNIT - 1:#x}", f"cmp ecx, {UNIT - w:#x}",
               "seta dl", "or r8b, dl"]
        if self.pred is not None:  # out of contract matters only when the block is on
            out += [self.pred.test(), f"set{self.pred.on} dl", "and r8b, dl"]
        out += [f"mov {self.at(self.bad, 'byte')}, r8b", f"mov {self.at(self.selected)}, 0",
                # EA's offset in its unit (kept inside the unit when out of contract)
                "mov rcx, rax", f"and rcx, {UNIT - 1:#x}", f"mov edx, {UNIT - w:#x}",
                "cmp rcx, rdx", "cmova rcx, rdx", f"add rcx, {self.at(aligned)}",
                f"mov rdx, {self.at(units)}", "test rdx, rdx", f"je lt_none{n}",
                f"lt_scan{n}:", _LOAD[w], "cmp rcx, rax",
                f"cmovne r8, {self.at(self.selected)}", f"mov {self.at(self.selected)}, r8",
                f"add rcx, {UNIT:#x}", "sub rdx, 1", f"jne lt_scan{n}", f"lt_none{n}:",
                f"cmp {self.at(self.bad, 'byte')}, 0", *back, f"jne lt_out{n}",
                *self.load_flags(self.flags_at),
                f"{info.insn.mnemonic} {_OPERAND.sub(self._slot_operand(), info.insn.op_str)}",
                f"lt_back{n}:"]
        self.stubs += [f"lt_out{n}:", *self.load_flags(self.flags_at),
                       original(info.insn.address), f"jmp lt_back{n}"]
        return out

    def _slot_operand(self) -> str:
        return self.at(self.selected).split(" ptr ", 1)[1]

