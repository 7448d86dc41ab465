"""if-conversion's ``keep`` guard composed with oblivious-table's value-range scan
(plugins/support/predication.py ``Guard``/``keeps_base``, plugins/oblivious_table.py
``composed_accesses``): a load in an arm, ``map[i]`` through a pointer argument the region
never writes, with an index the arm bounds (``movzx``, ``and``).  With the arm off the guard
zeroes the index and keeps the base, so the load is at ``map + disp``, the start of the span
the scan reads; when the run-time probe finds no readable bytes there (``map`` NULL or junk,
tested by the program before the arm) it sends the base to the scratch slot instead.

Differential (raw Unicorn): the copy against the original on hundreds of random states,
``map`` an allocation, scratch memory, NULL, an unmapped address or the last bytes of a
mapping (the last three only where the arm is off).  Footprint: with a valid ``map`` the
copy runs the same instructions and touches the same lines whatever the secret index and
whether the arm runs.  Selection: which accesses get the ``keep`` guard and the scan."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from leakdbt.dbt.harden import region_view
from leakdbt.loader.elf import load_image
from leakdbt.loader.image import Image
from leakdbt.plugin_api import Rewrite
from plugins.if_conversion import PASS as IF_CONVERSION
from plugins.oblivious_table import composed_accesses
from plugins.support.predication import keeps_base
from tests.unit.dbt.harness import (
    SCRATCH,
    SCRATCH_SIZE,
    RegionCheck,
    compile_program,
    random_state,
)
from tests.unit.plugins.ifc_support import (
    CFLAGS,
    REG,
    build,
    harden,
    region_of,
    sandbox_for,
    trace,
    translate,
    view_from_asm,
    with_memory,
)
from tests.unit.plugins.test_oblivious_table import SBOX_AT, _allocation_map, _probes
from tests.unit.plugins.test_oblivious_table_composed import harden_both

STATES = 300

SOURCE = r"""
/* the map is tested before the arm; the secret n decides the arm; the index is loaded
   and bounded in the arm */
__attribute__((noipa)) long kb(const unsigned char *map, const unsigned char *in, long n)
{
    long v = in[0];
    if (map && n > 0)
        v = (v << 8) | map[in[1]];
    return v;
}
__attribute__((noipa)) long kw(const unsigned *map, const unsigned char *in, long n)
{
    long v = in[0];
    if (map && n > 0)
        v += map[in[1] & 63];
    return v;
}
int main(void) { return (int)(kb(0, 0, 0) + kw(0, 0, 0)); }
"""
FUNCTIONS = ("kb", "kw")
MAP_AT = SCRATCH + 0x2000  # scratch memory (a mapping, no allocation)
IN_AT = SCRATCH + 0x2400
UNMAPPED = 0x1234_5678_0000
LAST = SCRATCH + SCRATCH_SIZE - 2  # two readable bytes: too few for kw's 4-byte load
VALID = (SBOX_AT, MAP_AT)
JUNK = (0, UNMAPPED, LAST)


@pytest.fixture(scope="module", params=["static", "static-pie"])
def program(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Image:
    directory: Path = tmp_path_factory.mktemp(f"keep-{request.param}")
    if request.param == "static":
        path = compile_program(directory, "keep", {"keep.c": SOURCE}, "static",
                               (*CFLAGS, "-fno-pie"))
        return load_image(str(path))
    return build(directory, "keep", SOURCE, request.param)


def _state(seed: str, base: int, n: int, chars: bytes) -> object:
    rng = random.Random(seed)
    s = random_state(rng)
    table = rng.randbytes(256)
    s = with_memory(with_memory(s, SBOX_AT, table), MAP_AT, table)
    s = with_memory(s, IN_AT, chars)
    gprs = list(s.gprs)
    gprs[REG["rdi"]], gprs[REG["rsi"]], gprs[REG["rdx"]] = base, IN_AT, n & (1 << 64) - 1
    return dataclasses.replace(s, gprs=tuple(gprs))


def _states() -> list[tuple[str, object]]:
    """The arm runs only with a valid map (n > 0); junk maps with n <= 0 (the arm off)."""
    out = []
    for i in range(STATES):
        seed = f"keep:{i}"
        rng = random.Random(seed)
        base = rng.choice(VALID + JUNK)
        n = rng.choice((rng.randrange(1, 1 << 40), -rng.randrange(1 << 40), 0))
        if base in JUNK and n > 0:
            n = -n
        out.append((seed, _state(seed, base, n, rng.randbytes(2))))
    return out


@pytest.mark.parametrize("granularity", [64, 4])
@pytest.mark.parametrize("function", FUNCTIONS)
def test_keep_guard_and_scan_compute_what_the_original_computes(
        program: Image, function: str, granularity: int) -> None:
    check, code, table, _ = harden_both(program, function, granularity)
    assert len(table.replace) == 1, table.replace.keys()  # map[i], not in[0], in[1]
    assert sum(line.startswith(".bounds") for line in code.code or ()) == 1  # the guard's
    states = _states()
    kinds = {b for _, s in states for b in (s.gprs[REG["rdi"]],)}  # type: ignore[attr-defined]
    assert set(VALID + JUNK) <= kinds
    sizes: list[int] = []
    with _probes(check.sandbox.uc, check.t.probes, _allocation_map(), sizes), check:
        report = check.compare(states)  # type: ignore[arg-type]
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared == STATES and report.stops == {"exit": STATES}, report.stops
    assert 0 in sizes and 256 in sizes  # the junk bases found nothing; the allocation


@pytest.mark.parametrize("function", FUNCTIONS)
def test_footprint_does_not_depend_on_the_index_or_the_arm(program: Image,
                                                          function: str) -> None:
    """Valid map (scratch memory): the copy runs the same instructions and touches the same
    lines of the map's span whatever the secret index and whether the arm runs; the
    original's differ."""
    check, *_ = harden_both(program, function)
    lines = (MAP_AT >> 6, (MAP_AT + 255) >> 6)
    states = [_state("keep-footprint", MAP_AT, n, bytes([7, c]))
              for n in (1, 0, -5, 1 << 33) for c in (0, 0x3F, 0x80, 0xFF)]

    def run(copy: bool) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        out = []
        for s in states:
            insns, touched = trace(check, s, copy)  # type: ignore[arg-type]
            out.append((insns, tuple(x for _, x in touched  # type: ignore[misc]
                                     if lines[0] <= x <= lines[1])))
        return out

    with _probes(check.sandbox.uc, check.t.probes, _allocation_map()), check:
        copy, orig = run(True), run(False)
    assert len({c[0] for c in copy}) == 1 and len({c[1] for c in copy}) == 1
    reach = 256 if function == "kb" else 64 * 4
    assert set(copy[0][1]) == set(range(MAP_AT >> 6, (MAP_AT + reach - 1 >> 6) + 1))
    assert len({o[1] for o in orig}) > 2 and len({o[0] for o in orig}) > 1


