"""Program-header surgery: an ELF file with new loadable segments and sections appended.

The classic method, written out rather than delegated to an ELF-rewriting library (so the
output is exactly what this module says, byte for byte, and nothing else moves):

- the new segments go after everything, in the file and in the address space, placed so that
  *file offset + the image's base = address* for them, as for the first PT_LOAD.  Linux before
  5.18 computes ``AT_PHDR`` as base + ``e_phoff``; with this placement that is right too;
- the program-header table, one entry per new segment longer, is moved to the start of the
  first new segment; ``PT_PHDR`` (if any) points there; the new ``PT_LOAD`` entries follow
  the last old one, so they stay sorted by address;
- the section-name table and the section-header table are copied to the end with the new
  sections added, so ``objdump``/``gdb`` see them; everything else keeps its offset.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from leakdbt.errors import LeakDBTError
from leakdbt.loader.elf import section_headers
from leakdbt.loader.image import Image

PAGE = 0x1000
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
SHDR = struct.Struct("<IIQQQQIIQQ")
PT_LOAD, PT_PHDR = 1, 6
SHT_PROGBITS, SHT_NOTE = 1, 7
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 1, 2, 4


class ElfWriteError(LeakDBTError):
    """A file ``leakdbt harden`` cannot write a hardened copy of (with the reason)."""


@dataclass(frozen=True)
class NewSegment:
    """A segment to append at ``vaddr`` (link-time), with its bytes and ELF p_flags; the
    program-header table is prepended to the first one (``Placement.code`` accounts for it)."""

    vaddr: int
    data: bytes
    flags: int
    name: str  # its section's name


@dataclass(frozen=True)
class Placement:
    """Where the appended segments go: from ``start`` (address; its file offset is ``start -
    base``); the program-header table at ``table``, at the start of the segment there, whose
    own bytes begin at ``code``."""

    base: int  # address - file offset, the same for the first PT_LOAD and the new segments
    start: int
    table: int
    phnum: int  # entries of the new program-header table

    @property
    def code(self) -> int:
        return self.table + _align(self.phnum * PHDR.size, 64)


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to


def placement(image: Image, new_segments: int, before: int = 0) -> Placement:
    """Where ``new_segments`` segments can be appended to ``image``'s file, the program
    headers ``before`` bytes (whole pages) after their start."""
    loads = sorted(image.segments, key=lambda s: s.vaddr)
    if not loads:
        raise ElfWriteError(f"{image.path}: no loadable segment")
    base = loads[0].vaddr - loads[0].offset
    if base % PAGE:
        raise ElfWriteError(f"{image.path}: the first PT_LOAD's address and offset differ by "
                            f"{base:#x}, not a whole number of pages")
    end = max(s.vaddr + s.memsz for s in loads)
    offset = _align(max(len(image.data), end - base), PAGE)
    return Placement(base, offset + base, offset + base + before, image.phnum + new_segments)


def append(image: Image, where: Placement, segments: Sequence[NewSegment],
           notes: Sequence[tuple[str, bytes]], patches: Sequence[tuple[int, bytes]],
           entry: int | None = None) -> bytes:
    """``image``'s file with ``segments`` (ascending, the first at ``where.start``) loaded,
    non-allocated note sections ``notes`` (name, bytes) added, ``patches`` (address, bytes)
    written over loaded bytes, and the entry point moved to ``entry`` if given."""
    data = bytearray(image.data)
    ehdr = list(EHDR.unpack_from(data, 0))
    phoff, phentsize, phnum = ehdr[5], ehdr[9], ehdr[10]
    if phentsize != PHDR.size:
        raise ElfWriteError(f"{image.path}: program headers of {phentsize} bytes")
    for address, raw in patches:
        at = _file_offset(image, address, len(raw))
        data[at:at + len(raw)] = raw
    phdrs = [list(PHDR.unpack_from(data, phoff + i * PHDR.size)) for i in range(phnum)]
    table_size = where.phnum * PHDR.size
    loads = []
    for seg in segments:
        size = len(seg.data) + (where.code - where.table if seg.vaddr == where.table else 0)
        loads.append([PT_LOAD, seg.flags, seg.vaddr - where.base, seg.vaddr, seg.vaddr, size,
                      size, PAGE])
    last_load = max(i for i, p in enumerate(phdrs) if p[0] == PT_LOAD)
    phdrs[last_load + 1:last_load + 1] = loads
    for p in phdrs:
        if p[0] == PT_PHDR:
            p[2:8] = [where.table - where.base, where.table, where.table, table_size,
                      table_size, 8]
    # The appended segments, each at its offset, the program headers first in theirs.
    data += bytes(where.start - where.base - len(data))
    # (name, type, flags, address, offset, size, alignment) of each added section
    out_sections: list[tuple[str, int, int, int, int, int, int]] = []
    for seg in segments:
        off = seg.vaddr - where.base
        if seg.vaddr == where.table:
            data += bytes(off - len(data))
            table = b"".join(PHDR.pack(*p) for p in phdrs)
            data += table + bytes(where.code - where.table - len(table))
            off = where.code - where.base
        data += bytes(off - len(data)) + seg.data
        flags = SHF_ALLOC | (SHF_EXECINSTR if seg.flags & 1 else 0) | \
            (SHF_WRITE if seg.flags & 2 else 0)
        out_sections.append((seg.name, SHT_PROGBITS, flags, off + where.base, off,
                             len(seg.data), 16))
    for name, raw in notes:
        data += bytes(_align(len(data), 8) - len(data))
        out_sections.append((name, SHT_NOTE, 0, 0, len(data), len(raw), 8))
        data += raw
    _append_sections(image, data, ehdr, out_sections)
    ehdr[5], ehdr[10] = where.table - where.base, len(phdrs)
    if entry is not None:
        ehdr[4] = entry
    EHDR.pack_into(data, 0, *ehdr)
    return bytes(data)


def _append_sections(image: Image, data: bytearray, ehdr: list[int],
                     added: list[tuple[str, int, int, int, int, int, int]]) -> None:
    """Copy the section-name and section-header tables to the end of ``data`` with ``added``
    sections; ``ehdr`` gets their new place."""
    shoff, shnum, shstrndx = ehdr[6], ehdr[12], ehdr[13]
    if shoff == 0 or shnum == 0 or shstrndx == 0 or not section_headers(image.path,
                                                                         image.data):
        raise ElfWriteError(f"{image.path}: no section headers (the hardened file records "
                            "what it is in a section)")
    headers = [list(SHDR.unpack_from(data, shoff + i * SHDR.size)) for i in range(shnum)]
    names = headers[shstrndx]
    strings = bytearray(data[names[4]:names[4] + names[5]])
    for name, kind, flags, addr, off, size, align in added:
        headers.append([len(strings), kind, flags, addr, off, size, 0, 0, align, 0])
        strings += name.encode() + b"\0"
    data += strings
    names[4], names[5] = len(data) - len(strings), len(strings)
    data += bytes(_align(len(data), 8) - len(data))
    ehdr[6], ehdr[12] = len(data), len(headers)
    for h in headers:
        data += SHDR.pack(*h)


def _file_offset(image: Image, address: int, size: int) -> int:
    """The file offset of ``size`` loaded bytes at link-time ``address``."""
    for s in image.segments:
        if s.vaddr <= address and address + size <= s.vaddr + s.filesz:
            return s.offset + address - s.vaddr
    raise ElfWriteError(f"{image.path}: {address:#x} is not in the file's loaded bytes")
