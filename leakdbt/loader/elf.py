"""Parse x86-64 Linux ELF files into :class:`~leakdbt.loader.image.Image` descriptions.

The only module that imports pyelftools.  Follows the System V gABI and the AMD64 psABI.
Every malformation becomes an :class:`~leakdbt.errors.ElfError`; nothing else escapes.
"""

from __future__ import annotations

import io
import os

from elftools.common.exceptions import ELFError as _PyElfError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from leakdbt.errors import ElfError
from leakdbt.loader.image import ElfKind, Image, Segment, Symbol

ELF_MAGIC = b"\x7fELF"
MAX_SEGMENTS = 256


def load_image(path: str | os.PathLike[str], data: bytes | None = None) -> Image:
    """Read and validate the ELF file at ``path`` (or the given bytes) into an Image."""
    spath = os.fspath(path)
    if data is None:
        try:
            with open(spath, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ElfError(spath, f"cannot read: {e.strerror}") from None
    try:
        return _parse(spath, data)
    except ElfError:
        raise
    except (_PyElfError, ValueError, KeyError, IndexError, OverflowError, UnicodeDecodeError,
            AssertionError, TypeError, AttributeError, RecursionError, MemoryError) as e:
        # pyelftools raises a variety of exceptions on corrupt input; all mean "malformed".
        raise ElfError(spath, f"malformed ELF: {type(e).__name__}: {e}") from None
    except Exception as e:  # construct's stream errors and the like
        raise ElfError(spath, f"malformed ELF: {type(e).__name__}: {e}") from None


def _parse(path: str, data: bytes) -> Image:
    if len(data) < 4 or data[:4] != ELF_MAGIC:
        raise ElfError(path, "not an ELF file")
    if len(data) < 64:
        raise ElfError(path, "truncated ELF header")
    if data[4] != 2:
        raise ElfError(path, "not a 64-bit ELF (ELFCLASS32 or invalid class); only x86-64 is supported")
    if data[5] != 1:
        raise ElfError(path, "not a little-endian ELF; only x86-64 is supported")
    elf = ELFFile(io.BytesIO(data))
    hdr = elf.header
    if hdr["e_machine"] != "EM_X86_64":
        raise ElfError(path, f"wrong architecture {hdr['e_machine']}; only x86-64 is supported")
    etype = hdr["e_type"]
    if etype not in ("ET_EXEC", "ET_DYN"):
        raise ElfError(path, f"not an executable or shared object ({etype})")
    phoff, phnum, phentsize = hdr["e_phoff"], hdr["e_phnum"], hdr["e_phentsize"]
    if phnum == 0 or phnum > MAX_SEGMENTS:
        raise ElfError(path, f"bad program header count {phnum}")
    if phentsize != 56:
        raise ElfError(path, f"bad program header entry size {phentsize}")
    if phoff + phnum * phentsize > len(data):
        raise ElfError(path, "program headers lie beyond the end of the file (truncated?)")

    segments: list[Segment] = []
    interpreter: str | None = None
    for ph in elf.iter_segments():
        ptype = ph["p_type"]
        if ptype == "PT_LOAD":
            seg = Segment(ph["p_vaddr"], ph["p_memsz"], ph["p_offset"], ph["p_filesz"],
                          ph["p_flags"], ph["p_align"])
            _check_segment(path, seg, len(data))
            segments.append(seg)
        elif ptype == "PT_INTERP":
            off, size = ph["p_offset"], ph["p_filesz"]
            if off + size > len(data) or size == 0 or size > 4096:
                raise ElfError(path, "bad PT_INTERP")
            interpreter = data[off:off + size].split(b"\0", 1)[0].decode("utf-8", "replace")
    if not segments:
        raise ElfError(path, "no loadable segments")
    ordered = sorted(segments, key=lambda s: s.vaddr)
    for a, b in zip(ordered, ordered[1:]):
        if (a.end + 0xFFF) & ~0xFFF > b.vaddr & ~0xFFF and a.end > b.vaddr:
            raise ElfError(path, f"overlapping segments at {a.vaddr:#x} and {b.vaddr:#x}")
    span = (max(s.end for s in segments) + 0xFFF & ~0xFFF) - (ordered[0].vaddr & ~0xFFF)
    if span > 1 << 40:
        raise ElfError(path, f"absurd image size {span:#x}")

    needed: list[str] = []
    soname: str | None = None
    for sec in elf.iter_sections():
        if isinstance(sec, DynamicSection) and sec["sh_type"] != "SHT_NOBITS":
            for tag in sec.iter_tags():
                if tag.entry.d_tag == "DT_NEEDED":
                    needed.append(tag.needed)
                elif tag.entry.d_tag == "DT_SONAME":
                    soname = tag.soname

    symbols: list[Symbol] = []
    has_symtab = False
    for sec in elf.iter_sections():
        if isinstance(sec, SymbolTableSection) and sec["sh_type"] != "SHT_NOBITS":
            has_symtab = has_symtab or sec.name == ".symtab"
            for sym in sec.iter_symbols():
                stype = sym["st_info"]["type"]
                kind = {"STT_FUNC": "func", "STT_GNU_IFUNC": "func", "STT_OBJECT": "object",
                        "STT_TLS": "tls"}.get(stype)
                if kind and sym.name and sym["st_shndx"] != "SHN_UNDEF":
                    symbols.append(Symbol(sym.name, sym["st_value"], sym["st_size"], kind))
    has_dwarf_lines = elf.get_section_by_name(".debug_line") is not None

    if interpreter is not None:
        kind = ElfKind.DYNAMIC
    elif etype == "ET_EXEC":
        kind = ElfKind.STATIC
    elif soname is not None or (needed and hdr["e_entry"] == 0) or hdr["e_entry"] == 0:
        kind = ElfKind.SHARED
    else:
        kind = ElfKind.STATIC_PIE
    return Image(path=path, kind=kind, is_pie=etype == "ET_DYN", entry=hdr["e_entry"],
                 phoff=phoff, phentsize=phentsize, phnum=phnum, segments=tuple(segments),
                 interpreter=interpreter, needed=tuple(needed), soname=soname,
                 symbols=tuple(symbols), has_symtab=has_symtab,
                 has_dwarf_lines=has_dwarf_lines, data=data)


def _check_segment(path: str, seg: Segment, size: int) -> None:
    if seg.filesz > seg.memsz:
        raise ElfError(path, f"segment at {seg.vaddr:#x}: file size exceeds memory size")
    if seg.offset + seg.filesz > size:
        raise ElfError(path, f"segment at {seg.vaddr:#x} extends beyond the end of the file (truncated?)")
    if seg.vaddr + seg.memsz >= 1 << 47:
        raise ElfError(path, f"segment at {seg.vaddr:#x} lies outside user address space")
    if seg.align > 1 and (seg.vaddr - seg.offset) % min(seg.align, 4096) != 0:
        raise ElfError(path, f"segment at {seg.vaddr:#x}: address and offset disagree modulo the page size")
