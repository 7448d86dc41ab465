"""Guarded accesses in if-converted regions (plugins/support/predication.py, ``Guard``): a
load or store of a conditional block that the memory rule cannot prove valid on the paths
where the block is off (``if (p) x = *p``; stores through the caller's pointers on one path;
a table load whose index the arm computes, as in Nettle's base16_decode_single) runs with
its address registers redirected when the block is off: to the region's safe scratch slot,
or, for a table whose address the block loads itself (``lea base, [rip + X]``) or writes as
the displacement (non-PIE), to the table's first element.

Differential runs in raw Unicorn (tests/unit/dbt/harness.py): the copy against the original
on hundreds of random states, in a good share of which the pointer is not valid (0, a small
number, random bits) while the path that dereferences it is not taken: the original does
not fault there, and the copy must not either.  And the refusals, one test each.
"""

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
from plugins.support.predication import Engine, Guard, Pred
from tests.unit.dbt.harness import (
    SCRATCH,
    SCRATCH_SIZE,
    RegionCheck,
    Sandbox,
    State,
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
    state,
    trace,
    translate,
    view_from_asm,
)

STATES = 300

SOURCE = r"""
#include <assert.h>

/* Nettle's hex_decode_table shape: -1 invalid, -2 white space, else the digit */
static const signed char table[128] = {
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -2, -2, -1, -1, -2, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -2, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
     0,  1,  2,  3,  4,  5,  6,  7,  8,  9, -1, -1, -1, -1, -1, -1,
    -1, 10, 11, 12, 13, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, 10, 11, 12, 13, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
};

struct ctx { unsigned char word, bits; };

/* an int table: non-PIE gcc indexes it by its address, [rdi*4 + squares] */
const int squares[64] = {
#define Q(i) (i) * (i) + 1, (i + 1) * (i + 1) + 1, (i + 2) * (i + 2) + 1, (i + 3) * (i + 3) + 1
    Q(0), Q(4), Q(8), Q(12), Q(16), Q(20), Q(24), Q(28),
    Q(32), Q(36), Q(40), Q(44), Q(48), Q(52), Q(56), Q(60),
};

__attribute__((noipa)) int square(unsigned c)
{
    if (c < 64)
        return squares[c] * 3;
    return -1;
}

/* if (p) x = *p: the load runs on one path only */
__attribute__((noipa)) int maybe_load(const int *p, int c)
{
    if (c & 1)
        return *p + c;
    return c - 1;
}

/* a pointer the arm computes */
__attribute__((noipa)) long walk(const long *base, long i, int c)
{
    long r = 0;
    if (c & 1)
        r = base[i & 7];
    return r + c;
}

/* nettle_base16_decode_single: a table load in an arm, stores through the caller's
   pointers on the digit path, assert() on a bad table entry (a dead end) */
__attribute__((noipa)) int decode(struct ctx *ctx, unsigned char *dst, char src)
{
    unsigned char usrc = (unsigned char)src;
    int digit;
    if (usrc >= 0x80)
        return -1;
    digit = table[usrc];
    switch (digit) {
    case -1:
        return -1;
    case -2:
        return 0;
    default:
        assert(digit >= 0);
        assert(digit < 0x10);
        if (ctx->bits) {
            *dst = (unsigned char)((ctx->word << 4) | digit);
            ctx->bits = 0;
            return 1;
        }
        ctx->word = (unsigned char)digit;
        ctx->bits = 4;
        return 0;
    }
}

int main(void)
{
    struct ctx c = {0, 0};
    unsigned char d;
    int x = 1;
    long a[8] = {0};
    return maybe_load(&x, 0) + (int)walk(a, 0, 0) + decode(&c, &d, '0') + square(3);
}
"""

FUNCTIONS = ("maybe_load", "walk", "decode", "square")


