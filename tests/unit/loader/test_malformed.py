"""Malformed ELF files: each is refused with a clear ElfError, or loads with a warning.

Every file is derived from a real binary compiled in the session: truncated at each header
boundary or with one field corrupted.  A hypothesis property then checks that random damage
only ever yields an Image or an ElfError, quickly.
"""

from __future__ import annotations

import os
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leakdbt.errors import ElfError
from leakdbt.loader import elf
from leakdbt.loader.elf import load_image
from leakdbt.loader.info import describe, format_info

HELLO = r"""
#include <stdio.h>
int main(void) { puts("hello"); return 0; }
"""
TINY = r"""
int helper(int x) { return x * 3 + 1; }
void _start(void) {
    __asm__ volatile("mov $60, %%eax; mov %0, %%edi; syscall" :: "r"(helper(1)) : "eax", "edi");
}
"""

# Field (offset, struct format) inside the ELF header, a program header and a section header.
EHDR = {
    "class": (4, "B"), "data": (5, "B"), "osabi": (7, "B"), "type": (16, "<H"),
    "machine": (18, "<H"), "entry": (24, "<Q"), "phoff": (32, "<Q"), "shoff": (40, "<Q"),
    "phentsize": (54, "<H"), "phnum": (56, "<H"), "shentsize": (58, "<H"), "shnum": (60, "<H"),
    "shstrndx": (62, "<H"),
}  # fmt: skip
PHDR = {
    "type": (0, "<I"), "flags": (4, "<I"), "offset": (8, "<Q"), "vaddr": (16, "<Q"),
    "filesz": (32, "<Q"), "memsz": (40, "<Q"), "align": (48, "<Q"),
}  # fmt: skip
SHDR = {
    "name": (0, "<I"), "type": (4, "<I"), "offset": (24, "<Q"), "size": (32, "<Q"),
    "link": (40, "<I"), "entsize": (56, "<Q"),
}  # fmt: skip
PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_NOTE, PT_PHDR, PT_TLS = 1, 2, 3, 4, 6, 7
DT_NEEDED, DT_STRTAB = 1, 5


class Elf:
    """A mutable copy of an ELF file with helpers to read and patch header fields."""

    def __init__(self, data: bytes) -> None:
        self.buf = bytearray(data)

    def get(self, base: int, fields: dict[str, tuple[int, str]], name: str) -> int:
        """Read one field of the structure at ``base``."""
        off, fmt = fields[name]
        return int(struct.unpack_from(fmt, self.buf, base + off)[0])

    def put(self, base: int, fields: dict[str, tuple[int, str]], name: str, value: int) -> Elf:
        """Overwrite one field of the structure at ``base``."""
        off, fmt = fields[name]
        struct.pack_into(fmt, self.buf, base + off, value)
        return self

    def eh(self, name: str) -> int:
        """An ELF header field."""
        return self.get(0, EHDR, name)

    def set_eh(self, name: str, value: int) -> Elf:
        """Patch an ELF header field."""
        return self.put(0, EHDR, name, value)

    def phdr(self, i: int) -> int:
        """File offset of program header ``i``."""
        return self.eh("phoff") + 56 * i

    def phdrs(self, ptype: int) -> list[int]:
        """Offsets of the program headers of one type, in table order."""
        bases = [self.phdr(i) for i in range(self.eh("phnum"))]
        return [b for b in bases if self.get(b, PHDR, "type") == ptype]

    def ph(self, ptype: int, name: str, n: int = 0) -> int:
        """Field ``name`` of the n-th program header of type ``ptype``."""
        return self.get(self.phdrs(ptype)[n], PHDR, name)

    def set_ph(self, ptype: int, name: str, value: int, n: int = 0) -> Elf:
        """Patch field ``name`` of the n-th program header of type ``ptype``."""
        return self.put(self.phdrs(ptype)[n], PHDR, name, value)

    def section(self, wanted: str) -> int:
        """File offset of the section header called ``wanted``."""
        shoff, names = self.eh("shoff"), self.eh("shstrndx")
        strtab = self.get(shoff + 64 * names, SHDR, "offset")
        for i in range(self.eh("shnum")):
            base = shoff + 64 * i
            start = strtab + self.get(base, SHDR, "name")
            if self.buf[start : self.buf.index(0, start)].decode() == wanted:
                return base
        raise KeyError(wanted)

    def sh(self, section: str, name: str) -> int:
        """Field ``name`` of a named section header."""
        return self.get(self.section(section), SHDR, name)

    def set_sh(self, section: str, name: str, value: int) -> Elf:
        """Patch field ``name`` of a named section header."""
        return self.put(self.section(section), SHDR, name, value)

    def dynamic_entry(self, tag: int) -> int:
        """File offset of the first dynamic entry with ``tag``."""
        off, size = self.ph(PT_DYNAMIC, "offset"), self.ph(PT_DYNAMIC, "filesz")
        for at in range(off, off + size, 16):
            if struct.unpack_from("<q", self.buf, at)[0] == tag:
                return at
        raise KeyError(tag)

    def cut(self, size: int) -> Elf:
        """Truncate the file to ``size`` bytes."""
        del self.buf[size:]
        return self

    def bytes(self) -> bytes:
        """The (patched) file contents."""
        return bytes(self.buf)


