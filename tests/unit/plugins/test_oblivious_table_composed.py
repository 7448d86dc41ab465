"""oblivious-table inside branch regions, composed with if-conversion (plugins/
oblivious_table.py, ``composed_accesses``): the table accesses of an if-converted region are
scanned where the scan's address is the same, or in the table, whatever the predicates.

- Nettle's base16 shape (``decode``: the table load in a conditional block, its base set
  by the block's own ``lea`` (PIE) or its displacement the table (non-PIE); if-conversion
  guards it into the table when the block is off) and ``square`` (an int table indexed in
  an arm): the load is rewritten, the stores through the caller's pointers are not;
- libtomcrypt's base64 shape (``b64``: ``map[in[0]]`` through a pointer argument in the
  entry block, bounded by its ``movzx`` index: a value-range scan; ``map[in[1]]`` in the
  arm, whose guard keeps the base when the arm is off: scanned too, see
  test_guard_keep_base.py).

Differential (raw Unicorn, tests/unit/dbt/harness.py): if-conversion + oblivious-table
against the original on hundreds of random states (junk pointers where the original does
not dereference them, indices in and out of the table).  Footprint: the hardened copy runs
the same instructions and touches the same table lines whatever the secret character and
whichever arm runs, where the original's lines differ.  Selection and refusal: which
accesses are rewritten, and the region-level refusal's message."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from leakdbt.dbt.harden import region_view
from leakdbt.dbt.region import CodeRegion
from leakdbt.loader.elf import load_image
from leakdbt.loader.image import Image
from leakdbt.plugin_api import Refusal, Rewrite
from plugins.if_conversion import PASS as IF_CONVERSION
from plugins.oblivious_table import PASS, composed_accesses
from tests.unit.dbt.harness import SCRATCH, RegionCheck, State, compile_program, random_state
from tests.unit.plugins.ifc_support import (
    CFLAGS,
    REG,
    build,
    harden,
    region_of,
    sandbox_for,
    translate,
    view_from_asm,
    with_memory,
)
from tests.unit.plugins.test_guarded_access import SOURCE as GUARDED
from tests.unit.plugins.test_guarded_access import _states as guarded_states
from tests.unit.plugins.test_oblivious_table import SBOX_AT, _allocation_map, _probes

STATES = 300

SOURCE = GUARDED.replace("int main(void)", r"""
/* libtomcrypt's base64_decode: the map is a pointer argument; the first lookup comes
   before the branch on its value, the second in the arm */
__attribute__((noipa)) long b64(const unsigned char *map, const unsigned char *in)
{
    unsigned v = map[in[0]];
    if (v >= 0xfe)
        return -1;
    return (long)((v << 6) | map[in[1]]);
}

