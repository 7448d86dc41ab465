"""load_image against ground truth from readelf and nm, on host binaries and fresh gcc builds."""

from __future__ import annotations

import re
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from leakdbt.loader.elf import load_image
from leakdbt.loader.image import PF_R, PF_W, PF_X, ElfKind, Image

HOST_BINARIES = ["/bin/ls", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]
LIBC = "/lib/x86_64-linux-gnu/libc.so.6"

SOURCE = r"""
#include <stdio.h>
int leak_counter = 3;
__attribute__((noinline)) int leak_target(int x) {
    int s = 0;
    for (int i = 0; i < x; i++) s += i * x + leak_counter;
    return s;
}
int main(int argc, char **argv) { printf("%d\n", leak_target(argc)); return 0; }
"""

# name -> gcc flags; every build must run on the host and print "4".
BUILDS = {
    "static": ["-static", "-no-pie", "-g"],
    "static_stripped": ["-static", "-no-pie", "-s"],
    "static_pie": ["-static-pie", "-g"],
    "dynamic": ["-pie", "-fPIE", "-g"],
    "dynamic_stripped": ["-pie", "-fPIE", "-s"],
    "dynamic_nopie": ["-no-pie", "-fno-PIE"],
    "shared": ["-shared", "-fPIC", "-Wl,-soname,libleaktest.so.1"],
}
EXPECTED_KIND = {
    "static": ElfKind.STATIC,
    "static_stripped": ElfKind.STATIC,
    "static_pie": ElfKind.STATIC_PIE,
    "dynamic": ElfKind.DYNAMIC,
    "dynamic_stripped": ElfKind.DYNAMIC,
    "dynamic_nopie": ElfKind.DYNAMIC,
    "shared": ElfKind.SHARED,
}


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Compile SOURCE once per flag set; returns build name -> path."""
    root = tmp_path_factory.mktemp("elf_builds")
    src = root / "prog.c"
    src.write_text(SOURCE)
    out: dict[str, str] = {}
    for name, flags in BUILDS.items():
        exe = root / name
        subprocess.run(["gcc", "-O1", *flags, "-o", str(exe), str(src)], check=True)
        out[name] = str(exe)
    return out


def readelf(path: str) -> dict[str, object]:
    """Ground truth parsed from ``readelf -lhdSW``."""
    text = subprocess.run(
        ["readelf", "-lhdSW", path], capture_output=True, text=True, check=True
    ).stdout
    etype = re.search(r"^\s*Type:\s+(\w+)", text, re.M)
    entry = re.search(r"^\s*Entry point address:\s+(0x[0-9a-f]+)", text, re.M)
    assert etype and entry
    load = re.compile(
        r"^\s*LOAD\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+0x[0-9a-f]+\s+(0x[0-9a-f]+)\s+"
        r"(0x[0-9a-f]+)\s([RWE ]{3})\s+(0x[0-9a-f]+)\s*$",
        re.M,
    )
    segments = []
    for m in load.finditer(text):
        offset, vaddr, filesz, memsz, flg, align = m.groups()
        flags = (PF_R if "R" in flg else 0) | (PF_W if "W" in flg else 0)
        flags |= PF_X if "E" in flg else 0
        segments.append(
            (
                int(vaddr, 16),
                int(memsz, 16),
                int(offset, 16),
                int(filesz, 16),
                flags,
                int(align, 16),
            )
        )
    interp = re.search(r"\[Requesting program interpreter: (.*)\]", text)
    soname = re.search(r"\(SONAME\)\s+Library soname: \[(.*)\]", text)
    sections = dict(re.findall(r"^\s*\[\s*\d+\]\s+(\S+)\s+([A-Z_0-9]+)\s", text, re.M))
    return {
        "type": etype.group(1),
        "entry": int(entry.group(1), 16),
        "segments": segments,
        "interpreter": interp.group(1) if interp else None,
        "needed": re.findall(r"\(NEEDED\)\s+Shared library: \[(.*)\]", text),
        "soname": soname.group(1) if soname else None,
        "pie_flag": bool(re.search(r"\(FLAGS_1\)\s+Flags:.*\bPIE\b", text)),
        "has_symtab": sections.get(".symtab") == "SYMTAB",
        "has_debug_line": ".debug_line" in sections,
    }


def expected_kind(truth: dict[str, object]) -> ElfKind:
    """The kind rule restated over readelf's view of the file."""
    if truth["interpreter"]:
        return ElfKind.DYNAMIC
    if truth["type"] == "EXEC":
        return ElfKind.STATIC
    if truth["pie_flag"]:
        return ElfKind.STATIC_PIE
    return ElfKind.SHARED


