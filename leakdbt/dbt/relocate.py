"""Relocation: copy a region's code to another address so that it computes the same thing.

Instructions are copied byte for byte except where their meaning depends on where they are:
RIP-relative operands get a new displacement (same target), direct branches, jumps and calls
are re-assembled with Keystone to the same target — or to the copy of the target when it is a
block of the region — and every way out of the region ends in a jump to the original
successor.  Nothing is added on the way out, so no register or flag is touched.

Every instruction emitted is checked by decoding it with Capstone: a copied instruction must
mean what the original means at its own address (:func:`leakdbt.x86.asm.canonical_insn`), an
assembled one what its text says (:func:`leakdbt.x86.asm.assemble`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from leakdbt.dbt.region import CodeRegion, RegionError
from leakdbt.x86.asm import (
    AssemblyError,
    Fixed,
    Line,
    assemble,
    assemble_block_map,
    canonical_insn,
    decode_one,
    rename_labels,
)
from leakdbt.x86.insn import SHORT_ONLY, Flow, Insn, decode

MAX_LAYOUT_PASSES = 8
STAND_IN_DISTANCE = 0x1000_0000  # where sequences are measured, from their original
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
    # copy address of each ``.bounds REG, OFF[, mapped]`` line (a one-byte nop) -> (REG, OFF,
    # mapped): where the translator must write run-time allocation bounds
    # (leakdbt.plugin_api.allocation_bounds)
    probes: dict[int, tuple[str, int, bool]] = field(default_factory=dict)

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
    inner: list[tuple[int, int]] = field(default_factory=list)  # (address, origin) inside

    def size_at(self, at: int, dest: int) -> int:
        return self.short if -128 <= dest - (at + self.short) <= 127 else self.near


def relocate(region: CodeRegion, bias: int, place: Callable[[int], int] | int,
             rewrite: Mapping[int, Sequence[str]] | None = None,
             code: Sequence[str] | None = None,
             callee_insns: Mapping[int, Insn] | None = None) -> Translation:
    """Translate ``region`` (link-time addresses of a module loaded at ``bias``).

    ``place`` is the copy's address, or a function that is given the copy's size and
    returns its address (the layout does not depend on where the copy goes).  ``rewrite``
    replaces instructions (by link-time address) with sequences of Intel-syntax lines —
    a hardening pass's output — that may use local labels but not leave the sequence;
    ``code`` replaces the whole region (see leakdbt.plugin_api for the ``.insn`` and ``@``
    lines both may contain); its ``.insn`` lines may also name ``callee_insns`` (instructions
    of the functions a pass clones, :class:`leakdbt.dbt.harden.Callees`).
    """
    rewrite = rewrite or {}
    items: list[_Item] = []
    blocks = region.block_list()
    members = {b.start + bias for b in blocks}
    if code is not None:
        return _relocate_code(region, bias, place, rewrite, code, callee_insns or {})
    probes: list[_Probe] = []
    # The entry first, the rest in address order: falling into the copy starts it.
    blocks.sort(key=lambda b: (b.start != region.entry, b.start))
    for i, block in enumerate(blocks):
        layout_next = blocks[i + 1].start + bias if i + 1 < len(blocks) else None
        for n, insn in enumerate(block.insns):
            if insn.address in rewrite:
                lines = _Expansion(region, bias, rewrite, probes=probes).lines(
                    rewrite[insn.address], insn.address)
                item = _sequence(insn.address + bias, lines)
            else:
                item = _emit(insn, bias, members, region.name)
            item.block = block.start + bias if n == 0 else None
            items.append(item)
        last = block.last
        if last.flow in (Flow.NEXT, Flow.BRANCH, Flow.CALL, Flow.INDIRECT_CALL):
            follow = last.next + bias
            if follow != layout_next:
                items.append(_jump(None, follow, members))
    base, data, labels, origin = _layout(items, place, region.name)
    source = tuple((i.address + bias, i.raw) for b in blocks for i in b.insns)
    return Translation(region.name, base, data, labels[region.entry + bias], origin,
                       tuple(sorted(labels.values())), source, _probes(probes))


def _sequence(origin: int, lines: Sequence[Line]) -> _Item:
    """A replacement sequence.  Its size depends on distances inside it — and on the
    distance to original addresses (``@`` targets, RIP-relative copies), which is why it is
    measured at a stand-in address as far from the original as the code cache is, but as
    surely within rel32 reach of the module."""
    size = len(assemble_block_map(lines, origin + STAND_IN_DISTANCE)[0])
    item = _Item(origin, None, lambda at, labels: b"", size)

    def encode(at: int, labels: Labels) -> bytes:
        data, item.inner = assemble_block_map(lines, at)
        return data

    item.encode = encode
    return item


def _relocate_code(region: CodeRegion, bias: int, place: Callable[[int], int] | int,
                   rewrite: Mapping[int, Sequence[str]], code: Sequence[str],
                   callee_insns: Mapping[int, Insn]) -> Translation:
    """The whole region replaced by ``code`` (which must not fall off its end)."""
    probes: list[_Probe] = []
    expansion = _Expansion(region, bias, rewrite, callee_insns, probes)
    lines = expansion.lines(code, None)
    unused = sorted(set(rewrite) - expansion.used)
    if unused:
        raise RegionError(f"{region.name}: the region's code drops the replacement for the "
                          f"instruction at {unused[0] + bias:#x}")
    last = next((t for t in reversed(lines) if isinstance(t, str) and not t.endswith(":")),
                None)
    if last is None or last.split()[0] not in ("jmp", "ret"):
        raise RegionError(f"{region.name}: the region's code does not end with jmp or ret")
    item = _sequence(region.entry + bias, lines)
    item.block = region.entry + bias
    base, data, labels, origin = _layout([item], place, region.name)
    source = tuple((i.address + bias, i.raw) for b in region.block_list() for i in b.insns)
    return Translation(region.name, base, data, labels[region.entry + bias], origin,
                       (base,), source, _probes(probes))


_BOUNDS = re.compile(r"\.bounds\s+(r[a-z0-9]+)\s*,\s*(0x[0-9a-fA-F]+|[0-9]+)"
                     r"(\s*,\s*mapped)?")


@dataclass
class _Probe:
    """A ``.bounds`` line: a one-byte ``nop`` the translator hooks; ``address`` is where
    its last encoding (the final layout's) put it."""

    register: str
    offset: int
    mapped: bool = False
    address: int = 0

    def fixed(self) -> Fixed:
        def encode(at: int) -> bytes:
            self.address = at
            return b"\x90"
        return Fixed(1, encode)


def _probes(probes: list[_Probe]) -> dict[int, tuple[str, int, bool]]:
    return {p.address: (p.register, p.offset, p.mapped) for p in probes}


_GOTO = re.compile(r"@(0x[0-9a-fA-F]+)")
_ADDRESS_LOAD = re.compile(r"movabs (r[a-z0-9]+), @(0x[0-9a-fA-F]+)")
LEA_RIP_SIZE = 7  # lea r64, [rip + disp32]


def _address_load(register: str, target: int) -> Fixed:
    """``movabs REG, @A`` laid out as ``lea REG, [rip + D]``: the same value, flags
    untouched, and no absolute address in the copy, so a copy written into a file
    (``leakdbt harden``) holds wherever the file is loaded."""
    def encode(at: int) -> bytes:
        disp = target - (at + LEA_RIP_SIZE)
        sign = "+" if disp >= 0 else "-"
        return assemble(f"lea {register}, [rip {sign} {abs(disp):#x}]", at)
    return Fixed(LEA_RIP_SIZE, encode)


class _Expansion:
    """Lines of a pass with ``.insn A`` replaced by the instruction at A (relocated, or the
    lines another pass replaces it with, their labels renamed apart) and ``@A`` by A's
    runtime address."""

    def __init__(self, region: CodeRegion, bias: int, rewrite: Mapping[int, Sequence[str]],
                 callee_insns: Mapping[int, Insn] | None = None,
                 probes: list[_Probe] | None = None) -> None:
        self.region = region
        self.probes = probes if probes is not None else []
        self.bias = bias
        self.rewrite = rewrite
        self.insns = {i.address: i for b in region.block_list() for i in b.insns}
        # A callee's instruction may stand in several clones; the region's own only once.
        self.cloned = {a: i for a, i in (callee_insns or {}).items() if a not in self.insns}
        self.insns.update(self.cloned)
        self.used: set[int] = set()
        self.instances = 0

    def lines(self, lines: Sequence[str], own: int | None) -> list[Line]:
        """Expand ``lines``; ``own``: the instruction they replace (``.insn own`` is it)."""
        out: list[Line] = []
        for line in lines:
            words = line.split()
            if words and words[0] == ".insn":
                address = int(words[1], 0)
                if address != own and address in self.rewrite:
                    if address in self.used and address not in self.cloned:
                        raise RegionError(f"{self.region.name}: the replacement for "
                                          f"{address + self.bias:#x} is used twice")
                    self.used.add(address)
                    self.instances += 1
                    out += rename_labels(self.lines(self.rewrite[address], address),
                                         f"__{self.instances}")
                else:
                    out.append(self._copy(address))
            elif words and words[0] == ".bounds":
                bounds = _BOUNDS.fullmatch(line.strip())
                if bounds is None:
                    raise RegionError(f"{self.region.name}: malformed line '{line.strip()}' "
                                      "(write .bounds REG, OFFSET)")
                probe = _Probe(bounds.group(1), int(bounds.group(2), 0),
                               bounds.group(3) is not None)
                self.probes.append(probe)
                out.append(probe.fixed())
            elif (load := _ADDRESS_LOAD.fullmatch(line.strip())) is not None:
                out.append(_address_load(load.group(1), int(load.group(2), 0) + self.bias))
            else:
                out.append(_GOTO.sub(lambda m: f"{int(m.group(1), 0) + self.bias:#x}", line))
        return out

    def _copy(self, address: int) -> Fixed:
        insn = self.insns.get(address)
        if insn is None:
            raise RegionError(f"{self.region.name}: '.insn {address:#x}' is not an "
                              "instruction of the region")
        runtime = address + self.bias
        if insn.flow is Flow.CALL:
            target = (insn.target or 0) + self.bias
            return Fixed(5, lambda at: assemble(f"call {target:#x}", at).ljust(5, b"\x90"),
                         runtime)
        if insn.flow in (Flow.JUMP, Flow.BRANCH):
            raise RegionError(f"{self.region.name}: '.insn {address:#x}' stands for a "
                              f"branch ('{insn.text}'); a rewrite must spell out its control "
                              "flow")
        copy = _copy(insn, self.bias)
        return Fixed(insn.size, lambda at: copy.encode(at, {}), runtime)


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
        origin.update(item.inner)
        code += data
    return base, bytes(code), labels, origin