int main(void)""").replace("+ square(3);", "+ square(3) + (int)b64(0, 0);")

FUNCTIONS = ("decode", "square", "b64")
MAP_AT = SCRATCH + 0x2000  # b64's map when it is not SBOX_AT (an allocation): the mapping
IN_AT = SCRATCH + 0x2400


@pytest.fixture(scope="module", params=["static", "static-pie"])
def program(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Image:
    directory: Path = tmp_path_factory.mktemp(f"composed-{request.param}")
    if request.param == "static":  # non-PIE: tables addressed by their link address
        path = compile_program(directory, "composed", {"composed.c": SOURCE}, "static",
                               (*CFLAGS, "-fno-pie"))
        return load_image(str(path))
    return build(directory, "composed", SOURCE, request.param)


def harden_both(program: Image, function: str, granularity: int = 64
                ) -> tuple[RegionCheck, Rewrite, Rewrite, CodeRegion]:
    """if-conversion's code with oblivious-table's replacements inside it (the order the
    passes declare: if-conversion runs before the per-instruction passes)."""
    sandbox = sandbox_for(program)
    region = region_of(program, function)
    view = region_view(region, "branch", sandbox.bias, {"granularity": granularity},
                       image=program)
    code = harden(IF_CONVERSION, view)
    assert isinstance(code, Rewrite), code
    table = harden(PASS, view)
    assert isinstance(table, Rewrite), table
    t = translate(sandbox, region, code, table.replace)
    return RegionCheck(sandbox, region, t, scratch_below_red_zone=True), code, table, region


def _b64_states() -> list[tuple[str, State]]:
    """Random states with ``map`` (an allocation, or memory of the scratch mapping) holding
    many 0xfe/0xff entries (the arm off), ``in`` two random characters."""
    out = []
    for i in range(STATES):
        seed = f"composed:b64:{i}"
        rng = random.Random(seed)
        s = random_state(rng)
        where = rng.choice((SBOX_AT, MAP_AT))
        table = bytes(rng.choice((rng.randrange(64), 0xFE, 0xFF)) for _ in range(256))
        s = with_memory(with_memory(s, where, table), IN_AT, rng.randbytes(2))
        gprs = list(s.gprs)
        gprs[REG["rdi"]], gprs[REG["rsi"]] = where, IN_AT
        out.append((seed, dataclasses.replace(s, gprs=tuple(gprs))))
    return out


def _states(function: str) -> list[tuple[str, State]]:
    return _b64_states() if function == "b64" else guarded_states(function)


@pytest.mark.parametrize("granularity", [64, 4])
@pytest.mark.parametrize("function", FUNCTIONS)
def test_composed_rewrite_computes_what_the_original_computes(
        program: Image, function: str, granularity: int) -> None:
    check, _, table, _ = harden_both(program, function, granularity)
    # the table load only (b64: both map lookups, the arm's through the keep guard)
    assert len(table.replace) == (2 if function == "b64" else 1), table.replace.keys()
    states = _states(function)
    sizes: list[int] = []
    with _probes(check.sandbox.uc, check.t.probes, _allocation_map(), sizes), check:
        report = check.compare(states)
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared == STATES and report.stops == {"exit": STATES}, report.stops
    if function == "b64":  # the span's memory, learnt at run time: allocation or mapping
        assert len(sizes) >= STATES and 256 in sizes and max(sizes) > 256


def test_which_accesses_are_rewritten(program: Image) -> None:
    """decode: the table load (guarded into the table), not the stores and loads through
    ``ctx``/``dst`` (guarded to the scratch slot); b64: the entry block's ``map[in[0]]``
    (a value-range span from the ``movzx`` index) and the arm's ``map[in[1]]`` (its guard
    keeps the base: the same kind of span), not the ``in`` loads (no table)."""
    bias = sandbox_for(program).bias
    for function, span in (("decode", False), ("square", False), ("b64", True)):
        region = region_of(program, function)
        view = region_view(region, "branch", bias, image=program)
        found = composed_accesses(view)
        if function == "b64":  # map[in[1]] too: its guard keeps the base (test_guard_keep_base)
            assert len(found) == 2 and all(a.span is not None for a, _ in found), found
            found = found[:1]
        assert len(found) == 1, [a.insn.text for a, _ in found]
        (access, bounds), = found
        assert (access.span is not None) is span and (bounds is None) is span
        if span:
            assert access.insn.address in {b.insns[0].address for b in region.block_list()
                                           if b.start == region.entry} or \
                any(i.address == access.insn.address for b in region.block_list()
                    if b.start == region.entry for i in b.insns)
        else:
            name = "table" if function == "decode" else "squares"
            sym = program.symbol(name)
            assert sym is not None and bounds == (sym.value, sym.size)


def _table_lines(program: Image, name: str, bias: int) -> tuple[int, int]:
    sym = program.symbol(name)
    assert sym is not None
    return (sym.value + bias) >> 6, (sym.value + bias + sym.size - 1) >> 6


def _run_trace(check: RegionCheck, s: State, copy: bool, lines: tuple[int, int]
               ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Instructions run in the copy (or the original) and the table lines accessed."""
    from tests.unit.plugins.ifc_support import trace

    insns, touched = trace(check, s, copy)
    lo, hi = lines
    return insns, tuple(line for _, line in touched if lo <= line <= hi)  # type: ignore[misc]


@pytest.mark.parametrize(("function", "table", "register", "values"), [
    # digits (one arm), white space and invalid characters (others), >= 0x80 (no lookup)
    ("decode", "table", "rdx", b"07aF \tz\x7f\x80\xff"),
    ("square", "squares", "rdi", bytes([0, 1, 17, 40, 63, 64, 100, 255])),
])
def test_footprint_does_not_depend_on_the_secret(program: Image, function: str, table: str,
                                                 register: str, values: bytes) -> None:
    """The secret character picks the table entry and the arm: the copy runs the same
    instructions and reads the same table lines, in the same order, for every value; the
    original's table lines differ."""
    check, *_ = harden_both(program, function)
    lines = _table_lines(program, table, check.sandbox.bias)
    ctx = SCRATCH + 0x1000
    base = random_state(random.Random(f"composed-footprint:{function}"))
    states = []
    for v in values:
        gprs = list(base.gprs)
        gprs[REG["rdi"]], gprs[REG["rsi"]] = (ctx, ctx + 0x40) if function == "decode" \
            else (gprs[REG["rdi"]], gprs[REG["rsi"]])
        gprs[REG[register]] = v
        states.append(dataclasses.replace(base, gprs=tuple(gprs)))
    with check:
        copy = [_run_trace(check, s, True, lines) for s in states]
        orig = [_run_trace(check, s, False, lines) for s in states]
    assert len({c[0] for c in copy}) == 1 and copy[0][0]
    assert len({c[1] for c in copy}) == 1
    units = lines[1] - lines[0] + 1
    assert len(set(copy[0][1])) == units  # every line of the table
    assert len({o[1] for o in orig}) > 2 and len({o[0] for o in orig}) > 1