def nm_functions(path: str, dynamic: bool = False) -> list[tuple[int, int, str]]:
    """(address, size, name) of the defined, sized function symbols ``nm`` lists."""
    args = ["nm", "-S", "--defined-only"] + (["-D"] if dynamic else [])
    text = subprocess.run([*args, path], capture_output=True, text=True, check=True).stdout
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "TtWi":
            out.append((int(parts[0], 16), int(parts[1], 16), parts[3].split("@")[0]))
    return out


def check_against_readelf(image: Image, path: str) -> None:
    """Every header-level fact of ``image`` equals readelf's."""
    truth = readelf(path)
    assert image.entry == truth["entry"]
    assert image.is_pie == (truth["type"] == "DYN")
    got = [(s.vaddr, s.memsz, s.offset, s.filesz, s.flags, s.align) for s in image.segments]
    assert got == truth["segments"]
    assert image.interpreter == truth["interpreter"]
    assert list(image.needed) == truth["needed"]
    assert image.soname == truth["soname"]
    assert image.has_symtab == truth["has_symtab"]
    assert image.has_dwarf_lines == truth["has_debug_line"]
    assert image.kind is expected_kind(truth)
    assert image.warnings == ()


def check_symbolize(image: Image, functions: list[tuple[int, int, str]]) -> None:
    """symbolize(address + offset) names a symbol nm puts at that address, with that offset."""
    aliases: dict[int, set[str]] = defaultdict(set)
    for addr, _size, name in functions:
        aliases[addr].add(name)
    assert functions
    for addr, size, _name in functions:
        off = size // 2
        got = image.symbolize(addr + off)
        assert got is not None, hex(addr)
        name, _, got_off = got.partition("+")
        assert name in aliases[addr]
        assert int(got_off or "0", 16) == off


@pytest.mark.parametrize("path", HOST_BINARIES)
def test_host_binary_matches_readelf(path: str) -> None:
    check_against_readelf(load_image(path), path)


def test_host_kinds() -> None:
    assert load_image("/bin/ls").kind is ElfKind.DYNAMIC
    # libc.so.6 carries PT_INTERP (running it prints its version), so Linux starts it dynamically.
    assert load_image(LIBC).kind is ElfKind.DYNAMIC
    assert load_image(LIBC).soname == "libc.so.6"
    assert load_image("/lib64/ld-linux-x86-64.so.2").kind is ElfKind.SHARED


def test_libc_dynamic_symbols_match_nm() -> None:
    image = load_image(LIBC)
    functions = nm_functions(LIBC, dynamic=True)
    check_symbolize(image, functions)
    names = {s.name for s in image.symbols if s.kind == "func"}
    assert {name for _a, _s, name in functions} <= names
    malloc = image.symbol("malloc")
    assert malloc is not None and malloc.kind == "func"
    assert malloc.value in {a for a, _s, n in functions if n == "malloc"}


def test_libc_loads_fast() -> None:
    """Headers only: symbols are decoded lazily, so loading libc stays far below 100 ms."""
    best = min(_time(lambda: load_image(LIBC)) for _ in range(5))
    assert best < 0.05


