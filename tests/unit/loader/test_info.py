"""describe() and format_info(): what ``leakdbt info`` shows for binaries built in the session."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from leakdbt.loader.elf import load_image
from leakdbt.loader.image import PF_R, PF_W, PF_X, ElfKind, Image, Segment, Symbol
from leakdbt.loader.info import describe, format_info

SOURCE = r"""
#include <stdio.h>
int compute(int x) { return x * 7; }
int main(void) { printf("%d\n", compute(6)); return 0; }
"""
BUILDS = {
    "static": ["-static", "-no-pie", "-g"],
    "static_pie": ["-static-pie"],
    "dynamic": ["-pie", "-fPIE", "-g"],
    "dynamic_stripped": ["-pie", "-fPIE", "-s"],
    "shared": ["-shared", "-fPIC", "-Wl,-soname,libinfo.so.7"],
}
KEYS = [
    "path", "kind", "pie", "entry", "entry_symbol", "segments", "image_size", "interpreter",
    "needed", "soname", "has_symtab", "has_dwarf_lines", "symbol_count", "function_count",
    "warnings", "hardened",
]  # fmt: skip
TEXT_KEYS = [
    "path", "kind", "pie", "entry", "interpreter", "needed", "soname", "symtab", "symbols",
    "functions", "line info", "image size", "segments",
]  # fmt: skip


@pytest.fixture(scope="session")
def info_builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Compile SOURCE once per flag set; returns build name -> path."""
    root = tmp_path_factory.mktemp("info_builds")
    (root / "prog.c").write_text(SOURCE)
    out = {}
    for name, flags in BUILDS.items():
        subprocess.run(
            ["gcc", "-O1", *flags, "-o", str(root / name), str(root / "prog.c")], check=True
        )
        out[name] = str(root / name)
    return out


@pytest.mark.parametrize("name", list(BUILDS))
def test_describe_is_json_and_complete(info_builds: dict[str, str], name: str) -> None:
    image = load_image(info_builds[name])
    d = describe(image)
    assert list(d) == KEYS
    assert json.loads(json.dumps(d)) == d
    assert d["path"] == info_builds[name]
    assert d["entry"] == image.entry
    assert d["function_count"] == len(image.functions)
    assert d["symbol_count"] == len(image.symbols)
    assert d["image_size"] == image.high - image.low
    assert [(s["vaddr"], s["memsz"], s["filesz"], s["offset"]) for s in d["segments"]] == [
        (s.vaddr, s.memsz, s.filesz, s.offset) for s in image.segments
    ]
    assert any(s["perms"] == "r-x" for s in d["segments"])
    assert d["warnings"] == []


def test_describe_static(info_builds: dict[str, str]) -> None:
    d = describe(load_image(info_builds["static"]))
    assert d["kind"] == "static" and d["pie"] is False
    assert d["entry_symbol"] == "_start"
    assert d["interpreter"] is None and d["needed"] == [] and d["soname"] is None
    assert d["has_symtab"] and d["has_dwarf_lines"]
    assert d["function_count"] > 500  # all of static glibc
    assert d["segments"][0]["vaddr"] == 0x400000


def test_describe_static_pie(info_builds: dict[str, str]) -> None:
    d = describe(load_image(info_builds["static_pie"]))
    assert d["kind"] == "static-pie" and d["pie"] is True
    assert d["entry_symbol"] == "_start"
    assert d["interpreter"] is None and d["needed"] == []
    assert d["has_symtab"] and not d["has_dwarf_lines"]
    assert d["segments"][0]["vaddr"] == 0


def test_describe_dynamic(info_builds: dict[str, str]) -> None:
    d = describe(load_image(info_builds["dynamic"]))
    assert d["kind"] == "dynamic" and d["pie"] is True
    assert d["interpreter"] == "/lib64/ld-linux-x86-64.so.2"
    assert d["needed"] == ["libc.so.6"]
    assert d["entry_symbol"] == "_start"
    assert d["has_symtab"] and d["has_dwarf_lines"]
    assert 0 < d["function_count"] < 50


