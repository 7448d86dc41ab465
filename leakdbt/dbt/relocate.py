"""Relocation: copy a region's code to another address so that it computes the same thing.

Instructions are copied byte for byte except where their meaning depends on where they are:
RIP-relative operands get a new displacement (same target), direct branches, jumps and calls
are re-assembled with Keystone to the same target — or to the copy of the target when it is a
block of the region — and every way out of the region ends in a jump to the original
successor.  Nothing is added on the way out, so no register or flag is touched.

Every instruction emitted is checked by decoding it with Capstone: a copied instruction must
mean what the original means at its own address (:func:`leakdbt.dbt.asm.canonical_insn`), an
assembled one what its text says (:func:`leakdbt.dbt.asm.assemble`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from leakdbt.dbt.asm import AssemblyError, assemble, assemble_block, canonical_insn, decode_one
from leakdbt.dbt.insn import SHORT_ONLY, Flow, Insn, decode
from leakdbt.dbt.region import CodeRegion, RegionError

MAX_LAYOUT_PASSES = 8
Labels = dict[int, int]  # original runtime block address -> its copy's address


@dataclass
class Translation:
    """A region's copy: bytes to place at ``base``, and how they map to the original."""

    name: str
    base: int
    code: bytes
    entry: int  # copy of the region's first instruction
    origin: dict[int, int] = field(default_factory=dict)  # copy insn address -> original
    blocks: tuple[int, ...] = ()  # copy addresses where the region's blocks start
    source: tuple[tuple[int, bytes], ...] = ()  # (runtime address, bytes) of each original

    @property
    def end(self) -> int:
        return self.base + len(self.code)


@dataclass
class _Item:
    """One emitted instruction (or short fixed sequence) whose bytes depend on its address."""

    origin: int | None  # original runtime address it stands for
    block: int | None  # original runtime block address that starts here
    encode: Callable[[int, Labels], bytes]
    size: int  # current layout size
    target: int | None = None  # branch target (original runtime address) whose distance
    short: int = 0  # ... decides the size: ``short`` bytes when within rel8 reach, else
    near: int = 0  # ``near`` bytes (the x86 rule Keystone follows; the encoding is checked)

    def size_at(self, at: int, dest: int) -> int:
        return self.short if -128 <= dest - (at + self.short) <= 127 else self.near


def relocate(region: CodeRegion, bias: int, place: Callable[[int], int] | int,
             rewrite: Mapping[int, Sequence[str]] | None = None) -> Translation:
    """Translate ``region`` (link-time addresses of a module loaded at ``bias``).

    ``place`` is the copy's address, or a function that is given the copy's size and
    returns its address (the layout does not depend on where the copy goes).  ``rewrite``
    replaces instructions (by link-time address) with sequences of Intel-syntax lines —
    a hardening pass's output — that may use local labels but not leave the sequence.
    """
    rewrite = rewrite or {}
    items: list[_Item] = []
    blocks = region.block_list()
    members = {b.start + bias for b in blocks}
    # The entry first, the rest in address order: falling into the copy starts it.
    blocks.sort(key=lambda b: (b.start != region.entry, b.start))
    for i, block in enumerate(blocks):
        layout_next = blocks[i + 1].start + bias if i + 1 < len(blocks) else None
        for n, insn in enumerate(block.insns):
            if insn.address in rewrite:
                item = _sequence(insn.address + bias, tuple(rewrite[insn.address]))
            else:
                item = _emit(insn, bias, members, region.name)
            item.block = block.start + bias if n == 0 else None
            items.append(item)
        last = block.last
        if last.flow in (Flow.NEXT, Flow.BRANCH, Flow.CALL, Flow.INDIRECT_CALL):
            follow = last.next + bias
            if follow != layout_next:
                items.append(_jump(None, follow, members))
    base, code, labels, origin = _layout(items, place, region.name)
    source = tuple((i.address + bias, i.raw) for b in blocks for i in b.insns)
    return Translation(region.name, base, code, labels[region.entry + bias], origin,
                       tuple(sorted(labels.values())), source)


def _sequence(origin: int, lines: tuple[str, ...]) -> _Item:
    """A replacement sequence: its size depends only on distances inside it."""
    size = len(assemble_block(lines, 0))
    return _Item(origin, None, lambda at, labels: assemble_block(lines, at), size)


def _emit(insn: Insn, bias: int, members: set[int], name: str) -> _Item:
    flow = insn.flow
    if flow is Flow.JUMP:
        assert insn.target is not None
        return _jump(insn.address + bias, insn.target + bias, members)
    if flow is Flow.BRANCH:
        assert insn.target is not None
        if insn.mnemonic == "xbegin":
            raise RegionError(f"{name}: xbegin at {insn.address + bias:#x} is not relocated")
        return _branch(insn, insn.target + bias, bias, members)
    if flow is Flow.CALL:
        assert insn.target is not None
        target = insn.target + bias
        return _Item(insn.address + bias, None,
                     lambda at, labels: assemble(f"call {target:#x}", at), 5)
    return _copy(insn, bias)


def _resolve(target: int, members: set[int], labels: Labels) -> int:
    return labels[target] if target in members else target