def test_b64_entry_lookup_footprint_does_not_depend_on_the_character(program: Image
                                                                     ) -> None:
    """The entry block's ``map[in[0]]`` scans map's four lines whatever ``in[0]`` is (the
    arm off: map[in[0]] >= 0xfe; the arm's own lookup, its index zeroed, scans them too)."""
    check, *_ = harden_both(program, "b64")
    lines = (MAP_AT >> 6, (MAP_AT + 255) >> 6)
    base = random_state(random.Random("composed-footprint:b64"))
    base = with_memory(base, MAP_AT, bytes([0xFF]) * 256)
    gprs = list(base.gprs)
    gprs[REG["rdi"]], gprs[REG["rsi"]] = MAP_AT, IN_AT
    base = dataclasses.replace(base, gprs=tuple(gprs))
    states = [with_memory(base, IN_AT, bytes([c, 0])) for c in (0, 0x41, 0x80, 0xC0, 0xFF)]
    with _probes(check.sandbox.uc, check.t.probes, _allocation_map()), check:
        copy = [_run_trace(check, s, True, lines) for s in states]
        orig = [_run_trace(check, s, False, lines) for s in states]
    assert len({c[0] for c in copy}) == 1 and len({c[1] for c in copy}) == 1
    assert set(copy[0][1]) == set(range(lines[0], lines[1] + 1))
    assert len({o[1] for o in orig}) == 4  # one line each, four different ones


# -- refusals and what is left alone -----------------------------------------------------------


def test_a_slot_guarded_table_load_is_left_alone_and_the_region_refused() -> None:
    """A table whose base is a register the arm does not set, indexed by a value the arm
    does not bound (the guard sends it to the scratch slot): nothing to rewrite, so the
    pass does not apply to the region, and asked anyway it says why."""
    view = view_from_asm(["test esi, esi", "je out", "mov rax, qword ptr [rdx]",
                          "movzx eax, byte ptr [rdi + rax]", "out:", "ret"])
    assert PASS.applies(view, None, None) is False  # type: ignore[arg-type]
    result = PASS.harden(view, None, None)  # type: ignore[arg-type]
    assert isinstance(result, Refusal)
    assert result.reason == (
        "no load or store in r is a table access whose rewrite composes with the branch "
        "region's: none has known bounds (or, in the entry block of a branch region, a "
        "value-range span) at an address the region's predicates do not move out of the "
        "table")


def test_the_entry_block_value_range_load_is_taken_the_arm_one_is_not() -> None:
    view = view_from_asm(["movzx eax, byte ptr [rsi]", "movzx eax, byte ptr [rdi + rax]",
                          "test eax, eax", "je out", "movzx ecx, byte ptr [rsi + 1]",
                          "movzx ecx, byte ptr [rdi + rcx]", "out:", "ret"])
    found = composed_accesses(view)
    assert [(a.insn.text, b) for a, b in found] == [  # the arm's: its guard keeps rdi
        ("movzx eax, byte ptr [rdi + rax]", None), ("movzx ecx, byte ptr [rdi + rcx]", None)]
    result = harden(PASS, view)
    assert isinstance(result, Rewrite) and list(result.replace) == [a.insn.address
                                                                    for a, _ in found]


def test_a_table_region_is_unchanged() -> None:
    """Kind ``table`` (and a block-shaped region of no kind) keep the table rules: every
    register-addressed access of a ``table`` region is a candidate."""
    lines = ["movzx ecx, byte ptr [rsi]", "movzx eax, byte ptr [rdi + rcx]", "ret"]
    table = view_from_asm(lines, shape="block", kind="table")
    assert PASS.applies(table, None, None) is True  # type: ignore[arg-type]
    result = PASS.harden(table, None, None)  # type: ignore[arg-type]
    assert isinstance(result, Rewrite) and len(result.replace) == 2  # [rsi] too (heap rule)
    branch = view_from_asm(lines, shape="branch", kind="branch")
    result = harden(PASS, branch)
    assert isinstance(result, Rewrite) and len(result.replace) == 1  # the table load only


# -- loop regions (bounded-loop) ---------------------------------------------------------------

LOOP_SOURCE = r"""
volatile int vsq[64] = {
#define Q(i) (i) * (i) + 1, (i + 1) * (i + 1) + 1, (i + 2) * (i + 2) + 1, (i + 3) * (i + 3) + 1
    Q(0), Q(4), Q(8), Q(12), Q(16), Q(20), Q(24), Q(28),
    Q(32), Q(36), Q(40), Q(44), Q(48), Q(52), Q(56), Q(60),
};

/* a secret index fixed before the loop, a secret exit (a zero byte): the lookup runs in
   every iteration, in the header, at the same address (volatile: it is not hoisted) */
__attribute__((noinline))
long sum_until_zero(const unsigned char *p, const unsigned char *end, unsigned k)
{
    long s = 0;
    do {
        s += vsq[k & 63];
    } while (*p++ != 0 && p != end);
    return s;
}
int main(void) { return (int)sum_until_zero(0, 0, 0); }
"""
TEXT = SCRATCH + 0x1000
LOOP_BOUND = 41  # at most 33 characters: the original runs at most 33 iterations