@dataclass(frozen=True)
class Bins:
    """The compiled bases every case starts from."""

    static: bytes  # gcc -static -no-pie: has PT_TLS, .symtab, no PT_INTERP
    dynamic: bytes  # gcc -pie: PT_INTERP, PT_DYNAMIC with DT_NEEDED
    tiny: bytes  # -nostdlib static, a few KiB: the hypothesis base


def _compile(root: Path, name: str, source: str, flags: list[str]) -> bytes:
    """Build ``source`` with gcc and return the binary's bytes."""
    src = root / f"{name}.c"
    src.write_text(source)
    subprocess.run(["gcc", "-O1", *flags, "-o", str(root / name), str(src)], check=True)
    return (root / name).read_bytes()


@pytest.fixture(scope="session")
def bins(tmp_path_factory: pytest.TempPathFactory) -> Bins:
    """Compile the base binaries once per session."""
    root = tmp_path_factory.mktemp("malformed")
    return Bins(
        static=_compile(root, "static", HELLO, ["-static", "-no-pie"]),
        dynamic=_compile(root, "dynamic", HELLO, ["-pie", "-fPIE"]),
        tiny=_compile(
            root, "tiny", TINY, ["-nostdlib", "-static", "-no-pie", "-fno-stack-protector", "-g"]
        ),
    )


def S(b: Bins) -> Elf:
    """A fresh editable copy of the static base."""
    return Elf(b.static)


def D(b: Bins) -> Elf:
    """A fresh editable copy of the dynamic base."""
    return Elf(b.dynamic)


def _swap_first_loads(e: Elf) -> Elf:
    """Exchange the first two PT_LOAD program headers."""
    a, b = e.phdrs(PT_LOAD)[:2]
    e.buf[a : a + 56], e.buf[b : b + 56] = e.buf[b : b + 56], e.buf[a : a + 56]
    return e


def _no_loads(e: Elf) -> Elf:
    """Turn every PT_LOAD into PT_NOTE."""
    for base in e.phdrs(PT_LOAD):
        e.put(base, PHDR, "type", PT_NOTE)
    return e


def _needed_offset(e: Elf, value: int) -> Elf:
    """Point the first DT_NEEDED at ``value`` in the dynamic string table."""
    struct.pack_into("<Q", e.buf, e.dynamic_entry(DT_NEEDED) + 8, value)
    return e


def _drop_strtab(e: Elf) -> Elf:
    """Retag DT_STRTAB as DT_DEBUG (21), leaving DT_NEEDED without strings."""
    struct.pack_into("<q", e.buf, e.dynamic_entry(DT_STRTAB), 21)
    return e


def _page_up(n: int) -> int:
    return (n + 0xFFF) & ~0xFFF


