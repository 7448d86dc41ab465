"""Resolving symbol+offset locations against static, PIE and shared-library binaries.

The programs are built here from assembly with known encodings, so instruction boundaries are
known exactly: ``work`` is ``mov $1,%eax`` (5 bytes) / ``add %edi,%eax`` (2) / ``ret`` (1).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from leakdbt.contract import load, loads
from leakdbt.contract.model import Contract
from leakdbt.errors import ContractError, ElfError
from leakdbt.loader.elf import load_image

WORK_S = """\
    .text
    .globl work
    .type work, @function
work:
    movl $1, %eax
    addl %edi, %eax
    ret
    .size work, .-work

    .globl unsized
    .type unsized, @function
unsized:
    nop
    nop
    ret

    .data
    .globl secret_key
    .type secret_key, @object
    .size secret_key, 32
secret_key:
    .zero 32

    .section .rodata
    .globl sbox
    .type sbox, @object
    .size sbox, 256
sbox:
    .zero 256
    .section .note.GNU-stack,"",@progbits
"""

LIB_S = WORK_S.replace("work", "libwork").replace("secret_key", "lib_key").replace(
    "sbox", "lib_sbox").replace("unsized", "lib_unsized")

MAIN_C = """\
extern int work(int);
extern void unsized(void);
extern unsigned char secret_key[32];
extern const unsigned char sbox[256];
int main(int argc, char **argv)
{
    unsized();
    return work(argc) + secret_key[argc & 31] + sbox[argc];
}
"""

LIBMAIN_C = """\
extern int libwork(int);
int main(int argc, char **argv) { return libwork(argc); }
"""

OUTER_C = """\
extern int libwork(int);
int outer(int x) { return libwork(x) + 1; }
"""

OUTERMAIN_C = """\
extern int outer(int);
int main(int argc, char **argv) { return outer(argc); }
"""


@dataclass(frozen=True)
class Built:
    static: Path
    static_pie: Path
    dynamic: Path
    with_lib: Path
    lib_dir: Path
    stripped: Path
    indirect: Path  # needs libouter.so, which needs libwork.so


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the test programs")
    d = tmp_path_factory.mktemp("resolve")
    (d / "work.s").write_text(WORK_S)
    (d / "lib.s").write_text(LIB_S)
    (d / "main.c").write_text(MAIN_C)
    (d / "libmain.c").write_text(LIBMAIN_C)
    (d / "outer.c").write_text(OUTER_C)
    (d / "outermain.c").write_text(OUTERMAIN_C)

    def cc(*args: str) -> None:
        subprocess.run(["gcc", "-O1", *args], cwd=d, check=True, capture_output=True)

    cc("-static", "-no-pie", "-o", "static", "main.c", "work.s")
    cc("-static-pie", "-fPIE", "-o", "static-pie", "main.c", "work.s")
    cc("-fPIE", "-pie", "-o", "dynamic", "main.c", "work.s")
    cc("-shared", "-fPIC", "-o", "libwork.so", "lib.s")
    cc("-fPIE", "-pie", "-o", "with-lib", "libmain.c", "-L.", "-lwork")
    cc("-shared", "-fPIC", "-o", "libouter.so", "outer.c", "-L.", "-lwork")
    cc("-fPIE", "-pie", "-o", "indirect", "outermain.c", "-L.", "-louter",
       "-Wl,-rpath-link,.")
    shutil.copy(d / "static", d / "stripped")
    subprocess.run(["strip", str(d / "stripped")], check=True)
    return Built(d / "static", d / "static-pie", d / "dynamic", d / "with-lib", d,
                 d / "stripped", d / "indirect")


def contract(regions: str = "", secrets: str = "", functions: str = "") -> str:
    text = 'version = 1\n\n[[secret]]\nname = "s"\nargv = 1\nlength = 4\n' + secrets
    text += '\n[protect]\nadversary = "co-resident"\n' + functions
    return text + regions


def region(at: str, extra: str = "") -> str:
    return f'\n[[protect.region]]\nat = "{at}"\n{extra}'


def bind(text: str, binary: Path, lib_dir: Path | None = None) -> Contract:
    return loads(text, "c.toml", binary=binary,
                 library_paths=[str(lib_dir)] if lib_dir else None)


def errors(text: str, binary: Path, lib_dir: Path | None = None) -> list[tuple[int, str, str]]:
    with pytest.raises(ContractError) as info:
        bind(text, binary, lib_dir)
    return info.value.problems


def symbol_value(binary: Path, name: str) -> int:
    sym = load_image(binary).symbol(name)
    assert sym is not None
    return sym.value


# -- resolution ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["static", "static_pie", "dynamic"])
def test_symbol_offset_in_the_main_binary(built: Built, kind: str) -> None:
    binary = getattr(built, kind)
    c = bind(contract(region("work") + region("work+0x5") + region("work+7")), binary)
    assert c.binding is not None
    work = symbol_value(binary, "work")
    assert [r.at.address for r in c.binding.regions] == [work, work + 5, work + 7]
    assert all(r.at.module is None and r.function.name == "work" for r in c.binding.regions)
    assert c.binding.regions[1].function.size == 8
    assert c.binding.regions[1].at.symbolic == "work+0x5"
    assert c.binding.is_pie == (kind != "static")
    assert c.binding.binary_kind == {"static": "static", "static_pie": "static-pie",
                                     "dynamic": "dynamic"}[kind]


def test_pie_addresses_are_link_time_and_take_the_load_bias(built: Built) -> None:
    c = bind(contract(region("work+5")), built.static_pie)
    assert c.binding is not None
    at = c.binding.regions[0].at
    assert at.address < 0x100000  # link-time, near 0
    assert at.runtime(0x7F0000000000) == 0x7F0000000000 + at.address


def test_absolute_address_in_a_fixed_address_binary(built: Built) -> None:
    work = symbol_value(built.static, "work")
    c = bind(contract(region(hex(work + 5))), built.static)
    assert c.binding is not None
    assert c.binding.regions[0].at.address == work + 5
    assert c.binding.regions[0].at.symbolic == "work+0x5"
    assert c.binding.regions[0].function.name == "work"


def test_unsized_function_extends_to_the_next_symbol(built: Built) -> None:
    c = bind(contract(region("unsized+2")), built.static)
    assert c.binding is not None and c.binding.regions[0].function.size >= 3


def test_shared_library_location(built: Built) -> None:
    text = contract(region("libwork.so:libwork+5") + region("libwork:libwork+7"),
                    secrets='\n[[secret]]\nname = "k"\nsymbol = "libwork.so:lib_key+8"\n'
                            'length = 8\n',
                    functions='functions = ["libwork.so:libwork"]\n')
    c = bind(text, built.with_lib, built.lib_dir)
    assert c.binding is not None
    lib_work = symbol_value(built.lib_dir / "libwork.so", "libwork")
    lib_key = symbol_value(built.lib_dir / "libwork.so", "lib_key")
    first, second = c.binding.regions
    assert (first.at.module, first.at.address) == ("libwork.so", lib_work + 5)
    assert first.at.module_path == str(built.lib_dir / "libwork.so")
    assert second.at.address == lib_work + 7
    span = c.binding.secrets[1]
    assert span is not None and span.span is not None
    assert (span.span.start.module, span.span.start.address, span.span.length) == (
        "libwork.so", lib_key + 8, 8)
    assert [lib.name for lib in c.binding.libraries] == ["libwork.so"]
    assert c.binding.functions[0].module == "libwork.so"


def test_library_needed_indirectly(built: Built) -> None:
    assert "libwork.so" not in load_image(built.indirect).needed
    c = bind(contract(region("libwork.so:libwork+5")), built.indirect, built.lib_dir)
    assert c.binding is not None
    assert c.binding.regions[0].at.module == "libwork.so"
    assert c.binding.regions[0].at.address == symbol_value(built.lib_dir / "libwork.so",
                                                           "libwork") + 5


def test_versioned_library_named_by_its_file_or_soname(tmp_path: Path) -> None:
    # A distribution library: DT_NEEDED and the soname say libver.so.1, a symlink to the
    # file libver.so.1.0.1.  analyze writes the file's name; a user may write either.
    (tmp_path / "lib.s").write_text(LIB_S)
    (tmp_path / "main.c").write_text(LIBMAIN_C)

    def cc(*args: str) -> None:
        subprocess.run(["gcc", "-O1", *args], cwd=tmp_path, check=True, capture_output=True)

    cc("-shared", "-fPIC", "-Wl,-soname,libver.so.1", "-o", "libver.so.1.0.1", "lib.s")
    (tmp_path / "libver.so.1").symlink_to("libver.so.1.0.1")
    (tmp_path / "libver.so").symlink_to("libver.so.1")
    cc("-fPIE", "-pie", "-o", "prog", "main.c", "-L.", "-lver")
    expected = symbol_value(tmp_path / "libver.so.1.0.1", "libwork") + 5
    for name in ("libver.so.1.0.1", "libver.so.1", "libver.so", "libver"):
        c = bind(contract(region(f"{name}:libwork+5")), tmp_path / "prog", tmp_path)
        assert c.binding is not None
        assert (c.binding.regions[0].at.module, c.binding.regions[0].at.address) == (
            "libver.so.1", expected), name
    assert errors(contract(region("libver.so.2:libwork")), tmp_path / "prog", tmp_path) == [
        (12, "protect.region[0].at", "libver.so.2 is not a library prog loads "
                                     "(DT_NEEDED: libver.so.1, libc.so.6)")]


def test_library_found_through_the_default_search_path(built: Built) -> None:
    # libc.so.6 lives in the system directories the default search path covers.
    text = contract(region("libc.so.6:getpid"))
    try:
        c = loads(text, "c.toml", binary=built.dynamic)
    except ContractError as e:
        pytest.fail(f"no usable system libc: {e}")
    assert c.binding is not None and c.binding.regions[0].at.module == "libc.so.6"


def test_secret_locations(built: Built) -> None:
    text = contract(secrets='\n[[secret]]\nname = "k"\nsymbol = "secret_key"\nlength = 32\n'
                            '\n[[secret]]\nname = "r"\nregister = "rdi"\nfunction = "work"\n',
                    regions=region("work", 'kind = "table"\nsymbol = "sbox"\n'))
    c = bind(text, built.dynamic)
    assert c.binding is not None
    input_secret, key, reg = c.binding.secrets
    assert input_secret is None
    assert key is not None and key.span is not None and key.span.length == 32
    assert reg is not None and reg.function is not None and reg.function.name == "work"
    table = c.binding.regions[0].table
    assert table is not None and table.length == 256  # defaults to the symbol's size
    assert table.start.address == symbol_value(built.dynamic, "sbox")


def test_load_with_binary_binds(built: Built, tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(contract(region("work+5")))
    c = load(path, binary=built.static)
    assert c.binding is not None and c.binding.binary == str(built.static)


# -- one test per class of binding mistake ---------------------------------------------------


def test_symbol_not_in_the_binary(built: Built) -> None:
    assert errors(contract(region("wrok+5")), built.static) == [
        (12, "protect.region[0].at", "symbol 'wrok' is not in static (did you mean 'work'?)")]


def test_symbol_in_a_stripped_binary(built: Built) -> None:
    got = errors(contract(region("work")), built.stripped)
    assert got[0][2].startswith("symbol 'work' is not in stripped")
    assert got[0][2].endswith("it has no .symtab (stripped), only exported symbols")


def test_offset_not_on_an_instruction_boundary(built: Built) -> None:
    assert errors(contract(region("work+2") + region("work+6")), built.static_pie) == [
        (12, "protect.region[0].at", "work+0x2 is not an instruction boundary (nearest "
                                     "instructions start at work and work+0x5)"),
        (15, "protect.region[1].at", "work+0x6 is not an instruction boundary (nearest "
                                     "instructions start at work+0x5 and work+0x7)"),
    ]


def test_offset_past_the_end_of_the_function(built: Built) -> None:
    assert errors(contract(region("work+0x8")), built.static) == [
        (12, "protect.region[0].at", "offset 0x8 is past the end of work (0x8 bytes)")]


def test_region_not_in_any_function(built: Built) -> None:
    sbox = symbol_value(built.static, "sbox")
    assert errors(contract(region(hex(sbox + 4))), built.static) == [
        (12, "protect.region[0].at", f"{sbox + 4:#x} is not inside any function of static")]


def test_region_on_a_data_object(built: Built) -> None:
    assert errors(contract(region("sbox")), built.static) == [
        (12, "protect.region[0].at", "sbox is a data object, not code: a region starts in "
                                     "a function")]


def test_absolute_address_in_a_pie(built: Built) -> None:
    assert errors(contract(region("0x1130")), built.dynamic) == [
        (12, "protect.region[0].at", "0x1130 is an absolute address, but dynamic is "
                                     "position-independent (PIE) and is loaded at a different "
                                     "address each run: write symbol+offset")]


def test_a_region_may_lie_in_a_callee_of_the_scope(built: Built) -> None:
    """The scope is the dynamic extent of protect.functions, callees included (issue 16):
    a region in another function binds (it fixes a leak in a callee)."""
    text = contract(region("unsized"), functions='functions = ["work"]\n')
    bound = bind(text, built.static).binding
    assert bound is not None and [r.function.name for r in bound.regions] == ["unsized"]


def test_function_region_must_start_at_the_entry(built: Built) -> None:
    assert bind(contract(region("work", 'kind = "function"\n')), built.static).binding
    assert errors(contract(region("work+0x5", 'kind = "function"\n')), built.static) == [
        (12, "protect.region[0].at", 'kind = "function" replaces a whole function: work+0x5 '
                                     "is not the entry of work")]


def test_library_the_binary_does_not_load(built: Built) -> None:
    assert errors(contract(region("libnope.so:f")), built.with_lib, built.lib_dir) == [
        (12, "protect.region[0].at", "libnope.so is not a library with-lib loads "
                                     "(DT_NEEDED: libwork.so, libc.so.6)")]


def test_library_function_named_without_its_library(built: Built) -> None:
    # The hint names the library that defines it, found through DT_NEEDED (indirectly too).
    for binary in (built.with_lib, built.indirect):
        [(line, key, message)] = errors(contract(region("libwork")), binary, built.lib_dir)
        assert (line, key) == (12, "protect.region[0].at")
        assert message == (f"symbol 'libwork' is not in {binary.name}: it is defined by "
                           "libwork.so, which it loads (did you mean 'libwork.so:libwork'?)")


def test_library_prefix_on_a_static_binary(built: Built) -> None:
    assert errors(contract(region("libc.so.6:memcpy")), built.static) == [
        (12, "protect.region[0].at", "static is statically linked and loads no libraries: "
                                     "write the symbol without libc.so.6:")]


def test_secret_symbol_mistakes(built: Built) -> None:
    text = contract(secrets='\n[[secret]]\nname = "k"\nsymbol = "secret_key+8"\nlength = 32\n'
                            '\n[[secret]]\nname = "f"\nregister = "rdi"\nfunction = "sbox"\n'
                            '\n[[secret]]\nname = "g"\nsymbol = "work"\nlength = 4\n')
    assert errors(text, built.static) == [
        (10, "secret[1].symbol", "32 bytes from secret_key+0x8 run past the end of "
                                 "secret_key (32 bytes)"),
        (16, "secret[2].function", "sbox is a data object, not a function"),
        (20, "secret[3].symbol", "work is a function; a symbol secret must be a data object"),
    ]


def test_every_binding_problem_at_once(built: Built) -> None:
    got = errors(contract(region("nothing") + region("work+1") + region("work")),
                 built.static)
    assert [(line, key) for line, key, _ in got] == [
        (12, "protect.region[0].at"), (15, "protect.region[1].at")]


def test_binary_that_is_not_elf(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"not an ELF file")
    with pytest.raises(ElfError):
        bind(contract(region("work")), junk)