# -- selection ----------------------------------------------------------------------------------

ARM = ["test rdi, rdi", "je out", "movzx eax, byte ptr [rsi + 1]"]


def _found(lines: list[str]) -> list[tuple[str, str | None]]:
    view = view_from_asm(lines)
    return [(a.insn.text, a.span.start if a.span else None) for a, _ in composed_accesses(view)]


def test_an_arm_load_through_an_unwritten_base_is_scanned_from_it() -> None:
    assert _found([*ARM, "movzx eax, byte ptr [rdi + rax + 8]", "out:", "ret"]) == [
        ("movzx eax, byte ptr [rdi + rax + 8]", "rdi + 0x8")]


@pytest.mark.parametrize("lines", [
    [*ARM, "mov byte ptr [rdi + rax], 1", "out:", "ret"],  # a store: not kept
    [*ARM, "add rdi, 1", "movzx eax, byte ptr [rdi + rax]", "out:", "ret"],  # base written
    ["test rdi, rdi", "je out", "mov rax, qword ptr [rsi]",  # index not bounded
     "movzx eax, byte ptr [rdi + rax]", "out:", "ret"],
    [*ARM, "movzx eax, byte ptr [rax + rax]", "out:", "ret"],  # base is the index
], ids=["store", "base-written", "unbounded", "base-is-index"])
def test_what_is_not_kept(lines: list[str]) -> None:
    """Not a ``keep`` access: no span for oblivious-table, no probe in if-conversion's guard
    (it goes to the scratch slot, or is refused, as before)."""
    view = view_from_asm(lines)
    assert composed_accesses(view) == []
    block = next(b for b in view.blocks if b.start != view.entry and len(b.insns) >= 2)
    assert all(keeps_base(view, block, k) is None for k in range(len(block.insns)))
    code = harden(IF_CONVERSION, view)
    assert not isinstance(code, Rewrite) or not any(
        line.startswith(".bounds") for line in code.code or ())


def test_if_conversion_probes_only_for_a_kept_base() -> None:
    kept = harden(IF_CONVERSION, view_from_asm(
        [*ARM, "movzx eax, byte ptr [rdi + rax]", "out:", "ret"]))
    assert isinstance(kept, Rewrite)
    probes = [line for line in kept.code or () if line.startswith(".bounds")]
    assert len(probes) == 1 and probes[0].endswith(", mapped")


@pytest.mark.parametrize("function", FUNCTIONS)
def test_keep_guard_alone_without_a_probe_takes_the_safe_slot(program: Image,
                                                              function: str) -> None:
    """if-conversion alone (no scan), where nothing answers the guard's ``.bounds`` line
    (raw emulation: its slots stay zero): the guard takes the scratch slot when the arm is
    off, NULL and junk maps included, and the copy still computes what the original does."""
    sandbox = sandbox_for(program)
    region = region_of(program, function)
    code = harden(IF_CONVERSION, region_view(region, "branch", sandbox.bias, image=program))
    assert isinstance(code, Rewrite), code
    assert any(line.startswith(".bounds") for line in code.code or ())
    check = RegionCheck(sandbox, region, translate(sandbox, region, code, {}),
                        scratch_below_red_zone=True)
    with check:
        report = check.compare(_states())  # type: ignore[arg-type]
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared == STATES and report.stops == {"exit": STATES}, report.stops