Case = tuple[str, Callable[[Bins], bytes], str]

# (name, builder, phrase the ElfError message must contain)
REFUSED: list[Case] = [
    # --- not an ELF at all
    ("empty_file", lambda b: b"", "empty file"),
    ("text_file", lambda b: b"hello, world\n" * 10, "not an ELF file"),
    ("shell_script", lambda b: b"#!/bin/sh\necho hi\n", "script"),
    ("only_magic", lambda b: b"\x7fEL", "truncated ELF header"),
    # --- truncated at each header boundary
    ("truncated_in_ident", lambda b: b.static[:16], "truncated ELF header (16 of 64"),
    ("truncated_in_elf_header", lambda b: b.static[:63], "truncated ELF header (63 of 64"),
    ("truncated_after_elf_header", lambda b: b.static[:64], "program header table"),
    ("truncated_in_program_headers", lambda b: b.static[: 64 + 56 * 2 + 7], "program header"),
    (
        "truncated_after_program_headers",
        lambda b: b.static[: S(b).phdr(S(b).eh("phnum"))],
        "PT_LOAD segment at 0x400000",
    ),
    ("truncated_in_text", lambda b: b.static[:0x1800], "past end of file"),
    (
        "truncated_at_symtab",
        lambda b: S(b).cut(S(b).sh(".symtab", "offset")).bytes(),
        "section header table",
    ),
    (
        "truncated_at_strtab",
        lambda b: S(b).cut(S(b).sh(".strtab", "offset") + 10).bytes(),
        "section header table",
    ),
    (
        "truncated_at_section_headers",
        lambda b: S(b).cut(S(b).eh("shoff")).bytes(),
        "section header table",
    ),
    (
        "truncated_in_section_headers",
        lambda b: S(b).cut(S(b).eh("shoff") + 64 * 3 + 5).bytes(),
        "section header table",
    ),
    ("truncated_last_byte", lambda b: b.static[:-1], "section header table"),
    (
        "truncated_in_interpreter",
        lambda b: D(b).cut(D(b).ph(PT_INTERP, "offset") + 5).bytes(),
        "interpreter path (PT_INTERP)",
    ),
    # --- ELF header fields
    ("class_32", lambda b: S(b).set_eh("class", 1).bytes(), "32-bit"),
    ("class_invalid", lambda b: S(b).set_eh("class", 7).bytes(), "invalid ELF class 7"),
    ("big_endian", lambda b: S(b).set_eh("data", 2).bytes(), "big-endian"),
    ("data_invalid", lambda b: S(b).set_eh("data", 0).bytes(), "invalid ELF data encoding"),
    ("machine_aarch64", lambda b: S(b).set_eh("machine", 183).bytes(), "EM_AARCH64"),
    ("machine_i386", lambda b: S(b).set_eh("machine", 3).bytes(), "EM_386"),
    ("machine_unknown", lambda b: S(b).set_eh("machine", 9999).bytes(), "e_machine 9999"),
    ("type_rel", lambda b: S(b).set_eh("type", 1).bytes(), "relocatable object"),
    ("type_core", lambda b: S(b).set_eh("type", 4).bytes(), "core dump"),
    ("type_unknown", lambda b: S(b).set_eh("type", 0x1234).bytes(), "0x1234"),
    # --- program header table
    ("zero_phnum", lambda b: S(b).set_eh("phnum", 0).bytes(), "no program headers"),
    ("phentsize_wrong", lambda b: S(b).set_eh("phentsize", 32).bytes(), "e_phentsize is 32"),
    ("phnum_pn_xnum", lambda b: S(b).set_eh("phnum", 0xFFFF).bytes(), "PN_XNUM"),
    ("phnum_absurd", lambda b: S(b).set_eh("phnum", 5000).bytes(), "too many program headers"),
    ("phoff_past_eof", lambda b: S(b).set_eh("phoff", 1 << 40).bytes(), "program header table"),
    ("phoff_in_elf_header", lambda b: S(b).set_eh("phoff", 8).bytes(), "bad e_phoff"),
    # --- PT_LOAD segments
    (
        "overlapping_segments",
        lambda b: S(b).set_ph(PT_LOAD, "memsz", 0x200000, 1).bytes(),
        "segments overlap",
    ),
    ("unsorted_segments", lambda b: _swap_first_loads(S(b)).bytes(), "ascending"),
    ("no_load_segments", lambda b: _no_loads(S(b)).bytes(), "no loadable"),
    (
        "segment_offset_past_eof",
        lambda b: S(b).set_ph(PT_LOAD, "offset", _page_up(len(b.static)) + 0x1000, 1).bytes(),
        "past end of file",
    ),
    (
        "filesz_exceeds_memsz",
        lambda b: S(b).set_ph(PT_LOAD, "filesz", S(b).ph(PT_LOAD, "memsz", 3) + 1, 3).bytes(),
        "exceeds memory size",
    ),
    (
        "vaddr_kernel_space",
        lambda b: S(b).set_ph(PT_LOAD, "vaddr", 0xFFFFFFFF80000000).bytes(),
        "user address space",
    ),
    (
        "memsz_absurd",
        lambda b: S(b).set_ph(PT_LOAD, "memsz", 1 << 45, 3).bytes(),
        "absurd image size",
    ),
    ("align_not_power_of_two", lambda b: S(b).set_ph(PT_LOAD, "align", 0x1800).bytes(), "power"),
    (
        "vaddr_offset_incongruent",
        lambda b: S(b).set_ph(PT_LOAD, "vaddr", 0x401010, 1).bytes(),
        "differ modulo the page size",
    ),
    (
        "exec_below_mmap_min_addr",
        lambda b: S(b).set_ph(PT_LOAD, "vaddr", 0x1000).bytes(),
        "mmap_min_addr",
    ),
    # --- PT_TLS
    (
        "tls_filesz_exceeds_memsz",
        lambda b: S(b).set_ph(PT_TLS, "filesz", S(b).ph(PT_TLS, "memsz") + 8).bytes(),
        "PT_TLS",
    ),
    # --- PT_INTERP
    (
        "interp_not_terminated",
        lambda b: D(b).set_ph(PT_INTERP, "filesz", D(b).ph(PT_INTERP, "filesz") - 1).bytes(),
        "not NUL-terminated",
    ),
    (
        "interp_past_eof",
        lambda b: D(b).set_ph(PT_INTERP, "offset", len(b.dynamic) - 4).bytes(),
        "past end of file",
    ),
    ("interp_too_long", lambda b: D(b).set_ph(PT_INTERP, "filesz", 5000).bytes(), "out of range"),
    ("interp_too_short", lambda b: D(b).set_ph(PT_INTERP, "filesz", 1).bytes(), "out of range"),
    (
        "interp_empty",
        lambda b: D(b).put(D(b).ph(PT_INTERP, "offset"), {"c": (0, "B")}, "c", 0).bytes(),
        "empty",
    ),
    (
        "interp_twice",
        lambda b: D(b).set_ph(PT_PHDR, "type", PT_INTERP).bytes(),
        "more than one PT_INTERP",
    ),
    # --- PT_DYNAMIC
    (
        "dynamic_past_eof",
        lambda b: D(b).set_ph(PT_DYNAMIC, "offset", len(b.dynamic)).bytes(),
        "dynamic section (PT_DYNAMIC)",
    ),
    ("needed_name_outside_strtab", lambda b: _needed_offset(D(b), 1 << 30).bytes(), "DT_NEEDED"),
    ("needed_without_strtab", lambda b: _drop_strtab(D(b)).bytes(), "no DT_STRTAB"),
    # --- section header table beyond the end of the file (truncation or corrupt e_shoff)
    (
        "shoff_past_eof",
        lambda b: S(b).set_eh("shoff", len(b.static) + 64).bytes(),
        "section header table",
    ),
    ("shnum_absurd", lambda b: S(b).set_eh("shnum", 0xFF00).bytes(), "section header table"),
    (
        "shnum_extended_absurd",
        lambda b: S(b).set_eh("shnum", 0).put(S(b).eh("shoff"), SHDR, "size", 1 << 40).bytes(),
        "section header table (1099511627776 entries)",
    ),
]