@pytest.fixture(scope="module", params=["static", "static-pie"])
def loop_program(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> Image:
    directory: Path = tmp_path_factory.mktemp(f"composed-loop-{request.param}")
    if request.param == "static":
        path = compile_program(directory, "loop", {"loop.c": LOOP_SOURCE}, "static",
                               (*CFLAGS, "-fno-pie"))
        return load_image(str(path))
    return build(directory, "loop", LOOP_SOURCE, request.param)


def _loop_state(seed: str, k: int | None = None, zero_at: int | None = None) -> State:
    rng = random.Random(seed)
    n = rng.randrange(1, 34)
    text = bytearray(rng.randrange(1, 256) for _ in range(40))
    if zero_at is None and rng.random() < 0.6 and n:
        zero_at = rng.randrange(n)
    if zero_at is not None:
        text[zero_at] = 0
    s = random_state(rng)
    gprs = list(s.gprs)
    gprs[REG["rdi"]], gprs[REG["rsi"]] = TEXT, TEXT + n
    gprs[REG["rdx"]] = rng.getrandbits(32) if k is None else k
    return with_memory(dataclasses.replace(s, gprs=tuple(gprs)), TEXT, bytes(text))


def _loop_hardened(program: Image) -> tuple[RegionCheck, Rewrite | Refusal | bool]:
    from plugins.bounded_loop import PASS as BOUNDED_LOOP

    sandbox = sandbox_for(program)
    region = region_of(program, "sum_until_zero", loop=True)
    view = region_view(region, "loop", sandbox.bias, {"bound": LOOP_BOUND}, image=program)
    code = harden(BOUNDED_LOOP, view)
    assert isinstance(code, Rewrite), code
    applies = PASS.applies(view, None, None)  # type: ignore[arg-type]
    table = PASS.harden(view, None, None) if applies is True else applies  # type: ignore[arg-type]
    replace = table.replace if isinstance(table, Rewrite) else {}
    check = RegionCheck(sandbox, region, translate(sandbox, region, code, replace),
                        scratch_below_red_zone=True)
    copy_only, orig = check.copy_inside, check.original_inside
    check.allow_reentry = True  # an out-of-range bound: the header, then the original loop
    check.copy_inside = lambda a: copy_only(a) or orig(a)
    return check, table


def test_loop_lookup_at_a_fixed_address_is_rewritten(loop_program: Image) -> None:
    """Non-PIE: ``[rdx*4 + vsq]`` with RDX set before the loop is scanned in every
    iteration, active or not; the copy computes what the original computes, and its
    instructions and table lines do not depend on the index or the exit point.  PIE: gcc
    hoists the table's ``lea`` out of the loop, so no access has known bounds and the pass
    does not apply (the contract's table would be needed; bounded-loop alone runs)."""
    check, table = _loop_hardened(loop_program)
    if loop_program.is_pie:
        assert table is False
        return
    assert isinstance(table, Rewrite) and len(table.replace) == 1, table
    states = [(f"composed-loop:{i}", _loop_state(f"composed-loop:{i}")) for i in range(200)]
    with check:
        report = check.compare(states)
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared == len(states)
    lines = _table_lines(loop_program, "vsq", check.sandbox.bias)
    runs = [_loop_state("composed-loop-footprint", k=k, zero_at=z)
            for k in (0, 17, 63) for z in (0, 5, 20)]
    with check:
        copy = [_run_trace(check, s, True, lines) for s in runs]
        orig = [_run_trace(check, s, False, lines) for s in runs]
    assert len({c[0] for c in copy}) == 1 and len({c[1] for c in copy}) == 1
    assert set(copy[0][1]) == set(range(lines[0], lines[1] + 1))
    assert len({o[1] for o in orig}) > 3


def test_an_index_the_loop_computes_is_left_to_bounded_loop() -> None:
    """A lookup whose index the loop writes is not this pass's (bounded-loop scans it as a
    computed load, or refuses it): in a loop region nothing else is a table access here."""
    view = view_from_asm(["top:", "movzx eax, byte ptr [rdi]", "movzx eax, byte ptr "
                          "[rax*4 + 0x601000]", "add rdi, 1", "cmp rdi, rsi", "jne top", "ret"],
                         "loop", "loop")
    view = dataclasses.replace(view, object_at=lambda a: None)
    assert composed_accesses(view) == []
