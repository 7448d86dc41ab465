"""oblivious-table in a branch region whose table no sized object describes (plugins/
oblivious_table.py, ``_anchored_span``): libb64's ``base64_decode_value`` shape, as a
stripped shared library has it.  The arm's ``lea rax, [rip + table]`` sets the base and a
``movzx`` bounds the index, so the load's value-range span starts at the table whatever the
predicate (if-conversion's guard keeps a ``lea``'d base and zeroes the index) and the scan
reads the same lines on both paths.

Differential (raw Unicorn, tests/unit/dbt/harness.py): if-conversion + oblivious-table
against the original on hundreds of random states, every character value among them.
Footprint: the copy runs the same instructions and touches the same table lines for every
character, where the original's differ."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from leakdbt.dbt.harden import region_view
from leakdbt.loader.image import Image
from plugins.oblivious_table import composed_accesses
from tests.unit.dbt.harness import RegionCheck, State, random_state
from tests.unit.plugins.ifc_support import (
    REG,
    build,
    region_of,
    sandbox_for,
    trace,
)
from tests.unit.plugins.test_oblivious_table import _allocation_map, _probes
from tests.unit.plugins.test_oblivious_table_composed import harden_both

STATES = 300

# The table is defined in assembly without a .size: no sized ELF object describes it.
SOURCE = r"""
__asm__(".section .rodata\n"
        ".p2align 6\n"
        "decoding:\n"
        ".byte 62,-1,-1,-1,63,52,53,54,55,56,57,58,59,60,61,-1,-1,-1,-2,-1,-1,-1\n"
        ".byte 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25\n"
        ".byte -1,-1,-1,-1,-1,-1\n"
        ".byte 26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51\n"
        ".byte 0,0,0,0,0,0\n"
        ".text\n");
extern const signed char decoding[];

__attribute__((noipa)) int value(char c)
{
    c -= 43;
    if (c < 0 || c > 79)
        return -1;
    return decoding[(unsigned char)c];
}

int main(void) { return value('A'); }
"""


@pytest.fixture(scope="module", params=["static", "static-pie"])
def program(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Image:
    directory: Path = tmp_path_factory.mktemp(f"unsized-{request.param}")
    return build(directory, "unsized", SOURCE, request.param)


def _hardened(program: Image, granularity: int = 64) -> RegionCheck:
    """if-conversion with oblivious-table's replacements, the one table load rewritten."""
    check, _, table, _ = harden_both(program, "value", granularity)
    assert len(table.replace) == 1, table.replace
    return check


def test_the_arm_load_is_a_span_from_its_lea(program: Image) -> None:
    sym = program.symbol("decoding")
    assert sym is None or sym.size == 0  # no sized object: the span is the only bound
    view = region_view(region_of(program, "value"), "branch", sandbox_for(program).bias,
                       image=program)
    [(access, bounds)] = composed_accesses(view)
    assert bounds is None and access.span is not None
    assert access.span.bound == 255 and access.span.length == 256, access.span
    assert access.insn.mnemonic == "movsx", access.insn.text


def _states() -> list[tuple[str, State]]:
    out = []
    for i in range(STATES):
        seed = f"unsized:{i}"
        s = random_state(random.Random(seed))
        gprs = list(s.gprs)
        gprs[REG["rdi"]] = (gprs[REG["rdi"]] & ~0xFF) | (i % 256)
        out.append((seed, dataclasses.replace(s, gprs=tuple(gprs))))
    return out


@pytest.mark.parametrize("granularity", [64, 4])
def test_hardened_value_computes_what_the_original_computes(program: Image,
                                                            granularity: int) -> None:
    check = _hardened(program, granularity)
    sizes: list[int] = []
    with _probes(check.sandbox.uc, check.t.probes, _allocation_map(), sizes), check:
        report = check.compare(_states())
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared == STATES and report.stops == {"exit": STATES}, report.stops
    assert sizes and min(sizes) >= 256  # the mapping holding the table, learnt per lookup


def test_footprint_does_not_depend_on_the_character(program: Image) -> None:
    check = _hardened(program)
    base = random_state(random.Random("unsized-footprint"))
    states = []
    for c in b"+/09AZaz\x00*{\x80\xff":
        gprs = list(base.gprs)
        gprs[REG["rdi"]] = c
        states.append(dataclasses.replace(base, gprs=tuple(gprs)))
    with _probes(check.sandbox.uc, check.t.probes, _allocation_map()), check:
        copies = {trace(check, s, True) for s in states}
        originals = {trace(check, s, False) for s in states}
    assert len(copies) == 1, len(copies)
    assert len(originals) > 2
