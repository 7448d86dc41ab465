"""DWARF line tables against binutils' addr2line, on the test programs and fresh builds.

Covers DWARF 5 (gcc 12's default, with directory and file index 0), DWARF 4, position-
independent binaries (link-time addresses), sequence ends, stripped files and broken DWARF.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from leakdbt.loader.dwarf import LineTable, SourceLine, line_table, lookup_source
from leakdbt.loader.elf import load_image
from tests.conftest import KINDS, TEST_BINARIES, binary

# addr2line, strip and objcopy come from binutils, which the Makefile installs (DEBS).


def addr2line(path: str | Path, addresses: list[int]) -> list[tuple[str, int] | None]:
    """addr2line's answer per address: (file, line), or None for ``??`` / line 0 / ``?``."""
    out = subprocess.run(
        ["addr2line", "-e", str(path), *(f"{a:#x}" for a in addresses)],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    assert len(out) == len(addresses)
    answers: list[tuple[str, int] | None] = []
    for text in out:
        text = text.split(" (discriminator ")[0]
        file, _, line = text.rpartition(":")
        answers.append(None if file == "??" or not line.isdigit() or line == "0"
                       else (file, int(line)))
    return answers


def ours(table: LineTable, addresses: list[int]) -> list[tuple[str, int] | None]:
    found = [table.lookup(a) for a in addresses]
    return [None if s is None else (s.file, s.line) for s in found]


def function_addresses(path: str | Path, name: str, count: int) -> list[int]:
    """``count`` addresses spread over function ``name`` (every byte if it is smaller)."""
    image = load_image(path)
    func = image.symbol(name)
    assert func is not None and func.kind == "func"
    lo, hi = image.extent(func)
    step = max(1, (hi - lo) // count)
    return list(range(lo, hi, step))[:count]


def edge_addresses(table: LineTable) -> list[int]:
    """Every row's address, the byte after it, and each sequence's last byte and end."""
    out: set[int] = set()
    for seq in table._seqs:
        out.update(seq.addresses)
        out.update(a + 1 for a in seq.addresses)
        out.update((seq.end - 1, seq.end))
    return sorted(out)


def line_version(path: str | Path) -> set[int]:
    with open(path, "rb") as f:
        dwarf = ELFFile(f).get_dwarf_info()
        return {dwarf.line_program_for_CU(cu).header["version"] for cu in dwarf.iter_CUs()}


@pytest.mark.parametrize("kind", KINDS)
def test_test_program_matches_addr2line(built: Path, kind: str) -> None:
    path = binary(kind, "ct_modexp")
    assert line_version(path) == {5}  # gcc 12 emits DWARF 5
    table = line_table(path)
    assert table is not None and len(table) > 0
    # ~50 addresses in modexp and main; in a PIE these are link-time addresses (from 0).
    addresses = function_addresses(path, "modexp", 25) + function_addresses(path, "main", 25)
    if kind != "static":
        assert min(addresses) < 0x10000  # PIE: link-time, not load, addresses
    expected = addr2line(path, addresses)
    assert ours(table, addresses) == expected
    assert sum(e is not None for e in expected) >= 45
    source = os.fspath(TEST_BINARIES / "ct_modexp.c")
    modexp = table.lookup(function_addresses(path, "modexp", 1)[0])
    assert modexp is not None and os.path.isabs(modexp.file)
    assert os.path.realpath(modexp.file) == os.path.realpath(source)
    assert modexp.line > 0 and modexp.column > 0
    # Every row boundary and sequence end, too (end_sequence: the end is outside).
    edges = edge_addresses(table)
    assert ours(table, edges) == addr2line(path, edges)
    for seq in table._seqs:
        assert table.lookup(seq.end) is None or any(
            s.start <= seq.end < s.end for s in table._seqs
        )


def test_static_libc_code_has_no_line(built: Path) -> None:
    """Code linked from a libc.a without DWARF: None, as addr2line has nothing either."""
    path = binary("static", "ct_modexp")
    addresses = function_addresses(path, "exit", 8) + function_addresses(path, "memcpy", 8)
    assert addr2line(path, addresses) == [None] * len(addresses)
    assert ours(LineTable(path), addresses) == [None] * len(addresses)


def test_all_test_programs_match_addr2line(built: Path) -> None:
    for kind in KINDS:
        for name in ("modexp", "sha256", "sbox_round", "hello"):
            path = binary(kind, name)
            table = LineTable(path)
            edges = edge_addresses(table)
            assert edges, path
            assert ours(table, edges) == addr2line(path, edges), path


@pytest.mark.parametrize(("flags", "version"), [
    (["-gdwarf-4", "-no-pie"], 4),
    (["-gdwarf-4", "-fPIE", "-pie"], 4),
    (["-gdwarf-4", "-static"], 4),
    (["-gdwarf-5", "-gz=zlib"], 5),  # SHF_COMPRESSED debug sections
])
def test_fresh_build(tmp_path: Path, flags: list[str], version: int) -> None:
    out = tmp_path / "ct_modexp_fresh"
    subprocess.run(
        ["gcc", "-O2", *flags, "-I", str(TEST_BINARIES),
         str(TEST_BINARIES / "ct_modexp.c"), "-o", str(out)],
        check=True,
    )
    assert line_version(out) == {version}
    table = LineTable(out)
    addresses = function_addresses(out, "modexp", 25) + function_addresses(out, "main", 25)
    assert ours(table, addresses) == addr2line(out, addresses)
    edges = edge_addresses(table)
    assert ours(table, edges) == addr2line(out, edges)
    files = {s.file for s in (table.lookup(a) for a in edges) if s is not None}
    assert any(f.endswith("/ct_modexp.c") for f in files)
    assert all(os.path.isabs(f) for f in files)


ZERO_ASM = """\
\t.file 0 "{root}" "zero.c"
\t.file 1 "inc" "helper.h"
\t.file 2 "/abs/dir" "other.c"
\t.text
\t.globl _start
\t.type _start, @function
_start:
\t.loc 0 7 3
\tnop
\t.loc 1 11 5
\tnop
\tnop
\t.loc 2 21 0
\tnop
\t.loc 0 9 1
\tmov $60, %eax
\txor %edi, %edi
\tsyscall
\t.size _start, .-_start
"""


def test_dwarf5_file_and_directory_index_zero(tmp_path: Path) -> None:
    """DWARF 5 rows naming file 0 (the primary source) and files in a relative directory."""
    (tmp_path / "zero.s").write_text(ZERO_ASM.format(root=tmp_path))
    out = tmp_path / "zero"
    subprocess.run(
        ["gcc", "-nostdlib", "-static", "-no-pie", "-Wa,--gdwarf-5", "zero.s", "-o", "zero"],
        check=True, cwd=tmp_path,
    )
    assert line_version(out) == {5}
    start = load_image(out).symbol("_start")
    assert start is not None
    s = start.value
    table = LineTable(out)
    root = str(tmp_path)
    assert table.lookup(s) == SourceLine(f"{root}/zero.c", 7, 3)  # file index 0
    assert table.lookup(s + 1) == SourceLine(f"{root}/inc/helper.h", 11, 5)  # relative dir
    assert table.lookup(s + 2) == SourceLine(f"{root}/inc/helper.h", 11, 5)
    assert table.lookup(s + 3) == SourceLine("/abs/dir/other.c", 21, 0)  # absolute dir
    assert table.lookup(s + 4) == SourceLine(f"{root}/zero.c", 9, 1)  # file 0 again
    assert table.lookup(s + 12) == SourceLine(f"{root}/zero.c", 9, 1)  # syscall's 2nd byte
    assert table.lookup(s + 13) is None  # end_sequence: past the last instruction
    assert table.lookup(s - 1) is None
    addresses = list(range(s - 1, s + 15))
    assert ours(table, addresses) == addr2line(out, addresses)


@pytest.mark.parametrize("how", [["strip"], ["objcopy", "--strip-debug"]])
def test_stripped_copy(built: Path, tmp_path: Path, how: list[str]) -> None:
    copy = tmp_path / "ct_modexp"
    shutil.copy(binary("dynamic", "ct_modexp"), copy)
    subprocess.run([*how, str(copy)], check=True)
    assert line_table(copy) is None
    assert LineTable(copy).lookup(0x1410) is None
    assert not LineTable(copy)
    assert lookup_source(copy, 0x1410) is None


def test_not_elf_files(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "text").write_text("hello\n")
    (tmp_path / "elfish").write_bytes(b"\x7fELF" + b"\x02\x01\x01" + b"\0" * 100)
    for path in ("empty", "text", "elfish", "missing"):
        assert line_table(tmp_path / path) is None
        assert LineTable(tmp_path / path).lookup(0x1000) is None
    assert line_table(tmp_path) is None  # a directory
    os.mkfifo(tmp_path / "fifo")
    assert line_table(tmp_path / "fifo") is None  # not opened for reading: it would block
    assert LineTable(tmp_path / "fifo").lookup(0x1000) is None


def _section_range(path: Path, name: str) -> tuple[int, int]:
    with open(path, "rb") as f:
        sec = ELFFile(f).get_section_by_name(name)
        assert sec is not None
        return sec["sh_offset"], sec["sh_size"]


@pytest.mark.parametrize("section", [".debug_line", ".debug_info", ".debug_abbrev",
                                     ".debug_line_str", ".debug_str"])
def test_malformed_dwarf_never_raises(built: Path, tmp_path: Path, section: str) -> None:
    original = Path(binary("dynamic", "ct_modexp")).read_bytes()
    offset, size = _section_range(Path(binary("dynamic", "ct_modexp")), section)
    rng = random.Random(f"{section}-2024")
    probe = [0x1410 + i for i in range(0, 0x45, 3)] + [0, 0x1090, 0xFFFF_FFFF_FFFF_FFFF]
    for n in range(40):
        data = bytearray(original)
        if n % 4 == 0:  # overwrite a run with 0xff (huge lengths, bad forms, ...)
            at = offset + rng.randrange(size)
            data[at:at + 8] = b"\xff" * len(data[at:at + 8])
        elif n % 4 == 1:  # zero the section's first bytes (unit length 0, version 0)
            data[offset:offset + 16] = bytes(16)
        else:  # flip random bytes
            for _ in range(1 + n):
                data[offset + rng.randrange(size)] ^= 1 << rng.randrange(8)
        path = tmp_path / f"bad{n}"
        path.write_bytes(bytes(data))
        table = LineTable(path)
        for a in probe:
            result = table.lookup(a)
            assert result is None or isinstance(result, SourceLine)
        line_table(path)
    # A file cut short in the middle of its DWARF.
    cut = tmp_path / "cut"
    cut.write_bytes(original[: offset + size // 2])
    LineTable(cut).lookup(0x1410)
    line_table(cut)


def test_cached_per_file_and_reread_when_rebuilt(built: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ct_modexp"
    shutil.copy(binary("dynamic", "ct_modexp"), copy)
    first = line_table(copy)
    assert first is not None
    assert line_table(copy) is first
    assert line_table(os.fspath(copy)) is first
    # Replaced by a stripped build: read again, and now there is nothing.
    subprocess.run(["strip", str(copy)], check=True)
    os.utime(copy, ns=(1, 1))
    assert line_table(copy) is None


def test_many_lookups_are_cheap(built: Path) -> None:
    table = line_table(binary("static", "ct_modexp"))
    assert table is not None
    lo = min(s.start for s in table._seqs)
    hi = max(s.end for s in table._seqs)
    results = [table.lookup(a) for a in range(lo - 16, hi + 16)]
    assert sum(r is not None for r in results) > (hi - lo) // 2
