"""Table regions that ``leakdbt analyze`` writes for a block whose secret-indexed loads touch
several tables (as libtomcrypt's DES round indexes SP1..SP8 and its AES round TE0..TE3):
every data object the accesses touched is covered by the region's bounds.

test_binaries/multi_table.c: ``mix`` indexes T0..T3 (four 1 KiB objects in the writable
segment) from one block, ``cross`` indexes T0 and the const S (another segment).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from leakdbt.analysis.findings import TableObject
from leakdbt.analysis.suggest import table_bounds
from leakdbt.contract import loads
from leakdbt.contract.edit import RegionEntry
from leakdbt.errors import ContractError
from tests.conftest import TEST_BINARIES, binary, run_leakdbt, run_native

ENTRY = RegionEntry("mix", "table", "leakdbt analyze: memory-access leak at mix+0xf (...)")
T = [TableObject(f"T{i}", None, 0x4000 + 0x400 * i, 0x400, 0x3000, f"T{i}") for i in range(4)]


def test_one_table_is_named_by_its_symbol() -> None:
    out = table_bounds(ENTRY, [T[2]], [])
    assert (out.table, out.length, out.why) == ("T2", None, ENTRY.why)


def test_tables_in_one_segment_are_one_span_from_the_first() -> None:
    """In any order, with a gap between them: the first object's symbol, the length up to
    the last one's end, every object named."""
    out = table_bounds(ENTRY, [T[3], T[0], T[2]], [])
    assert (out.table, out.length) == ("T0", 0x1000)
    assert out.why.endswith("it indexes 3 tables (T0, T2, T3): the span from T0 covers them")
    lib = [TableObject(f"libx.so:T{i}", "libx.so", t.start, t.size, t.segment, f"T{i}")
           for i, t in enumerate(T)]
    out = table_bounds(ENTRY, lib, [])
    assert (out.table, out.length) == ("libx.so:T0", 0x1000)


def test_tables_no_one_span_covers_get_no_bounds_and_a_reason() -> None:
    other = TableObject("S", None, 0x1000, 0x100, 0x1000, "S")
    out = table_bounds(ENTRY, [T[0], other], [])
    assert (out.table, out.length) == (None, None)
    assert out.why.endswith("no table named: it indexes S, T0, which lie in different "
                            "segments (no one span covers them)")
    lib = TableObject("libx.so:T9", "libx.so", 0x4000, 0x400, 0x3000, "T9")
    assert table_bounds(ENTRY, [T[0], lib], []).table is None  # two modules


def test_an_access_also_outside_every_object_gets_no_bounds() -> None:
    out = table_bounds(ENTRY, [T[0], T[1]], ["mix+0x13"])
    assert out.table is None
    assert out.why.endswith("no table named: mix+0x13 also touched memory in no data object "
                            "(besides T0, T1)")


def test_a_first_object_that_cannot_be_named_gets_no_bounds() -> None:
    unnamed = TableObject("", None, 0x3c00, 0x400, 0x3000, "SP8")
    out = table_bounds(ENTRY, [T[0], unnamed], [])
    assert out.table is None
    assert out.why.endswith("another symbol has the name of SP8, where SP8, T0 start")


def test_no_objects_leave_the_entry_as_it_is() -> None:
    assert table_bounds(ENTRY, [], ["mix+0x13"]) == ENTRY


def test_written_span_is_symbol_and_length() -> None:
    entry = RegionEntry("mix", "table", "why", table="T0", length=4096)
    assert 'symbol = "T0"\nlength = 4096\n' in entry.toml()


def program(kind: str, name: str = "multi_table") -> str:
    exe = binary(kind, name)
    if not Path(exe).exists():
        subprocess.run(["make", "-s", "-C", str(TEST_BINARIES), f"build/{kind}/{name}"],
                       check=True)
    return exe


CONTRACT = """\
version = 1

[[secret]]
name = "key"
argv = 1
length = 8
format = "hex"

[protect]
adversary = "co-resident"
policy = "always"
functions = ["mix", "cross"]

[check]
trials = 3
seed = 3
declassify = ["stdout"]
"""


def test_a_table_length_may_run_past_its_symbol_inside_the_segment() -> None:
    """A table spanning several objects: ``symbol`` is where it starts, ``length`` may run
    past the symbol, not past the loaded image."""
    exe = program("static-pie")
    region = '\n[[protect.region]]\nat = "mix"\nkind = "table"\nsymbol = "T3"\nlength = {}\n'
    text = CONTRACT.replace("[check]", region.format(4096) + "\n[check]")
    binding = loads(text, "c.toml", exe).binding
    assert binding is not None
    table = binding.regions[0].table
    assert table is not None and table.length == 4096
    with pytest.raises(ContractError, match=r"is not inside the loaded image"):
        loads(CONTRACT.replace("[check]", region.format(1 << 24) + "\n[check]"), "c.toml",
              exe)


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """kind -> multi_table's contract after ``analyze --write`` (each kind analyzed once)."""
    out = {}
    for kind in ("static", "static-pie", "dynamic"):
        contract = tmp_path_factory.mktemp("tables") / f"{kind}.toml"
        contract.write_text(CONTRACT)
        done = run_leakdbt(["analyze", "--contract", str(contract), "--write",
                            program(kind), "0123456789abcdef"])
        assert done.status == 0, done.stderr.decode()
        out[kind] = contract
    return out


@pytest.mark.parametrize("kind", ["static", "static-pie", "dynamic"])
def test_analyze_bounds_every_table_the_block_indexes(analyzed: dict[str, Path],
                                                      kind: str) -> None:
    """mix's one region spans T3..T0 (the linker's order); cross's, whose tables lie in two
    segments, names none and says why.  The hardened program prints what native prints."""
    text = analyzed[kind].read_text()
    assert 'at = "mix"\nkind = "table"\nsymbol = "T3"\nlength = 4096\n' in text
    assert "it indexes 4 tables (T3, T2, T1, T0)" in text
    assert 'at = "cross"\nkind = "table"\nwhy = ' in text
    assert "no table named: it indexes S, T0, which lie in different segments" in text
    for key in ("0123456789abcdef", "ffffffff00000000"):
        done = run_leakdbt(["exec", "--contract", str(analyzed[kind]), "--mode", "hardened",
                            program(kind), key])
        assert done.status == 0, done.stderr.decode()
        assert done.stdout == run_native([program(kind), key]).stdout


def test_the_analyzed_pie_contract_leaves_no_leak(analyzed: dict[str, Path]) -> None:
    """Every lookup of mix is in contract (one named table would leave the other three
    leaking: their accesses fail the run-time bounds check and run as they are)."""
    done = run_leakdbt(["check", "--contract", str(analyzed["static-pie"]), "--mode",
                        "hardened", program("static-pie"), "0123456789abcdef"])
    assert done.status == 0, done.stdout.decode() + done.stderr.decode()
    assert "no leak found" in done.stdout.decode()
