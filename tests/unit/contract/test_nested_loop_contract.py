"""``inner_bounds`` on a loop region: read, checked (file:line and key), written back, and
carried to bounded-loop as ``inner_bound+0xD`` parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from leakdbt.contract import Location, dumps, load, loads, plan
from leakdbt.contract.mapping import INNER_BOUND
from leakdbt.contract.profiles import get_profile
from plugins.bounded_loop import INNER_KEY
from tests.unit.contract.test_contract_load import minimal, problems, write

SKYLAKE = get_profile("intel-skylake")
LOOP = ('\n[[protect.region]]\nat = "lz+0x10"\nkind = "loop"\nbound = 4\n'
        'inner_bounds = {{ {inner} }}\n')


def test_inner_bounds_are_read_and_written_back(tmp_path: Path) -> None:
    c = load(write(tmp_path, minimal(tail=LOOP.format(inner='"lz+0x18" = 8, "lz+4" = 3'))))
    region = c.protect.regions[0]
    assert region.inner_bounds == ((Location("lz", 0x18), 8), (Location("lz", 4), 3))
    text = dumps(c)
    assert 'inner_bounds = { "lz+0x18" = 8, "lz+0x4" = 3 }' in text
    assert loads(text) == c


def test_inner_bounds_become_offsets_from_the_header() -> None:
    text = minimal(tail=LOOP.format(inner='"lz+0x18" = 8, "lz+4" = 3'))
    p = plan(loads(text), SKYLAKE)
    step = p.regions[0].passes[0]
    assert step.name == "bounded-loop"
    assert dict(step.params) == {"bound": 4, "inner_bound+0x8": 8, "inner_bound-0xc": 3}
    program = p.step("bounded-loop")
    assert program is not None and program.params == ()  # per region, never program-wide


def test_absolute_headers_go_with_an_absolute_at() -> None:
    text = minimal(tail='\n[[protect.region]]\nat = "0x401010"\nkind = "loop"\nbound = 4\n'
                        'inner_bounds = { "0x401030" = 16 }\n')
    step = plan(loads(text), SKYLAKE).regions[0].passes[0]
    assert dict(step.params) == {"bound": 4, "inner_bound+0x20": 16}


def test_the_plugin_reads_the_key_the_mapping_writes() -> None:
    assert INNER_KEY == INNER_BOUND


@pytest.mark.parametrize(("inner", "key", "message"), [
    ('"mz+0x18" = 8', '"mz+0x18"',
     "an inner loop's header is written like at (lz+0x10): lz plus an offset"),
    ('"0x401018" = 8', '0x401018',
     "an inner loop's header is written like at (lz+0x10): lz plus an offset"),
    ('"lib.so:lz+0x18" = 8', '"lib.so:lz+0x18"',
     "an inner loop's header is written like at (lz+0x10): lz plus an offset"),
    ('"lz+16" = 8', '"lz+16"', "that is the region's own header: its bound is bound"),
    ('"lz+0x18" = 8, "lz+24" = 8', '"lz+24"', "the header lz+0x18 is named twice"),
    ('"lz+0x18" = 0', '"lz+0x18"', "must be between 1 and 2147483647, got 0"),
    ('"lz+0x18" = 4294967296', '"lz+0x18"', "must be between 1 and 2147483647, got 4294967296"),
    ('"lz+0x18" = "8"', '"lz+0x18"', "expected an integer, got a string"),
    ('"lz+" = 8', '"lz+"', "bad address"),
])
def test_bad_inner_bounds_name_line_and_key(tmp_path: Path, inner: str, key: str,
                                            message: str) -> None:
    got = problems(tmp_path, minimal(tail=LOOP.format(inner=inner)))
    assert len(got) == 1, got
    line, where, text = got[0]
    assert line == 15 and where == f"protect.region[0].inner_bounds.{key}"
    assert message in text, text


def test_inner_bounds_need_a_loop_region(tmp_path: Path) -> None:
    got = problems(tmp_path, minimal(tail='\n[[protect.region]]\nat = "f"\nkind = "branch"\n'
                                          'inner_bounds = { "f+8" = 4 }\n'))
    assert got == [(14, "protect.region[0].inner_bounds",
                    "inner_bounds gives the bounds of a loop's inner loops: it needs "
                    'kind = "loop"')]


def test_inner_bounds_must_be_a_table(tmp_path: Path) -> None:
    got = problems(tmp_path, minimal(tail=LOOP.replace("{{ {inner} }}", "[8]")))
    assert [(line, key) for line, key, _ in got] == [(15, "protect.region[0].inner_bounds")]
    assert "expected a table" in got[0][2]