@pytest.fixture(scope="module", params=["static", "static-pie"])
def program(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Image:
    directory: Path = tmp_path_factory.mktemp(f"guarded-{request.param}")
    if request.param == "static":  # non-PIE code: tables addressed by their link address
        path = compile_program(directory, "guarded", {"guarded.c": SOURCE}, "static",
                               (*CFLAGS, "-fno-pie"))
        return load_image(str(path))
    return build(directory, "guarded", SOURCE, request.param)


def _pointer_or_junk(rng: random.Random) -> int:
    """A pointer into the scratch area half the time, else something no page holds."""
    if rng.random() < 0.5:
        return SCRATCH + SCRATCH_SIZE // 4 + (rng.randrange(SCRATCH_SIZE // 2) & ~7)
    return rng.choice((0, 8, rng.getrandbits(64), rng.randrange(1 << 20)))


def _char(rng: random.Random) -> int:
    """A character: a hex digit, white space, another ASCII one, or one >= 0x80."""
    return rng.choice((rng.choice(b"0123456789abcdefABCDEF"), rng.choice(b" \t\n"),
                       rng.randrange(0x80), rng.randrange(0x80, 0x100)))


POINTERS = {"maybe_load": ("rdi",), "walk": ("rdi",), "decode": ("rdi", "rsi"), "square": ()}
CHOOSE = {
    "maybe_load": {"rdi": _pointer_or_junk},
    "walk": {"rdi": _pointer_or_junk},
    "decode": {"rdi": _pointer_or_junk, "rsi": _pointer_or_junk, "rdx": _char},
    "square": {"rdi": lambda rng: rng.choice((rng.randrange(128), rng.getrandbits(32)))},
}


def _check(program: Image, function: str) -> tuple[RegionCheck, Rewrite, CodeRegion]:
    sandbox: Sandbox = sandbox_for(program)
    region = region_of(program, function)
    # with the image: object_at knows the module's data objects (the ``data`` target)
    view = region_view(region, "branch", sandbox.bias, image=program)
    rewrite = harden(IF_CONVERSION, view)
    assert isinstance(rewrite, Rewrite), rewrite
    t = translate(sandbox, region, rewrite)
    return RegionCheck(sandbox, region, t, scratch_below_red_zone=True), rewrite, region


def _dereferences(function: str, s: State) -> bool:
    """Does the original's path from ``s`` dereference the pointer arguments?"""
    if function == "decode":
        c = s.gprs[REG["rdx"]] & 0xFF
        return c < 0x80 and chr(c) in "0123456789abcdefABCDEF"
    if function == "square":
        return s.gprs[REG["rdi"]] & 0xFFFFFFFF < 64
    return bool(s.gprs[REG["rsi" if function == "maybe_load" else "rdx"]] & 1)


def _junk(s: State) -> bool:
    return not SCRATCH <= s.gprs[REG["rdi"]] < SCRATCH + SCRATCH_SIZE


def _states(function: str) -> list[tuple[str, State]]:
    """Random states whose pointers are valid where the original dereferences them (an
    original that faults is not compared: the copy faults at the same access, but with
    glue state around it) and often junk where it does not."""
    out = []
    for i in range(STATES):
        seed = f"guarded:{function}:{i}"
        rng = random.Random(seed)
        s = random_state(rng, CHOOSE[function])
        if _dereferences(function, s):
            gprs = list(s.gprs)
            for r in POINTERS[function]:
                gprs[REG[r]] = SCRATCH + SCRATCH_SIZE // 4 + (rng.randrange(0x1000) & ~7)
            s = dataclasses.replace(s, gprs=tuple(gprs))
        out.append((seed, s))
    return out


@pytest.mark.parametrize("function", FUNCTIONS)
def test_guarded_accesses_compute_what_the_original_computes(program: Image, function: str
                                                              ) -> None:
    check, rewrite, _ = _check(program, function)
    code = rewrite.code or ()
    # the guard: the predicate tested, then the address registers cmov'ed
    assert any(line.startswith("cmov") and "rsp" in line for line in code), code
    states = _states(function)
    with check:
        report = check.compare(states)
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared == STATES and report.stops == {"exit": STATES}, report.stops
    junk = sum(_junk(s) and not _dereferences(function, s) for _, s in states)
    assert junk >= 40, junk  # the skipped path with a bad pointer (or index) ran often
    assert sum(_dereferences(function, s) for _, s in states) >= 40


def test_the_off_path_with_a_null_pointer_does_not_fault(program: Image) -> None:
    """The case the guard is for, directly: ``maybe_load(NULL, even)``."""
    check, _, _ = _check(program, "maybe_load")
    with check:
        s = state("guarded-null", rdi=0, rsi=2)
        orig, copy = check.outcome(False, s), check.outcome(True, s)
    assert orig.kind == copy.kind == "exit", (orig, copy)
    assert orig.gprs[REG["rax"]] == copy.gprs[REG["rax"]] == 1


def test_a_table_guard_keeps_the_address_in_the_table(program: Image) -> None:
    """decode's table load: the guard zeroes the index only (PIE: the block's own ``lea``
    base; non-PIE: the table's address is the displacement), never the safe slot."""
    _, rewrite, region = _check(program, "decode")
    code = rewrite.code or ()
    load = next(i for b in region.block_list() for i in b.insns
                if i.mnemonic in ("movzx", "movsx", "movsxd", "mov") and "byte ptr" in i.text
                and "rip" not in i.text and ("rdi" not in i.op_str.split(",")[1]))
    at = code.index(f".insn {load.address:#x}") if f".insn {load.address:#x}" in code else None
    assert at is not None, (load.text, code)
    before = code[max(0, at - 6):at]
    cmovs = [line for line in before if line.startswith("cmov")]
    assert cmovs and all(line.endswith(f"qword ptr [rsp - {_zero_slot(code)}]")
                         for line in cmovs), before


def _zero_slot(code: tuple[str, ...]) -> str:
    """The slot initialised to 0 (the engine's zero constant)."""
    init = next(line for line in code if line.startswith("mov qword ptr [rsp - ")
                and line.endswith(", 0x0"))
    return init[len("mov qword ptr [rsp - "):init.index("]")]


def test_a_table_indexed_by_its_address_is_guarded_inside_it(
        program: Image, monkeypatch: pytest.MonkeyPatch) -> None:
    """square's load: non-PIE, ``[rdi*4 + squares]`` (no base: the displacement is the
    table, a data object) gets the ``data`` target, base and index zeroed when off; PIE,
    the block's ``lea`` base (``base``).  Never the safe slot."""
    seen: list[Guard] = []
    guard = Engine.guard

    def spy(self: Engine, g: Guard, pred: Pred) -> list[str]:
        seen.append(g)
        return guard(self, g, pred)

    monkeypatch.setattr(Engine, "guard", spy)
    _check(program, "square")
    assert [g.target for g in seen] == ["base" if program.is_pie else "data"], seen


def test_paths_run_the_same_instructions(program: Image) -> None:
    """Two digits and a non-digit: the same instructions in the copy (the guards run
    whether or not their block is on), different paths in the original."""
    check, _, _ = _check(program, "decode")
    with check:
        ctx = SCRATCH + 0x1000
        states = [state("guarded-leak", rdi=ctx, rsi=ctx + 0x40, rdx=c) for c in b"7 z"]
        orig = [trace(check, s, copy=False) for s in states]
        copy = [trace(check, s, copy=True) for s in states]
    assert len({o[0] for o in orig}) == 3
    assert copy[0][0] == copy[1][0] == copy[2][0] and copy[0][0]


# -- refusals ---------------------------------------------------------------------------------

def _refusal(lines: list[str]) -> str:
    result = harden(IF_CONVERSION, view_from_asm(lines))
    assert isinstance(result, Refusal), result
    return result.reason


def test_refused_an_access_with_no_base_register() -> None:
    reason = _refusal(["test edi, edi", "je out", "mov eax, dword ptr [rsi*4 + 0x1000]",
                       "out:", "ret"])
    assert reason.endswith("accesses memory that not every path of the original accesses, "
                           "and it has no base register to redirect"), reason


def test_refused_a_base_that_is_also_the_index() -> None:
    reason = _refusal(["test edi, edi", "je out", "mov eax, dword ptr [rsi + rsi*2]",
                       "out:", "ret"])
    assert reason.endswith("and its base register is also its index"), reason


def test_refused_a_stack_access_below_the_red_zone() -> None:
    reason = _refusal(["test edi, edi", "je out", "mov eax, dword ptr [rsp + rsi*4]",
                       "out:", "ret"])
    assert reason.endswith("and it is on the stack below the red zone (not redirected)"), \
        reason


def test_refused_a_segment_relative_access() -> None:
    reason = _refusal(["test edi, edi", "je out", "mov rax, qword ptr fs:[rsi]",
                       "out:", "ret"])
    assert reason.endswith("and it is relative to fs: (not redirected)"), reason


def test_refused_a_wide_access() -> None:
    reason = _refusal(["test edi, edi", "je out", "movups xmm0, xmmword ptr [rsi]",
                       "out:", "ret"])
    assert reason.endswith("and it accesses 16 bytes (a guard redirects at most 8)"), reason


def test_refused_a_huge_displacement() -> None:
    reason = _refusal(["test edi, edi", "je out", "mov eax, dword ptr [rsi + 0x7ffffff0]",
                       "out:", "ret"])
    assert reason.endswith("and its displacement is too large to redirect"), reason


def test_refused_two_unproven_operands_of_one_instruction() -> None:
    """``push qword ptr [rsi]`` writes RSP (refused first), so the only instruction with two
    memory operands that reaches the rule is a string one, refused earlier too: the
    one-guard limit is checked on the operands the rule returns, here a movs-free stand-in
    through the function itself."""
    from plugins.if_conversion import _unguardable
    from plugins.support.predication import Guard, analyse

    view = view_from_asm(["mov eax, dword ptr [rsi]"])
    info = analyse(view.blocks[0].insns[0])
    m = info.mems[0]
    assert _unguardable(info, m, {}, "slot") == ""
    assert _unguardable(info, m, {info.insn.address: Guard(m)}, "slot") == \
        "it is the instruction's second such operand (one guard per instruction)"


def test_a_loop_in_an_arm_keeps_the_rule_refusal() -> None:
    """The arm-loop scheme does not guard: the rule's own refusal stands."""
    reason = _refusal(["test edi, edi", "je out", "mov ecx, 4", "top:",
                       "add eax, dword ptr [rsi]", "sub ecx, 1", "jne top", "out:", "ret"])
    assert reason.endswith("accesses memory that not every path of the original "
                           "accesses"), reason
