"""Parse x86-64 Linux ELF files into :class:`~leakdbt.loader.image.Image` descriptions.

Plain ``struct`` decoding in which every offset, size and count is checked against the file
before it is used, so hostile input costs at most time linear in the file size and never a
large allocation.  Follows the System V gABI, the AMD64 psABI and Linux's fs/binfmt_elf.c.

What the kernel and ld.so need (ELF header, program headers, PT_LOAD contents, PT_INTERP,
PT_DYNAMIC and its strings, PT_TLS) must be sound or :class:`~leakdbt.errors.ElfError` is
raised.  Section headers only give us symbols and debug information, so problems inside them
become ``Image.warnings`` instead; the one exception is a section header table that starts
like one (entry 0 is SHT_NULL) but runs past the end of the file: the file was truncated, and
is refused.
Nothing but ElfError ever escapes :func:`load_image`.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from typing import NamedTuple, NoReturn

from leakdbt.errors import ElfError
from leakdbt.loader.image import PF_X, ElfKind, Image, Segment, Symbol

ELF_MAGIC = b"\x7fELF"

MAX_FILE_SIZE = 1 << 32  # no sane guest is bigger; refusing keeps memory use bounded
MAX_PHDR_BYTES = 65536  # Linux refuses larger program header tables (load_elf_phdrs)
MAX_SEGMENTS = MAX_PHDR_BYTES // 56  # most program headers Linux accepts
MAX_SECTIONS = 1 << 16  # more section headers than this are ignored, with a warning
MAX_SYMBOLS = 1 << 20  # symbol entries decoded per image, over all tables
MAX_DYNAMIC = 1 << 16  # dynamic entries read
MAX_SPAN = 1 << 40  # an image spanning more address space than this is absurd
PATH_MAX = 4096  # Linux's bound on the PT_INTERP size
TASK_SIZE = 0x7FFF_FFFF_F000  # end of the x86-64 user address space (4-level paging)
MMAP_MIN_ADDR = 0x10000  # default vm.mmap_min_addr: Linux will not map ET_EXEC pages below
PAGE_SIZE = 0x1000

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_DYN = struct.Struct("<qQ")

ET_EXEC, ET_DYN = 2, 3
EM_X86_64 = 62
PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_TLS = 1, 2, 3, 7
PN_XNUM = 0xFFFF
SHT_NULL, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOBITS, SHT_DYNSYM = 0, 2, 3, 4, 8, 11
R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT = 6, 7
_RELA = struct.Struct("<QQq")
PLT_SECTIONS = (".plt", ".plt.sec", ".plt.got")
MAX_PLT_BYTES = 1 << 20
SHN_UNDEF, SHN_XINDEX = 0, 0xFFFF
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME = 0, 1, 5, 10, 14
DT_FLAGS_1 = 0x6FFFFFFB
DF_1_PIE = 0x08000000

_E_TYPES = {
    0: "no file type (ET_NONE)",
    1: "a relocatable object file (ET_REL), not an executable: link it first",
    4: "a core dump (ET_CORE), not an executable",
}
_MACHINES = {
    0: "EM_NONE", 2: "EM_SPARC", 3: "EM_386", 4: "EM_68K", 8: "EM_MIPS", 20: "EM_PPC",
    21: "EM_PPC64", 22: "EM_S390", 40: "EM_ARM", 42: "EM_SH", 43: "EM_SPARCV9",
    50: "EM_IA_64", 183: "EM_AARCH64", 243: "EM_RISCV", 247: "EM_BPF", 258: "EM_LOONGARCH",
}  # fmt: skip
_OS_ABIS = {
    1: "ELFOSABI_HPUX", 2: "ELFOSABI_NETBSD", 6: "ELFOSABI_SOLARIS", 7: "ELFOSABI_AIX",
    8: "ELFOSABI_IRIX", 9: "ELFOSABI_FREEBSD", 12: "ELFOSABI_OPENBSD",
}  # fmt: skip
_SYMBOL_KINDS = {1: "object", 2: "func", 6: "tls", 10: "func"}  # STT_GNU_IFUNC is a function


def load_image(path: str | os.PathLike[str], data: bytes | None = None) -> Image:
    """Read and validate the ELF file at ``path`` (or the given bytes) into an Image."""
    spath = os.fspath(path)
    if data is None:
        data = _read(spath)
    try:
        return _Parser(spath, bytes(data)).parse()
    except ElfError:
        raise
    except Exception as e:  # a loader bug must still reach the user as a one-line ElfError
        raise ElfError(spath, f"unexpected loader failure ({type(e).__name__}: {e})") from e


def section_headers(path: str, data: bytes) -> list[Section]:
    """The named section headers of the ELF file ``data`` ([] when it has none usable): what
    ``leakdbt info`` and ``leakdbt harden`` read of its sections."""
    parser = _Parser(path, data)
    h = parser.header()
    return parser.sections(h.shoff, h.shentsize, h.shnum, h.shstrndx)


def _read(path: str) -> bytes:
    """The file's bytes; refuses non-regular files (a FIFO or /dev/zero would hang us)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ElfError(path, f"cannot read: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = "a directory" if stat.S_ISDIR(st.st_mode) else "a device, FIFO or socket"
            raise ElfError(path, f"not a regular file ({what})")
        if st.st_size > MAX_FILE_SIZE:
            raise ElfError(path, f"file too large ({st.st_size} bytes; at most 4 GiB is loaded)")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_FILE_SIZE + 1)
        if len(data) > MAX_FILE_SIZE:
            raise ElfError(path, "file too large (at most 4 GiB is loaded)")
        return data
    except OSError as e:
        raise ElfError(path, f"cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)


class _Ehdr(NamedTuple):
    ident: bytes
    type: int
    machine: int
    version: int
    entry: int
    phoff: int
    shoff: int
    flags: int
    ehsize: int
    phentsize: int
    phnum: int
    shentsize: int
    shnum: int
    shstrndx: int


class _Phdr(NamedTuple):
    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    align: int


class _Section(NamedTuple):
    number: int
    name: str
    type: int
    addr: int
    offset: int
    size: int
    link: int
    entsize: int


Section = _Section  # a section header with its name, as section_headers returns it


class _Dynamic(NamedTuple):
    needed: tuple[str, ...]
    soname: str | None
    flags_1: int


@dataclass(frozen=True)
class _SymbolTable:
    """Where one validated symbol table and its string table lie in the file."""

    offset: int
    count: int
    str_offset: int
    str_size: int


@dataclass(frozen=True)
class _SymbolDecoder:
    """Decodes validated symbol tables on first use of ``Image.symbols`` (loading stays fast)."""

    data: bytes
    tables: tuple[_SymbolTable, ...]
    plt: _Plt | None = None

    def __call__(self) -> tuple[Symbol, ...]:
        """Defined function, object and TLS symbols of every table, in file order, then
        ``NAME@plt`` for the PLT stubs."""
        data = self.data
        out: list[Symbol] = []
        for t in self.tables:
            str_end = t.str_offset + t.str_size
            names: dict[int, str] = {}
            raw = data[t.offset : t.offset + t.count * _SYM.size]
            for st_name, st_info, _other, st_shndx, value, size in _SYM.iter_unpack(raw):
                kind = _SYMBOL_KINDS.get(st_info & 0xF)
                if kind is None or st_shndx == SHN_UNDEF or st_name == 0:
                    continue
                name = names.get(st_name)
                if name is None:
                    start = t.str_offset + st_name
                    end = data.find(b"\0", start, str_end) if start < str_end else -1
                    if end <= start:
                        continue  # name outside the string table, unterminated, or empty
                    name = names[st_name] = data[start:end].decode("utf-8", "replace")
                out.append(Symbol(name, value, size, kind))
        if self.plt is not None:
            out += self.plt.symbols(data)
        return tuple(out)


@dataclass(frozen=True)
class _Plt:
    """Where the PLT stubs and their relocations lie (all validated to be in the file)."""

    stubs: tuple[tuple[int, int, int], ...]  # (file offset, size, address) of .plt* sections
    relas: tuple[tuple[int, int], ...]  # (file offset, size) of relocation tables
    dynsym: _SymbolTable

    def symbols(self, data: bytes) -> list[Symbol]:
        """A ``NAME@plt`` function symbol at each stub whose ``jmp [rip+GOT]`` goes through
        the GOT slot of an imported NAME (JUMP_SLOT, or GLOB_DAT for .plt.got)."""
        slots: dict[int, str] = {}
        t = self.dynsym
        for offset, size in self.relas:
            for r_offset, r_info, _addend in _RELA.iter_unpack(data[offset:offset + size]):
                index = r_info >> 32
                if r_info & 0xFFFFFFFF not in (R_X86_64_JUMP_SLOT, R_X86_64_GLOB_DAT):
                    continue
                if not 0 < index < t.count:
                    continue
                st_name = _SYM.unpack_from(data, t.offset + index * _SYM.size)[0]
                start = t.str_offset + st_name
                end = data.find(b"\0", start, t.str_offset + t.str_size)
                if st_name and end > start:
                    slots[r_offset] = data[start:end].decode("utf-8", "replace")
        out = []
        for offset, size, address in self.stubs:
            code = data[offset:offset + size]
            at = code.find(b"\xff\x25")  # jmp qword ptr [rip + disp32]
            while 0 <= at <= len(code) - 6:
                got = address + at + 6 + struct.unpack_from("<i", code, at + 2)[0]
                name = slots.get(got)
                if name is not None:
                    start = at - (code[at - 1:at] == b"\xf2")  # bnd prefix
                    start -= 4 * (code[start - 4:start] == b"\xf3\x0f\x1e\xfa")  # endbr64
                    out.append(Symbol(f"{name}@plt", address + start, at + 6 - start, "func"))
                at = code.find(b"\xff\x25", at + 6)
        return out


class _Parser:
    """One pass over one file; collects warnings and raises ElfError on fatal problems."""

    def __init__(self, path: str, data: bytes) -> None:
        self.path = path
        self.data = data
        self.size = len(data)
        self.warnings: list[str] = []

    def fail(self, message: str) -> NoReturn:
        """Refuse the file."""
        raise ElfError(self.path, message)

    def past_eof(self, what: str, offset: int, size: int) -> NoReturn:
        """Refuse the file because ``what`` ends beyond its last byte."""
        self.fail(
            f"{what} (offset {offset:#x}, size {size:#x}) extends past end of file "
            f"({self.size:#x} bytes; truncated?)"
        )

    def parse(self) -> Image:
        """Validate everything and build the Image."""
        h = self.header()
        e_type, entry, phoff, phentsize, phnum = h.type, h.entry, h.phoff, h.phentsize, h.phnum
        phdrs = self.program_headers(phoff, phentsize, phnum)
        interpreter = self.interpreter(phdrs)
        segments = self.segments(phdrs, e_type)
        dynamic = self.dynamic(phdrs, segments)
        self.tls(phdrs)
        sections = self.sections(h.shoff, h.shentsize, h.shnum, h.shstrndx)
        tables, has_symtab = self.symbol_tables(sections)
        has_dwarf_lines = self.dwarf_lines(sections)

        if interpreter is not None:
            kind = ElfKind.DYNAMIC
        elif e_type == ET_EXEC:
            kind = ElfKind.STATIC
        elif dynamic.flags_1 & DF_1_PIE:
            kind = ElfKind.STATIC_PIE
        elif dynamic.soname is not None or entry == 0 or dynamic.needed:
            kind = ElfKind.SHARED
        else:
            kind = ElfKind.STATIC_PIE
        if kind in (ElfKind.STATIC, ElfKind.STATIC_PIE) and dynamic.needed:
            self.warnings.append(
                "has DT_NEEDED libraries but no PT_INTERP: Linux starts it without loading them"
            )
        if kind is not ElfKind.SHARED and not any(
            s.flags & PF_X and s.vaddr <= entry < s.end for s in segments
        ):
            self.warnings.append(f"entry point {entry:#x} is not inside an executable segment")

        return Image(
            path=self.path,
            kind=kind,
            is_pie=e_type == ET_DYN,
            entry=entry,
            phoff=phoff,
            phentsize=phentsize,
            phnum=phnum,
            segments=segments,
            interpreter=interpreter,
            needed=dynamic.needed,
            soname=dynamic.soname,
            symbols=_SymbolDecoder(self.data, tables, self.plt(sections)) if tables else (),
            has_symtab=has_symtab,
            has_dwarf_lines=has_dwarf_lines,
            data=self.data,
            warnings=tuple(self.warnings),
        )

    def header(self) -> _Ehdr:
        """The ELF header fields, after checking magic, class, byte order, machine and type."""
        d = self.data
        if not d:
            self.fail("empty file, not an ELF file")
        if not d.startswith(ELF_MAGIC):
            if ELF_MAGIC.startswith(d):
                self.fail(f"truncated ELF header ({self.size} of 64 bytes)")
            if d.startswith(b"#!"):
                self.fail("a script (#!), not an ELF file")
            self.fail("not an ELF file (no \\x7fELF magic number)")
        if self.size < _EHDR.size:
            self.fail(f"truncated ELF header ({self.size} of 64 bytes)")
        if d[4] == 1:
            self.fail("32-bit ELF (ELFCLASS32); only 64-bit x86-64 is supported")
        if d[4] != 2:
            self.fail(f"invalid ELF class {d[4]} (expected ELFCLASS64)")
        if d[5] == 2:
            self.fail("big-endian ELF (ELFDATA2MSB); only little-endian x86-64 is supported")
        if d[5] != 1:
            self.fail(f"invalid ELF data encoding {d[5]} (expected ELFDATA2LSB)")
        h = _Ehdr(*_EHDR.unpack_from(d))
        e_type = h.type
        if h.machine != EM_X86_64:
            name = _MACHINES.get(h.machine, f"e_machine {h.machine}")
            self.fail(f"wrong architecture {name}; only x86-64 (EM_X86_64) is supported")
        if e_type not in (ET_EXEC, ET_DYN):
            self.fail(f"not an executable or shared object: {_E_TYPES.get(e_type, hex(e_type))}")
        if d[7] in _OS_ABIS:
            self.warnings.append(f"OS ABI is {_OS_ABIS[d[7]]}; leakdbt emulates Linux")
        return h

    def program_headers(self, phoff: int, phentsize: int, phnum: int) -> list[_Phdr]:
        """The program header table, bounded as Linux bounds it."""
        if phnum == 0:
            self.fail("no program headers (e_phnum is 0): nothing to load")
        if phentsize != _PHDR.size:
            self.fail(f"e_phentsize is {phentsize}, expected {_PHDR.size}")
        if phnum == PN_XNUM:
            self.fail("e_phnum is PN_XNUM (0xffff): extended numbering is not supported by Linux")
        if phnum > MAX_SEGMENTS:
            self.fail(f"too many program headers ({phnum}; Linux accepts at most {MAX_SEGMENTS})")
        if phoff < _EHDR.size:
            self.fail(f"bad e_phoff {phoff:#x}: the program header table overlaps the ELF header")
        size = phnum * _PHDR.size
        if phoff + size > self.size:
            self.past_eof(f"program header table ({phnum} entries)", phoff, size)
        return [_Phdr(*p) for p in _PHDR.iter_unpack(self.data[phoff : phoff + size])]

    def interpreter(self, phdrs: list[_Phdr]) -> str | None:
        """The PT_INTERP path, checked as Linux checks it, or None for a static file."""
        interps = [p for p in phdrs if p.type == PT_INTERP]
        if not interps:
            return None
        if len(interps) > 1:
            self.fail("more than one PT_INTERP program header")
        p = interps[0]
        if not 2 <= p.filesz <= PATH_MAX:
            self.fail(f"PT_INTERP size {p.filesz:#x} is out of range (2 to {PATH_MAX} bytes)")
        if p.offset + p.filesz > self.size:
            self.past_eof("interpreter path (PT_INTERP)", p.offset, p.filesz)
        raw = self.data[p.offset : p.offset + p.filesz]
        if raw[-1] != 0:
            self.fail("interpreter path in PT_INTERP is not NUL-terminated")
        name = raw.split(b"\0", 1)[0]
        if not name:
            self.fail("interpreter path in PT_INTERP is empty")
        return os.fsdecode(name)

    def segments(self, phdrs: list[_Phdr], e_type: int) -> tuple[Segment, ...]:
        """The PT_LOAD segments, each mappable by Linux, ascending and non-overlapping."""
        out: list[Segment] = []
        for p in phdrs:
            if p.type != PT_LOAD:
                continue
            what = f"PT_LOAD segment at {p.vaddr:#x}"
            if p.filesz > p.memsz:
                self.fail(f"{what}: file size {p.filesz:#x} exceeds memory size {p.memsz:#x}")
            if p.offset + p.filesz > self.size:
                self.past_eof(what, p.offset, p.filesz)
            if p.vaddr + p.memsz > TASK_SIZE:
                self.fail(f"{what} (size {p.memsz:#x}) lies outside the user address space")
            if p.align > 1 and p.align & (p.align - 1):
                self.fail(f"{what}: alignment {p.align:#x} is not a power of two")
            if p.filesz and (p.vaddr - p.offset) % PAGE_SIZE:
                self.fail(
                    f"{what}: address and file offset {p.offset:#x} differ modulo the page size,"
                    " so it cannot be mapped"
                )
            if e_type == ET_EXEC and p.memsz and p.vaddr < MMAP_MIN_ADDR:
                self.fail(f"{what} lies below vm.mmap_min_addr ({MMAP_MIN_ADDR:#x})")
            out.append(Segment(p.vaddr, p.memsz, p.offset, p.filesz, p.flags, p.align))
        if not out:
            self.fail("no loadable (PT_LOAD) segments")
        for a, b in zip(out, out[1:], strict=False):
            if b.vaddr < a.vaddr:
                self.fail(
                    f"PT_LOAD segments are not in ascending address order "
                    f"({b.vaddr:#x} follows {a.vaddr:#x})"
                )
            if a.end > b.vaddr:
                self.fail(
                    f"PT_LOAD segments overlap ({a.vaddr:#x}-{a.end:#x} and "
                    f"{b.vaddr:#x}-{b.end:#x})"
                )
        span = out[-1].end - (out[0].vaddr & ~(PAGE_SIZE - 1))
        if span > MAX_SPAN:
            self.fail(f"absurd image size: the segments span {span:#x} bytes")
        return tuple(out)

    def dynamic(self, phdrs: list[_Phdr], segments: tuple[Segment, ...]) -> _Dynamic:
        """DT_NEEDED, DT_SONAME and DT_FLAGS_1 from PT_DYNAMIC, as ld.so would read them."""
        dyns = [p for p in phdrs if p.type == PT_DYNAMIC]
        if not dyns:
            return _Dynamic((), None, 0)
        if len(dyns) > 1:
            self.fail("more than one PT_DYNAMIC program header")
        p = dyns[0]
        if p.offset + p.filesz > self.size:
            self.past_eof("dynamic section (PT_DYNAMIC)", p.offset, p.filesz)
        count = p.filesz // _DYN.size
        if count > MAX_DYNAMIC:
            self.warnings.append(
                f"dynamic section has {count} entries; read the first {MAX_DYNAMIC}"
            )
            count = MAX_DYNAMIC
        needed: list[int] = []
        soname: int | None = None
        strtab: int | None = None
        strsz: int | None = None
        flags_1 = 0
        raw = self.data[p.offset : p.offset + count * _DYN.size]
        for tag, value in _DYN.iter_unpack(raw):
            if tag == DT_NULL:
                break
            if tag == DT_NEEDED:
                needed.append(value)
            elif tag == DT_SONAME:
                soname = value
            elif tag == DT_STRTAB:
                strtab = value
            elif tag == DT_STRSZ:
                strsz = value
            elif tag == DT_FLAGS_1:
                flags_1 = value
        if not needed and soname is None:
            return _Dynamic((), None, flags_1)
        if strtab is None:
            self.fail("dynamic section has DT_NEEDED or DT_SONAME but no DT_STRTAB")
        for s in segments:
            if s.vaddr <= strtab < s.vaddr + s.filesz:
                base = s.offset + (strtab - s.vaddr)
                room = s.vaddr + s.filesz - strtab
                break
        else:
            self.fail(f"DT_STRTAB {strtab:#x} is not inside the file contents of a PT_LOAD segment")
        if strsz is None:
            strsz = room
        elif strsz > room:
            self.fail(f"DT_STRSZ {strsz:#x} runs past the end of its segment")

        def string(offset: int, tag_name: str) -> str:
            end = self.data.find(b"\0", base + offset, base + strsz) if offset < strsz else -1
            if end < 0:
                self.fail(
                    f"{tag_name} name at offset {offset:#x} is not a NUL-terminated string "
                    f"inside the dynamic string table ({strsz:#x} bytes)"
                )
            return os.fsdecode(self.data[base + offset : end])

        return _Dynamic(
            tuple(string(o, "DT_NEEDED") for o in needed),
            None if soname is None else string(soname, "DT_SONAME"),
            flags_1,
        )

    def tls(self, phdrs: list[_Phdr]) -> None:
        """Check the PT_TLS initialisation image, which the guest's libc copies."""
        for p in phdrs:
            if p.type != PT_TLS:
                continue
            if p.filesz > p.memsz:
                self.fail(f"PT_TLS: file size {p.filesz:#x} exceeds memory size {p.memsz:#x}")
            if p.offset + p.filesz > self.size:
                self.past_eof("TLS image (PT_TLS)", p.offset, p.filesz)

    def sections(self, shoff: int, shentsize: int, shnum: int, shstrndx: int) -> list[_Section]:
        """The section headers with names, or [] (with a warning) when they are unusable."""
        warn = self.warnings.append
        if shoff == 0:
            if shnum:
                warn(f"e_shnum is {shnum} but e_shoff is 0; ignoring section headers")
            return []
        if shentsize != _SHDR.size:
            warn(f"e_shentsize is {shentsize}, expected {_SHDR.size}; ignoring section headers")
            return []
        # Entry 0 tells a corrupt e_shoff (not SHT_NULL: degrade) from a truncated file (refuse).
        if shoff + _SHDR.size > self.size:
            n = shnum or 1
            self.past_eof(f"section header table ({n} entries)", shoff, n * _SHDR.size)
        sh0 = _SHDR.unpack_from(self.data, shoff)
        sh0_type, sh0_size, sh0_link = sh0[1], sh0[5], sh0[6]
        if sh0_type != SHT_NULL:
            warn("section header 0 is not SHT_NULL (corrupt e_shoff?); ignoring section headers")
            return []
        count = shnum or sh0_size  # e_shnum 0: the count is in section 0's sh_size
        if count == 0:
            return []
        if shoff + count * _SHDR.size > self.size:
            self.past_eof(f"section header table ({count} entries)", shoff, count * _SHDR.size)
        if count > MAX_SECTIONS:
            warn(f"{count} section headers are more than the {MAX_SECTIONS} read; ignoring them")
            return []
        raw = [
            (t, addr, off, size, link, entsize, name)
            for name, t, _f, addr, off, size, link, _i, _al, entsize in _SHDR.iter_unpack(
                self.data[shoff : shoff + count * _SHDR.size]
            )
        ]
        if shstrndx == SHN_XINDEX:
            shstrndx = sh0_link
        names_at: tuple[int, int] | None = None
        if shstrndx == SHN_UNDEF:
            warn("no section name table (e_shstrndx is 0); section names unknown")
        elif shstrndx >= count or raw[shstrndx][0] != SHT_STRTAB:
            warn(f"e_shstrndx {shstrndx} is not a string table; section names unknown")
        elif raw[shstrndx][2] + raw[shstrndx][3] > self.size:
            warn("section name table extends past end of file; section names unknown")
        else:
            names_at = raw[shstrndx][2], raw[shstrndx][3]
        out: list[_Section] = []
        for i, (t, addr, off, size, link, entsize, name_off) in enumerate(raw):
            name = ""
            if names_at is not None and name_off < names_at[1]:
                start, end = names_at[0] + name_off, names_at[0] + names_at[1]
                stop = self.data.find(b"\0", start, end)
                if stop >= 0:
                    name = self.data[start:stop].decode("utf-8", "replace")
            out.append(_Section(i, name, t, addr, off, size, link, entsize))
        return out

    def symbol_tables(self, sections: list[_Section]) -> tuple[tuple[_SymbolTable, ...], bool]:
        """The usable .symtab/.dynsym tables and whether a .symtab is among them."""
        warn = self.warnings.append
        tables: list[_SymbolTable] = []
        budget = MAX_SYMBOLS
        has_symtab = False
        for s in sections:
            if s.type not in (SHT_SYMTAB, SHT_DYNSYM):
                continue
            what = f"symbol table [{s.number}] {s.name or '(unnamed)'}"
            if s.offset + s.size > self.size:
                warn(f"{what} extends past end of file; ignoring it")
                continue
            if s.entsize != _SYM.size:
                warn(f"{what} has entry size {s.entsize}, expected {_SYM.size}; ignoring it")
                continue
            if s.size % _SYM.size:
                warn(f"{what} size {s.size:#x} is not a multiple of {_SYM.size}")
            if not 0 < s.link < len(sections) or sections[s.link].type != SHT_STRTAB:
                warn(f"{what} links to section {s.link}, not a string table; ignoring it")
                continue
            strings = sections[s.link]
            if strings.offset + strings.size > self.size:
                warn(f"{what}: its string table extends past end of file; ignoring it")
                continue
            count = s.size // _SYM.size
            if count > budget:
                warn(f"{what}: only {budget} of its {count} symbols are read")
                count = budget
            if count == 0:
                continue
            budget -= count
            tables.append(_SymbolTable(s.offset, count, strings.offset, strings.size))
            has_symtab = has_symtab or s.type == SHT_SYMTAB
        return tuple(tables), has_symtab

    def plt(self, sections: list[_Section]) -> _Plt | None:
        """The PLT stubs and the relocations that name them, when both are usable."""
        dynsym = next((s for s in sections if s.type == SHT_DYNSYM), None)
        if dynsym is None:
            return None
        strings = sections[dynsym.link] if 0 < dynsym.link < len(sections) else None
        if (strings is None or strings.type != SHT_STRTAB or dynsym.entsize != _SYM.size
                or dynsym.offset + dynsym.size > self.size
                or strings.offset + strings.size > self.size):
            return None
        table = _SymbolTable(dynsym.offset, dynsym.size // _SYM.size, strings.offset,
                             strings.size)
        in_file = [s for s in sections if s.offset + s.size <= self.size]
        stubs = tuple((s.offset, min(s.size, MAX_PLT_BYTES), s.addr) for s in in_file
                      if s.name in PLT_SECTIONS and s.type != SHT_NOBITS)
        relas = tuple((s.offset, s.size - s.size % _RELA.size) for s in in_file
                      if s.type == SHT_RELA and s.link == dynsym.number)
        return _Plt(stubs, relas, table) if stubs and relas else None

    def dwarf_lines(self, sections: list[_Section]) -> bool:
        """Whether a usable DWARF line table (.debug_line, maybe compressed) is present."""
        for s in sections:
            if s.name in (".debug_line", ".zdebug_line") and s.type != SHT_NOBITS and s.size:
                if s.offset + s.size <= self.size:
                    return True
                self.warnings.append(f"section {s.name} extends past end of file; ignoring it")
        return False