def test_describe_stripped_and_shared(info_builds: dict[str, str]) -> None:
    stripped = describe(load_image(info_builds["dynamic_stripped"]))
    assert stripped["entry_symbol"] is None
    assert not stripped["has_symtab"] and not stripped["has_dwarf_lines"]
    shared = describe(load_image(info_builds["shared"]))
    assert shared["kind"] == "shared-object"
    assert shared["soname"] == "libinfo.so.7"
    assert shared["entry"] == 0 and shared["entry_symbol"] is None


@pytest.mark.parametrize("name", list(BUILDS))
def test_format_info_layout(info_builds: dict[str, str], name: str) -> None:
    image = load_image(info_builds[name])
    text = format_info(image)
    assert text.endswith("\n")
    lines = text.splitlines()
    keys = [line.split(":", 1)[0] for line in lines[: len(TEXT_KEYS)]]
    assert keys == TEXT_KEYS
    assert all(len(line.split(":", 1)[0]) < 13 for line in lines if not line.startswith(" "))
    table = [line for line in lines if line.startswith("  ")]
    assert table[0].split() == ["vaddr", "memsz", "filesz", "offset", "perms"]
    assert len(table) == len(image.segments) + 1
    assert lines[-1] == "warnings:    none"
    assert format_info(load_image(info_builds[name])) == text  # stable across loads


def test_format_info_values(info_builds: dict[str, str]) -> None:
    static = format_info(load_image(info_builds["static"]))
    assert "kind:        static\n" in static
    assert "pie:         no" in static
    assert "(_start)" in static
    assert "interpreter: none\n" in static
    assert "line info:   yes (.debug_line)\n" in static
    dynamic = format_info(load_image(info_builds["dynamic"]))
    assert "kind:        dynamic\n" in dynamic
    assert "interpreter: /lib64/ld-linux-x86-64.so.2\n" in dynamic
    assert "needed:      libc.so.6\n" in dynamic
    stripped = format_info(load_image(info_builds["dynamic_stripped"]))
    assert "symtab:      no (stripped)\n" in stripped
    shared = format_info(load_image(info_builds["shared"]))
    assert "soname:      libinfo.so.7\n" in shared
    assert "entry:       0x0\n" in shared


def test_format_info_exact_text() -> None:
    """The text format, pinned on a hand-made image so that it cannot drift unnoticed."""
    image = Image(
        path="/bin/demo",
        kind=ElfKind.STATIC,
        is_pie=False,
        entry=0x401020,
        phoff=64,
        phentsize=56,
        phnum=2,
        segments=(
            Segment(0x400000, 0x1234, 0, 0x1234, PF_R | PF_X, 0x1000),
            Segment(0x402000, 0x3000, 0x2000, 0x10, PF_R | PF_W, 0x1000),
        ),
        interpreter=None,
        needed=(),
        soname=None,
        symbols=(Symbol("_start", 0x401020, 0x20, "func"), Symbol("buf", 0x402000, 8, "object")),
        has_symtab=True,
        has_dwarf_lines=False,
        warnings=("entry point 0x1 is odd", "second warning"),
    )
    assert format_info(image) == (
        "path:        /bin/demo\n"
        "kind:        static\n"
        "pie:         no (ET_EXEC, fixed addresses)\n"
        "entry:       0x401020 (_start)\n"
        "interpreter: none\n"
        "needed:      none\n"
        "soname:      none\n"
        "symtab:      yes\n"
        "symbols:     2\n"
        "functions:   1\n"
        "line info:   no\n"
        "image size:  0x5000\n"
        "segments:    2 PT_LOAD\n"
        "     vaddr   memsz  filesz  offset  perms\n"
        "  0x400000  0x1234  0x1234     0x0  r-x\n"
        "  0x402000  0x3000    0x10  0x2000  rw-\n"
        "hardened:    no\n"
        "warnings:    2\n"
        "  - entry point 0x1 is odd\n"
        "  - second warning\n"
    )
    assert describe(image)["warnings"] == ["entry point 0x1 is odd", "second warning"]


def test_warnings_reach_the_report(info_builds: dict[str, str]) -> None:
    data = bytearray(Path(info_builds["static"]).read_bytes())
    data[7] = 9  # EI_OSABI = FreeBSD
    image = load_image("freebsd", bytes(data))
    assert describe(image)["warnings"] == ["OS ABI is ELFOSABI_FREEBSD; leakdbt emulates Linux"]
    assert "  - OS ABI is ELFOSABI_FREEBSD; leakdbt emulates Linux\n" in format_info(image)