@pytest.mark.parametrize(("name", "build", "phrase"), REFUSED, ids=[c[0] for c in REFUSED])
def test_refused(bins: Bins, name: str, build: Callable[[Bins], bytes], phrase: str) -> None:
    data = build(bins)
    with pytest.raises(ElfError) as info:
        load_image(f"/x/{name}", data)
    message = info.value.one_line()
    assert phrase in message
    assert message.startswith(f"/x/{name}: ")
    assert "\n" not in str(info.value)
    assert "unexpected loader failure" not in message
    assert info.value.exit_status == 2


def test_table_is_big_enough() -> None:
    assert len(REFUSED) >= 20
    assert len({c[0] for c in REFUSED}) == len(REFUSED)


def test_bases_load_cleanly(bins: Bins) -> None:
    for data in (bins.static, bins.dynamic, bins.tiny):
        image = load_image("base", data)
        assert image.warnings == ()
        assert image.has_symtab


# (name, builder, phrase a warning must contain, whether .symtab symbols survive)
DEGRADED: list[tuple[str, Callable[[Bins], bytes], str, bool]] = [
    ("shoff_into_program_headers", lambda b: S(b).set_eh("shoff", 64).bytes(), "SHT_NULL", False),
    (
        "shoff_garbage_near_eof",
        lambda b: S(b).set_eh("shoff", len(b.static) - 128).bytes(),
        "SHT_NULL",
        False,
    ),
    ("shentsize_wrong", lambda b: S(b).set_eh("shentsize", 40).bytes(), "e_shentsize", False),
    ("shoff_zero_with_shnum", lambda b: S(b).set_eh("shoff", 0).bytes(), "e_shoff is 0", False),
    ("shstrndx_invalid", lambda b: S(b).set_eh("shstrndx", 0xFE00).bytes(), "e_shstrndx", True),
    ("shstrndx_zero", lambda b: S(b).set_eh("shstrndx", 0).bytes(), "no section name", True),
    (
        "symtab_link_broken",
        lambda b: S(b).set_sh(".symtab", "link", 0).bytes(),
        "not a string table",
        False,
    ),
    (
        "symtab_entsize_wrong",
        lambda b: S(b).set_sh(".symtab", "entsize", 16).bytes(),
        "entry size 16",
        False,
    ),
    (
        "symtab_past_eof",
        lambda b: S(b).set_sh(".symtab", "size", 24 * 10**9).bytes(),
        "extends past end of file",
        False,
    ),
    (
        "symtab_size_ragged",
        lambda b: S(b).set_sh(".symtab", "size", S(b).sh(".symtab", "size") + 5).bytes(),
        "not a multiple of 24",
        True,
    ),
    (
        "strtab_past_eof",
        lambda b: S(b).set_sh(".strtab", "size", 1 << 50).bytes(),
        "string table extends past end of file",
        False,
    ),
    ("osabi_freebsd", lambda b: S(b).set_eh("osabi", 9).bytes(), "ELFOSABI_FREEBSD", True),
    ("entry_outside_text", lambda b: S(b).set_eh("entry", 0x400010).bytes(), "entry point", True),
]


