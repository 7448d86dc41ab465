"""What the dynamic linker sees of a module: the functions it exports, the GOT slots its
imports go through, and where its PLT lies (link-time addresses).

The translator resolves a call through the PLT or the GOT as ld.so binds it
(:mod:`leakdbt.dbt.calls`): a GOT slot names the imported symbol (its ``JUMP_SLOT`` or
``GLOB_DAT`` relocation), and the first module in the lookup order that exports a definition
of that name is the one ld.so binds it to.  Read from the section headers, once per image.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from leakdbt.errors import ElfError
from leakdbt.loader.elf import PLT_SECTIONS, R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT, section_headers
from leakdbt.loader.image import Image, per_image

__all__ = ["Export", "Linkage", "linkage"]

_SYM = struct.Struct("<IBBHQQ")
_RELA = struct.Struct("<QQq")
_VERSYM = struct.Struct("<H")
SHT_RELA, SHT_DYNSYM, SHT_GNU_VERSYM = 4, 11, 0x6FFFFFFF
STT_FUNC, STT_GNU_IFUNC = 2, 10
STB_GLOBAL, STB_WEAK = 1, 2
STV_DEFAULT, STV_PROTECTED = 0, 3
VERSYM_HIDDEN = 0x8000


@dataclass(frozen=True)
class Export:
    """A function a module defines for other modules (a global or weak dynamic symbol)."""

    name: str
    value: int  # link-time
    ifunc: bool  # STT_GNU_IFUNC: the address of a resolver, not of the function
    weak: bool
    versions: int  # definitions of this name in the module (symbol versions), hidden included


@dataclass(frozen=True)
class Linkage:
    """A module's dynamic linkage: exports by name, imported names by GOT slot, PLT ranges."""

    exports: dict[str, Export] = field(default_factory=dict)
    slots: dict[int, str] = field(default_factory=dict)  # GOT slot (link-time) -> symbol
    plt: tuple[tuple[int, int], ...] = ()  # [start, end) of .plt, .plt.sec, .plt.got

    def in_plt(self, address: int) -> bool:
        """Whether link-time ``address`` lies in one of the module's PLT sections."""
        return any(lo <= address < hi for lo, hi in self.plt)


@per_image
def linkage(image: Image) -> Linkage:
    """``image``'s dynamic linkage (empty when it has no usable dynamic symbol table)."""
    try:
        data = image.data
        if not data:
            with open(image.path, "rb") as f:
                data = f.read()
        sections = section_headers(image.path, data)
    except (OSError, ElfError):
        return Linkage()
    plt = tuple((s.addr, s.addr + s.size) for s in sections if s.name in PLT_SECTIONS)
    dynsym = next((s for s in sections if s.type == SHT_DYNSYM), None)
    if dynsym is None or not 0 < dynsym.link < len(sections):
        return Linkage(plt=plt)
    strings = sections[dynsym.link]
    count = dynsym.size // _SYM.size
    if dynsym.offset + count * _SYM.size > len(data) or \
            strings.offset + strings.size > len(data):
        return Linkage(plt=plt)
    versym = next((s for s in sections if s.type == SHT_GNU_VERSYM), None)

    def name(st_name: int) -> str | None:
        start = strings.offset + st_name
        end = data.find(b"\0", start, strings.offset + strings.size)
        return data[start:end].decode("utf-8", "replace") if st_name and end > start else None

    def hidden(index: int) -> bool:
        if versym is None or versym.offset + (index + 1) * 2 > len(data):
            return False
        return bool(_VERSYM.unpack_from(data, versym.offset + index * 2)[0] & VERSYM_HIDDEN)

    exports: dict[str, Export] = {}
    counts: dict[str, int] = {}
    names: list[str | None] = []
    for index in range(count):
        st_name, info, other, shndx, value, _size = _SYM.unpack_from(
            data, dynsym.offset + index * _SYM.size)
        sym = name(st_name)
        names.append(sym)
        kind, bind, visibility = info & 0xF, info >> 4, other & 3
        if (sym is None or shndx == 0 or kind not in (STT_FUNC, STT_GNU_IFUNC)
                or bind not in (STB_GLOBAL, STB_WEAK)
                or visibility not in (STV_DEFAULT, STV_PROTECTED)):
            continue
        counts[sym] = counts.get(sym, 0) + 1
        if not hidden(index):
            exports.setdefault(sym, Export(sym, value, kind == STT_GNU_IFUNC,
                                           bind == STB_WEAK, 0))
    exports = {n: Export(e.name, e.value, e.ifunc, e.weak, counts[n]) for n, e in exports.items()}
    slots: dict[int, str] = {}
    for s in sections:
        if s.type != SHT_RELA or s.link != dynsym.number or s.offset + s.size > len(data):
            continue
        for r_offset, r_info, _addend in _RELA.iter_unpack(
                data[s.offset:s.offset + s.size - s.size % _RELA.size]):
            index = r_info >> 32
            if r_info & 0xFFFFFFFF in (R_X86_64_JUMP_SLOT, R_X86_64_GLOB_DAT) and \
                    0 < index < count and names[index] is not None:
                slots[r_offset] = names[index] or ""
    return Linkage(exports, slots, plt)