def _jump(origin: int | None, target: int, members: set[int]) -> _Item:
    return _Item(origin, None,
                 lambda at, labels: assemble(f"jmp {_resolve(target, members, labels):#x}",
                                             at), 5, target, 2, 5)


def _branch(insn: Insn, target: int, bias: int, members: set[int]) -> _Item:
    mnemonic = insn.mnemonic
    if mnemonic in SHORT_ONLY:
        return _short_only(insn, target, bias, members)

    def encode(at: int, labels: Labels) -> bytes:
        return assemble(f"{mnemonic} {_resolve(target, members, labels):#x}", at)

    return _Item(insn.address + bias, None, encode, 6, target, 2, 6)


def _short_only(insn: Insn, target: int, bias: int, members: set[int]) -> _Item:
    """loop*/j*cxz have only a rel8 form.  Their bytes are kept up to the displacement: an
    address-size prefix (ecx instead of rcx: ``jecxz``, ``addr32 loop``) is not in Capstone's
    text for ``loop``, so assembling the text would silently drop it."""
    head, short = insn.raw[:-1], insn.size  # prefixes and opcode; the whole instruction

    def rel8(at: int, dest: int) -> bytes:
        code = head + ((dest - (at + short)) & 0xFF).to_bytes(1, "little")
        got = decode(code, at)
        if got is None or got.size != short or got.mnemonic != insn.mnemonic \
                or got.target != dest:
            raise AssemblyError(f"{insn.mnemonic} {dest:#x}", at, code,
                                None if got is None else got.text, "rel8 re-encoding")
        return code

    def encode(at: int, labels: Labels) -> bytes:
        dest = _resolve(target, members, labels)
        if -128 <= dest - (at + short) <= 127:
            return rel8(at, dest)
        # Out of rel8 reach: branch over a short jump to a near jump.
        far = assemble(f"jmp {dest:#x}", at + short + 2)
        return (rel8(at, at + short + 2)
                + assemble(f"jmp {at + short + 2 + len(far):#x}", at + short) + far)

    return _Item(insn.address + bias, None, encode, short + 7, target, short, short + 7)


def _copy(insn: Insn, bias: int) -> _Item:
    original = insn.address + bias

    def encode(at: int, labels: Labels) -> bytes:
        raw = insn.raw
        if insn.rip_target is not None:
            disp = (insn.rip_target + bias) - (at + insn.size)
            if not -(1 << 31) <= disp < (1 << 31):
                raise AssemblyError(insn.text, at, None, None,
                                    f"RIP-relative target {insn.rip_target + bias:#x} is out "
                                    "of reach of the code cache")
            o = insn.disp_offset
            raw = raw[:o] + (disp & 0xFFFF_FFFF).to_bytes(4, "little") + raw[o + 4:]
            # Only a changed copy needs checking: bytes without a RIP-relative operand or a
            # relative branch mean the same at any address.
            _verify_copy(raw, at, insn.raw, original)
        return raw

    return _Item(original, None, encode, insn.size)


def _verify_copy(code: bytes, at: int, raw: bytes, original: int) -> None:
    new, old = decode_one(code, at), decode_one(raw, original)
    if new is None or old is None or new.size != len(code):
        raise AssemblyError(f"(copy of {raw.hex(' ')})", at, code, None,
                            "the copy does not decode as one instruction")
    want, got = canonical_insn(old), canonical_insn(new)
    if want != got:
        raise AssemblyError(want, at, code, got, f"the copy means {got!r}")


def _labels(items: list[_Item], base: int) -> Labels:
    """Where each block's copy starts when the items are placed from ``base``."""
    labels: Labels = {}
    at = base
    for item in items:
        if item.block is not None:
            labels[item.block] = at
        at += item.size
    return labels


def _layout(items: list[_Item], place: Callable[[int], int] | int, name: str
            ) -> tuple[int, bytes, Labels, dict[int, int]]:
    """Place items: sizes of branches shrink to their short forms where the
    target is near, until the layout settles; then encode once, at the final addresses."""
    members = {item.block for item in items if item.block is not None}
    for _ in range(MAX_LAYOUT_PASSES):
        labels = _labels(items, 0)  # sizes depend only on distances inside the copy
        # Decide every size from this one consistent layout: distances only shrink when
        # sizes do, so a short form chosen now stays in reach.
        shrink: list[tuple[_Item, int]] = []
        at = 0
        for item in items:
            if item.target is not None and item.target in members:
                size = item.size_at(at, labels[item.target])
                if size < item.size:
                    shrink.append((item, size))
            at += item.size
        if not shrink:
            break
        for item, size in shrink:
            item.size = size
    base = place if isinstance(place, int) else place(sum(item.size for item in items))
    labels = _labels(items, base)
    code = bytearray()
    origin: dict[int, int] = {}
    for item in items:
        at = base + len(code)
        data = item.encode(at, labels)
        if len(data) < item.size:
            data += b"\x90" * (item.size - len(data))  # keep the layout the labels assume
        elif len(data) > item.size:
            raise AssemblyError(f"(layout of {name})", at, data, None,
                                f"{len(data)} bytes where {item.size} were planned")
        if item.origin is not None:
            origin[at] = item.origin
        code += data
    return base, bytes(code), labels, origin