@pytest.mark.parametrize(
    ("name", "build", "phrase", "keeps_symtab"), DEGRADED, ids=[c[0] for c in DEGRADED]
)
def test_degraded(
    bins: Bins, name: str, build: Callable[[Bins], bytes], phrase: str, keeps_symtab: bool
) -> None:
    """Broken section-level data costs symbols and adds a warning; the image still loads."""
    image = load_image(name, build(bins))
    assert any(phrase in w for w in image.warnings), image.warnings
    assert image.has_symtab is keeps_symtab
    assert (image.symbol("main") is not None) is keeps_symtab
    assert image.segments == load_image("base", bins.static).segments
    assert "warnings:" in format_info(image) and phrase in format_info(image)


def test_garbage_string_table_gives_no_crash(bins: Bins) -> None:
    """A string table without NULs loses names but never breaks symbol decoding."""
    e = S(bins)
    off, size = e.sh(".strtab", "offset"), e.sh(".strtab", "size")
    e.buf[off : off + size] = b"A" * size
    image = load_image("garbage", e.bytes())
    assert image.has_symtab
    assert all(s.name for s in image.symbols)
    assert image.symbol("main") is None


def test_symbol_cap(bins: Bins, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(elf, "MAX_SYMBOLS", 100)
    image = load_image("capped", bins.static)
    assert any("only 100" in w for w in image.warnings)
    assert len(image.symbols) <= 100


def test_section_cap(bins: Bins, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(elf, "MAX_SECTIONS", 10)
    image = load_image("capped", bins.static)
    assert any("section headers are more than" in w for w in image.warnings)
    assert not image.has_symtab and image.symbols == ()


@pytest.mark.parametrize("kind", ["missing", "directory", "fifo", "device"])
def test_unreadable_paths(tmp_path: Path, kind: str) -> None:
    """Paths that are not regular files are refused without reading (a FIFO would block)."""
    path = {"missing": str(tmp_path / "nope"), "directory": str(tmp_path), "device": "/dev/zero"}
    if kind == "fifo":
        os.mkfifo(tmp_path / "fifo")
        path["fifo"] = str(tmp_path / "fifo")
    with pytest.raises(ElfError) as info:
        load_image(path[kind])
    expected = "cannot read" if kind == "missing" else "not a regular file"
    assert expected in str(info.value)


INTERESTING = [0, 1, 2, 0x38, 0x40, 0xFF, 0xFFFF, 0xFFFF_FFFF, 1 << 32, 1 << 47, 2**64 - 1]


@st.composite
def damaged(draw: st.DrawFn, bases: list[bytes]) -> bytes:
    """A base ELF with a few bytes or 8-byte fields overwritten, maybe truncated."""
    buf = bytearray(draw(st.sampled_from(bases)))
    shoff = int.from_bytes(buf[40:48], "little")
    for _ in range(draw(st.integers(1, 6))):
        region = draw(st.sampled_from(["ehdr", "phdrs", "shdrs", "anywhere"]))
        lo, hi = {
            "ehdr": (0, 64),
            "phdrs": (64, 64 + 56 * 16),
            "shdrs": (shoff, len(buf)),
            "anywhere": (0, len(buf)),
        }[region]
        hi = min(hi, len(buf))
        if hi - lo < 8:
            continue
        at = draw(st.integers(lo, hi - 8))
        if draw(st.booleans()):
            buf[at] = draw(st.integers(0, 255))
        else:
            value = draw(st.sampled_from(INTERESTING) | st.integers(0, 2**64 - 1))
            buf[at : at + 8] = value.to_bytes(8, "little")
    if draw(st.integers(0, 4)) == 0:
        del buf[draw(st.integers(0, len(buf))) :]
    return bytes(buf)


@pytest.fixture(scope="session")
def hypothesis_bases(bins: Bins) -> list[bytes]:
    """Small bases so that damage lands in headers often: the tiny static ELF and the dynamic."""
    return [bins.tiny, bins.dynamic]


@settings(
    deadline=2000,
    max_examples=200,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_damage_is_image_or_elf_error(
    hypothesis_bases: list[bytes], data: st.DataObject
) -> None:
    blob = data.draw(damaged(hypothesis_bases))
    try:
        image = load_image("fuzz", blob)
    except ElfError as e:
        assert "unexpected loader failure" not in str(e)
        assert "\n" not in str(e)
        return
    # Everything a caller may touch afterwards must work too.
    assert isinstance(image.symbols, tuple)
    image.functions  # noqa: B018
    image.symbolize(image.entry)
    image.symbol("helper")
    assert isinstance(format_info(image), str)
    describe(image)