def _time(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@pytest.mark.parametrize("name", list(BUILDS))
def test_build_matches_readelf(builds: dict[str, str], name: str) -> None:
    image = load_image(builds[name])
    check_against_readelf(image, builds[name])
    assert image.kind is EXPECTED_KIND[name]


@pytest.mark.parametrize("name", list(BUILDS))
def test_build_runs_on_host(builds: dict[str, str], name: str) -> None:
    """The builds are real programs (sanity check of the fixtures themselves)."""
    if name == "shared":
        assert load_image(builds[name]).entry == 0
        return
    run = subprocess.run([builds[name], "a", "b", "c"], capture_output=True, text=True)
    assert run.stdout.strip() == str(sum(i * 4 + 3 for i in range(4)))


@pytest.mark.parametrize(
    ("name", "dwarf", "symtab"),
    [
        ("static", True, True),
        ("static_stripped", False, False),
        ("static_pie", True, True),
        ("dynamic", True, True),
        ("dynamic_stripped", False, False),
    ],
)
def test_debug_info_and_symtab(
    builds: dict[str, str], name: str, dwarf: bool, symtab: bool
) -> None:
    image = load_image(builds[name])
    assert image.has_dwarf_lines is dwarf
    assert image.has_symtab is symtab


@pytest.mark.parametrize("name", ["static", "static_pie", "dynamic", "dynamic_nopie", "shared"])
def test_symbolize_matches_nm(builds: dict[str, str], name: str) -> None:
    image = load_image(builds[name])
    functions = nm_functions(builds[name])
    check_symbolize(image, functions)
    target = [(a, s) for a, s, n in functions if n == "leak_target"]
    assert len(target) == 1
    addr, size = target[0]
    assert image.symbolize(addr) == "leak_target"
    assert image.symbolize(addr + 5) == "leak_target+0x5"
    assert image.symbolize(addr + size) != f"leak_target+{size:#x}"
    sym = image.symbol("leak_target")
    assert sym is not None and (sym.value, sym.size, sym.kind) == (addr, size, "func")
    counter = image.symbol("leak_counter")
    assert counter is not None and counter.kind == "object"


@pytest.mark.parametrize("name", ["static", "static_pie"])
def test_functions_are_readelf_function_addresses(builds: dict[str, str], name: str) -> None:
    """``functions`` holds one entry per distinct defined FUNC/IFUNC address readelf lists."""
    image = load_image(builds[name])
    text = subprocess.run(
        ["readelf", "-sW", builds[name]], capture_output=True, text=True, check=True
    ).stdout
    row = re.compile(r"^\s*\d+:\s+([0-9a-f]+)\s+\d+\s+(FUNC|IFUNC)\s+\w+\s+\w+\s+(\w+)", re.M)
    addrs = {int(a, 16) for a, _t, ndx in row.findall(text) if ndx != "UND"}
    addrs.discard(0)
    assert {f.value for f in image.functions} == addrs
    values = [f.value for f in image.functions]
    assert values == sorted(set(values))


def test_stripped_dynamic_has_only_dynamic_symbols(builds: dict[str, str]) -> None:
    image = load_image(builds["dynamic_stripped"])
    assert image.symbol("leak_target") is None
    assert image.symbolize(image.entry) is None
    # only the PLT stubs of imported functions, named from .rela.plt as objdump names them
    assert image.functions and all(f.name.endswith("@plt") for f in image.functions)


def test_entry_symbol_is_start(builds: dict[str, str]) -> None:
    for name in ["static", "static_pie", "dynamic", "dynamic_nopie"]:
        image = load_image(builds[name])
        assert image.symbolize(image.entry) == "_start"


def test_bytes_argument_equals_file(builds: dict[str, str]) -> None:
    path = builds["static"]
    from_bytes = load_image("named-elsewhere", Path(path).read_bytes())
    from_file = load_image(path)
    assert from_bytes.path == "named-elsewhere"
    assert from_bytes.segments == from_file.segments
    assert from_bytes.symbols == from_file.symbols
    assert from_bytes.data == from_file.data


def test_image_bounds_and_repr(builds: dict[str, str]) -> None:
    image = load_image(builds["static"])
    assert image.low == 0x400000
    assert image.high % 0x1000 == 0 and image.high >= image.segments[-1].end
    assert "static" in repr(image) and len(repr(image)) < 300
    assert image.segments[1].perms == "r-x"


def test_tls_symbols_do_not_symbolize_addresses(builds: dict[str, str]) -> None:
    """TLS symbol values are block offsets; symbolize must not report them as addresses."""
    image = load_image(builds["static_pie"])
    tls = [s for s in image.symbols if s.kind == "tls" and s.size]
    assert tls
    for s in tls:
        got = image.symbolize(s.value)
        assert got is None or not got.startswith(s.name)
