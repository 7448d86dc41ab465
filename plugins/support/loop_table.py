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

*Anchored* loads (:func:`anchored_loads`): the base is set in the same block by ``lea R,
[rip + X]`` (module data, a table with no symbol in a stripped library: libb64's
``base64_decode_value``) and the index has a bound ``U`` the block's own instructions give
(``movzx edi, dil``: 255, plugins/support/value_range.py), on every path, the block on or
off.  The memory is then the span ``[X + d, X + d + U*s + w)``, clipped to the readable
mapping holding ``X + d`` (learnt once before the loop).  The same scan serves them; such
a load may sit in a callee clone (plugins/support/clone.py, whose memory rule it is exempt
from: ``expand_calls``'s ``vouched``), where RSP is far below the region's (the slots
follow it).

Cost per access: about 30 instructions plus 6 per 64-byte unit of the memory (an 80-byte
table: 2 or 3 units).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence

from leakdbt.plugin_api import BlockView, allocation_bounds, goto, original
from plugins.support.predication import (
    GPR,
    XMM,
    Engine,
    InsnInfo,
    Mem,
    Pred,
    Special,
    analyse,
    body,
)
from plugins.support.value_range import upper_bound

__all__ = ["UNIT", "TableEngine", "anchored_loads", "computed_loads"]

UNIT = 64
"""The unit the scan reads one value of: a cache line."""
_LOAD = {1: "movzx r8d, byte ptr [rcx]", 2: "movzx r8d, word ptr [rcx]",
         4: "mov r8d, dword ptr [rcx]", 8: "mov r8, qword ptr [rcx]"}
_OPERAND = re.compile(r"\[[^\]]*\]")


def _table_load(info: InsnInfo) -> Mem | None:
    """The operand of a load this module can scan: one memory operand, read only, 1 to 8
    bytes, no segment, a base and an index register (not RSP or RIP); no xmm register."""
    insn = info.insn
    if len(info.mems) != 1 or insn.prefixes or any(r in XMM for r in info.reads | info.writes):
        return None
    m = info.mems[0]
    if m.write or not m.read or m.width not in _LOAD or m.segment is not None \
            or m.base is None or m.index is None or m.base not in GPR \
            or m.index not in GPR or GPR[m.base] == "rsp" or GPR[m.base] == GPR[m.index] \
            or len(_OPERAND.findall(insn.op_str)) != 1:
        return None
    return m


def anchored_loads(block: BlockView) -> dict[int, tuple[int, int]]:
    """The block's anchored loads (module doc): instruction address -> (the link-time
    address of the span's start, its length in bytes)."""
    out: dict[int, tuple[int, int]] = {}
    insns = body(block)
    for n, insn in enumerate(insns):
        m = _table_load(analyse(insn))
        if m is None:
            continue
        assert m.base is not None and m.index is not None
        base, index = GPR[m.base], GPR[m.index]
        for prior in reversed(insns[:n]):
            if base not in analyse(prior).writes:
                continue
            bound = upper_bound(block.insns, n, index)  # body(block) is a prefix
            if prior.mnemonic == "lea" and prior.rip_target is not None \
                    and prior.op_str.split(", ")[0] == base and bound is not None \
                    and bound * m.scale + m.width <= 1 << 16:
                out[insn.address] = (prior.rip_target + m.disp, bound * m.scale + m.width)
            break
    return out


def computed_loads(blocks: Iterable[BlockView], infos: Mapping[int, InsnInfo],
                   written: frozenset[str], induction: frozenset[str]
                   ) -> dict[int, Mem | tuple[Mem, int, int]]:
    """The loads this module rewrites (instruction address -> operand, or for an anchored
    load the operand, its span's start and length): :func:`_table_load`'s, with a base
    register the loop does not write and an index it computes (not an induction variable),
    or anchored (:func:`anchored_loads`)."""
    out: dict[int, Mem | tuple[Mem, int, int]] = {}
    for b in blocks:
        anchored = anchored_loads(b)
        for insn in body(b):
            m = _table_load(infos[insn.address])
            if m is None:
                continue
            assert m.base is not None and m.index is not None
            if insn.address in anchored:
                out[insn.address] = (m, *anchored[insn.address])
            elif GPR[m.base] not in written and GPR[m.index] in written \
                    and GPR[m.index] not in induction:
                out[insn.address] = m
    return out


class TableEngine(Engine):
    """The predicated-block engine with :func:`computed_loads` rewritten (module doc)."""

    def __init__(self, bias: int, loads: Mapping[int, Mem | tuple[Mem, int, int]]) -> None:
        super().__init__(bias)
        self.loads = {a: v if isinstance(v, Mem) else v[0] for a, v in loads.items()}
        # Each load's memory: its base register, or (start, length) of an anchored span.
        self.key_of: dict[int, str | tuple[int, int]] = {
            a: GPR[str(v.base)] if isinstance(v, Mem) else (v[1], v[2])
            for a, v in loads.items()}
        self.pred: Pred | None = None  # the predicate of the block being emitted
        # per memory: [start, size] (the .bounds pair), aligned start, units
        self.bases = {k: (self.alloc(16), self.alloc(), self.alloc())
                      for k in sorted(set(self.key_of.values()), key=str)}
        self.borrowed = {r: self.alloc() for r in ("rax", "rcx", "rdx", "r8")}
        self.flags_at, self.selected, self.bad = self.alloc(), self.alloc(), self.alloc()
        self.count = 0

    def bounds(self) -> list[str]:
        """At the loop's entry (flags free, RAX and RCX borrowed here, RSP the region's):
        each memory's start and size, its 64-byte-aligned start and its number of units (0
        when unknown)."""
        t1, t2 = self.at(self.t1), self.at(self.t2)
        out = [f"mov {t1}, rax", f"mov {t2}, rcx"]
        for n, (key, (pair, aligned, units)) in enumerate(self.bases.items()):
            start, size = self.at(pair), self.at(pair - 8)
            if isinstance(key, str):
                out.append(allocation_bounds(key, pair))
            else:  # an anchored span, clipped to the readable mapping holding its start
                at, length = key
                out += [f"movabs rax, {goto(at)}", allocation_bounds("rax", pair, mapped=True),
                        f"mov rcx, {start}", f"add rcx, {size}", "sub rcx, rax",
                        f"cmp rcx, {length:#x}", f"jbe lt_room{n}", f"mov rcx, {length:#x}",
                        f"lt_room{n}:", f"cmp {size}, 0", f"jne lt_mapped{n}", "xor ecx, ecx",
                        f"lt_mapped{n}:", f"mov {start}, rax", f"mov {size}, rcx"]
            out += [f"mov rax, {start}", f"and rax, {(1 << 64) - UNIT:#x}",
                    f"mov {self.at(aligned)}, rax",
                    f"mov rax, {start}", f"add rax, {size}", "sub rax, 1",
                    f"shr rax, {UNIT.bit_length() - 1}", f"mov {self.at(units)}, rax",
                    f"mov rax, {start}", f"shr rax, {UNIT.bit_length() - 1}",
                    f"sub {self.at(units)}, rax", f"add {self.at(units)}, 1",
                    f"cmp {size}, 0", f"jne lt_known{n}", f"mov {self.at(units)}, 0",
                    f"lt_known{n}:"]
        return [*out, f"mov rcx, {t2}", f"mov rax, {t1}"]

    def block(self, block: BlockView, infos: dict[int, InsnInfo], pred: Pred | None,
              inside: Callable[[int, int], bool], npreds: dict[int, int], special: Special,
              unmasked: frozenset[str] = frozenset(), late: Sequence[str] = ()) -> list[str]:
        self.pred = pred
        return super().block(block, infos, pred, inside, npreds, special, unmasked, late)

    def original(self, info: InsnInfo) -> list[str]:
        m = self.loads.get(info.insn.address)
        if m is None:
            return super().original(info)
        pair, aligned, units = self.bases[self.key_of[info.insn.address]]
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
            out += [self.pred.test(self.depth), f"set{self.pred.on} dl", "and r8b, dl"]
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

