"""Counted loops in the shapes gcc -O2 emits besides ``sub c, 1; jne`` (plugins/support/
arm_loop.py): an exit on ``jae``/``ja``/``jb``/``jg``, a step other than 1, a test of the
counter after its step (``cmp``/``test``, flag-neutral instructions in between), and a start
set before an earlier call that saves and restores the counter's register.

The trip count is computed exactly, iteration by iteration at the instruction's width
(:func:`plugins.support.arm_loop.trips_of`); unit tests pin its edge cases (wrap, signed
and unsigned exits, a step that does not divide, a start already past the end).  Each
callee below runs from an if-converted region with a constant start (or end) set by the
caller; differential runs in raw Unicorn (static and static-pie gcc -O2 builds) against
the original, the copy's instructions and cache lines the same for both secret values,
the cost of one entry, and each new refusal's message.
"""

from __future__ import annotations

import random

import pytest

from leakdbt.dbt.cfg import function_cfg
from leakdbt.loader.image import Image
from leakdbt.plugin_api import Refusal, Rewrite
from plugins.if_conversion import PASS
from plugins.support.trip_count import MAX_TRIPS, ExitTest, Step, trips_of
from tests.unit.plugins.ifc_support import (
    build,
    check_entry_cost,
    check_path_hidden,
    check_secret_bit,
    clone_check,
    harden,
    view_from_asm,
)

STATES = 300

SOURCE = r"""
unsigned long last;

/* sub rcx, 1; jae: counted down through 0 (the step's CF) */
__attribute__((noipa)) unsigned long jae_down(unsigned long x)
{
#pragma GCC unroll 1
    for (int i = 7; i >= 0; i--)
        x = (x ^ (x >> 7)) * 0xff51afd7ed558ccdUL + (unsigned long)i;
    return x;
}

/* sub esi, 3; ...; cmp esi, 2; ja: a step of 3, the test after other instructions */
__attribute__((noipa)) unsigned long ja_by3(unsigned long x, unsigned n)
{
    do {
        x = (x ^ (unsigned long)n) * 0xff51afd7ed558ccdUL;
        n -= 3;
    } while (n > 2);
    return x;
}

/* add rcx, 5; cmp rcx, rsi; jb: an up-count that does not land on its end */
__attribute__((noipa)) unsigned long jb_by5(unsigned long x, unsigned long n)
{
    unsigned long i = 0;
    do {
        x = (x ^ (x >> 7)) * 0xff51afd7ed558ccdUL + i;
        i += 5;
    } while (i < n);
    return x;
}

/* add rdx, 8; ...; cmp rdx, 0x40; jne: a step of 8 */
__attribute__((noipa)) unsigned long by8(unsigned long x)
{
#pragma GCC unroll 1
    for (unsigned long i = 0; i < 61; i += 8)
        x = (x ^ i) * 0xff51afd7ed558ccdUL + (x >> 7);
    return x;
}

/* sub rdx, 6; ...; cmp rdx, -2; jne: a step of -6 past 0 */
__attribute__((noipa)) unsigned long down6(unsigned long x)
{
#pragma GCC unroll 1
    for (int i = 40; i > 3; i -= 6)
        x = (x ^ (unsigned long)i) * 0xff51afd7ed558ccdUL + (x >> 9);
    return x;
}

/* push rbx; ... rbx written ...; pop rbx */
__attribute__((noipa)) unsigned long churn(unsigned long x)
{
    unsigned long y = x * 3;
    __asm__ volatile("mov %1, %%rbx; add %%rbx, %0" : "+r"(y) : "r"(x) : "rbx");
    return y;
}

/* the step, flag-neutral instructions, then test c, c / cmp c, 0 (written in assembly:
   this gcc folds these into the step's flags) */
__attribute__((naked)) unsigned long tested(unsigned long x)
{
    __asm__(".intel_syntax noprefix\n"
            "mov rax, rdi\n"
            "mov ecx, 6\n"
            "1: imul rax, rax, 0x1234567\n"
            "sub ecx, 1\n"
            "mov rdx, rcx\n"
            "lea rax, [rax + rdx*4]\n"
            "test ecx, ecx\n"
            "jne 1b\n"
            "mov edx, 9\n"
            "2: xor rax, rdx\n"
            "dec edx\n"
            "rol rax, 7\n"
            "cmp edx, 0\n"
            "jg 2b\n"
            "ret\n"
            ".att_syntax\n");
}

/* the counter's start set before a call that saves and restores it (churn: push rbx ...
   pop rbx), then the loop (written in assembly: gcc sets it after the call) */
__attribute__((naked)) unsigned long across(unsigned long x)
{
    __asm__(".intel_syntax noprefix\n"
            "push rbx\n"
            "mov ebx, 5\n"
            "call churn\n"
            "1: imul rax, rax, 0x7654321\n"
            "add rax, rbx\n"
            "sub ebx, 1\n"
            "jne 1b\n"
            "pop rbx\n"
            "ret\n"
            ".att_syntax\n");
}

unsigned long tab[8] = {3, 5, 7, 11, 13, 17, 19, 23};

/* a module-data table read by a counter stepped by 2, and one stepped by -2 (written in
   assembly: gcc walks a pointer instead); their indices are 0, 2, 4, 6 and 7, 5, 3, 1 */
__attribute__((naked)) unsigned long strided(unsigned long x)
{
    __asm__(".intel_syntax noprefix\n"
            "mov rax, rdi\n"
            "lea rsi, [rip + tab]\n"
            "xor edx, edx\n"
            "1: xor rax, qword ptr [rsi + rdx*8]\n"
            "imul rax, rax, 0x1234567\n"
            "add edx, 2\n"
            "cmp edx, 8\n"
            "jne 1b\n"
            "mov ecx, 9\n"
            "lea rsi, [rip + tab]\n"  /* a base the walk back from the loop reaches */
            "2: sub ecx, 2\n"
            "add rax, qword ptr [rsi + rcx*8]\n"
            "rol rax, 5\n"
            "cmp ecx, 1\n"
            "ja 2b\n"
            "ret\n"
            ".att_syntax\n");
}

__attribute__((noipa)) unsigned long r_jae(unsigned long s, unsigned long x)
{ unsigned long r = x; if (s & 1) r = jae_down(x) + 1; return r ^ s; }
__attribute__((noipa)) unsigned long r_ja(unsigned long s, unsigned long x)
{ unsigned long r = x; if (s & 2) r = ja_by3(x, 14) + 1; return r ^ s; }
__attribute__((noipa)) unsigned long r_jb(unsigned long s, unsigned long x)
{ unsigned long r = x; if (s & 4) r = jb_by5(x, 23) + 1; return r ^ s; }
__attribute__((noipa)) unsigned long r_by8(unsigned long s, unsigned long x)
{ unsigned long r = x; if (s & 8) r = by8(x) + 1; return r ^ s; }
__attribute__((noipa)) unsigned long r_down6(unsigned long s, unsigned long x)
{ unsigned long r = x; if (s & 16) r = down6(x) + 1; return r ^ s; }
__attribute__((noipa)) unsigned long r_tested(unsigned long s, unsigned long x)
{ unsigned long r = x; if (s & 32) r = tested(x) + 1; return r ^ s; }
__attribute__((noipa)) unsigned long r_across(unsigned long s, unsigned long x)
{ unsigned long r = x; if (s & 64) r = across(x) + 1; return r ^ s; }
__attribute__((noipa)) unsigned long r_strided(unsigned long s, unsigned long x)
{ unsigned long r = x; if (s & 128) r = strided(x) + 1; return r ^ s; }

int main(int argc, char **argv)
{
    (void)argv;
    unsigned long a = (unsigned long)argc;
    return (int)(r_jae(a, a) + r_ja(a, a) + r_jb(a, a) + r_by8(a, a) + r_down6(a, a)
                 + r_tested(a, a) + r_across(a, a) + r_strided(a, a));
}
"""
# region -> (the secret bit of rdi, its callee, a line of the callee's loop test, its trips)
FUNCTIONS = {
    "r_jae": (1, "jae_down", ("sub rcx, 1", "jae "), 8),
    "r_ja": (2, "ja_by3", ("sub esi, 3", "cmp esi, 2", "ja "), 4),
    "r_jb": (4, "jb_by5", ("add rcx, 5", "cmp rcx, rsi", "jb "), 5),
    "r_by8": (8, "by8", ("add rdx, 8", "cmp rdx, 0x40", "jne "), 8),
    "r_down6": (16, "down6", ("sub rdx, 6", "cmp rdx, -2", "jne "), 7),
    "r_tested": (32, "tested", ("sub ecx, 1", "test ecx, ecx", "cmp edx, 0", "jg "), 6),
    "r_across": (64, "across", ("mov ebx, 5", "call ", "sub ebx, 1"), 5),
    "r_strided": (128, "strided", ("add edx, 2", "sub ecx, 2", "ja "), 4),
}


@pytest.fixture(scope="module", params=["static", "static-pie"])
def program(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Image:
    directory = tmp_path_factory.mktemp(f"arm-loop-shapes-{request.param}")
    return build(directory, "arm_loop_shapes", SOURCE, request.param)


def _text(image: Image, function: str) -> list[str]:
    sym = image.symbol(function)
    assert sym is not None
    cfg = function_cfg(image, sym)
    return [f"{i.mnemonic} {i.op_str}".replace("0xfffffffffffffffe", "-2")
            for b in sorted(cfg.blocks) for i in cfg.blocks[b].insns]


def test_the_shapes_are_what_the_build_makes(program: Image) -> None:
    """Each callee's loop has the shape its comment names (gcc -O2 output, or assembly)."""
    for _bit, callee, lines, _trips in FUNCTIONS.values():
        text = _text(program, callee)
        for line in lines:
            assert any(t.startswith(line) for t in text), (callee, line, text)


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_the_shapes_compute_what_the_original_computes(program: Image, function: str) -> None:
    check, rewrite = clone_check(program, function)
    code = rewrite.code or ()
    bit, _callee, _lines, trips = FUNCTIONS[function]
    assert not any(line.startswith("call") for line in code)
    assert any(line.endswith(f", {trips:#x}") and line.startswith("mov qword ptr")
               for line in code), code  # the loop runs the trip count read from the code
    check_secret_bit(check, "arm-loop-shapes", function, bit, STATES)


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_both_paths_run_the_same_instructions_and_lines(program: Image, function: str) -> None:
    check, _ = clone_check(program, function)
    bit = FUNCTIONS[function][0]
    for seed in range(3):
        check_path_hidden(check, f"arm-loop-shapes-leak:{function}:{seed}", bit)


def test_cost_of_one_entry(program: Image, capsys: pytest.CaptureFixture[str]) -> None:
    """Instructions of one entry, original (both paths) and hardened; printed for the
    record (run with ``-s``).  The hardened count is the same for both paths."""
    for function, (bit, *_rest) in sorted(FUNCTIONS.items()):
        check, _ = clone_check(program, function)
        check_entry_cost(check, f"arm-loop-shapes-cost:{function}", bit,
                         f"{program.path.split('/')[-2]} {function}", capsys)


# -- the trip count ---------------------------------------------------------------------

def _step(delta: int, width: int = 32, subtract: bool = False) -> Step:
    return Step("rcx", width, delta & ((1 << width) - 1), True, subtract)


def _brute(start: int, delta: int, width: int, kind: str, cc: str, stays: bool, end: int,
           cwidth: int | None = None, subtract: bool = False, limit: int = MAX_TRIPS
           ) -> int | None:
    """The same loop run on Unicorn-free integers another way: signed/unsigned compares."""
    cw = cwidth or width
    mask, cmask = (1 << width) - 1, (1 << cw) - 1

    def signed(v: int, w: int) -> int:
        return v - (1 << w) if v >> (w - 1) else v

    v = start & mask
    for j in range(1, limit + 1):
        before, v = v, (v + delta) & mask
        if kind == "step" and subtract:  # flags of before - (-delta)
            a, b, w, r = before, -delta & mask, width, v
            carry, sa, sb = a < b, signed(a, w), signed(b, w)
            ov = not -(1 << (w - 1)) <= sa - sb < 1 << (w - 1)
        elif kind == "step":  # flags of before + delta
            a, b, w, r = before, delta & mask, width, v
            carry, sa, sb = a + b > mask, signed(a, w), signed(b, w)
            ov = not -(1 << (w - 1)) <= sa + sb < 1 << (w - 1)
        if kind == "step":
            rel = {"e": r == 0, "ne": r != 0, "b": carry, "ae": not carry,
                   "s": bool(r >> (w - 1)), "l": bool(r >> (w - 1)) != ov}[cc]
        else:
            a, e = v & cmask, end & cmask
            if kind == "rcmp":
                a, e = e, a
            if kind == "test":
                e = 0
            rel = {"e": a == e, "ne": a != e, "b": a < e, "ae": a >= e, "be": a <= e,
                   "a": a > e, "l": signed(a, cw) < signed(e, cw),
                   "ge": signed(a, cw) >= signed(e, cw), "le": signed(a, cw) <= signed(e, cw),
                   "g": signed(a, cw) > signed(e, cw)}[cc]
        if rel != stays:
            return j
    return None


CASES = {  # name -> (start, delta, step width, test kind, cc, stays, end, test width, K)
    "down-to-0": (8, -1, 32, "step", "ne", True, 0, 32, 8),
    "jae-through-0": (7, -1, 64, "substep", "ae", True, 0, 64, 8),  # sub rcx, 1; jae
    "jb-add-minus-1": (7, -1, 64, "step", "b", True, 0, 64, 8),  # add rcx, -1: CF = carry
    "js-below-0": (5, -2, 32, "substep", "s", False, 0, 32, 3),
    "jl-sub-overflow": (0x7FFFFFFE, 1, 32, "substep", "l", False, 0, 32, 3),  # OF at 2**31
    "step-8-jne": (0, 8, 64, "cmp", "ne", True, 64, 64, 8),
    "step-8-inexact-jb": (0, 8, 64, "cmp", "b", True, 61, 64, 8),
    "step-5-register-end-jb": (0, 5, 64, "cmp", "b", True, 23, 64, 5),
    "rcmp-ja": (0, 5, 64, "rcmp", "a", True, 23, 64, 5),
    "down-3-ja": (14, -3, 32, "cmp", "a", True, 2, 32, 4),
    "down-ja-wraps": (1, -3, 32, "cmp", "a", True, 2, 32, None),  # 1 - 3 wraps up: ja goes on
    "down-jg-signed": (1, -3, 32, "cmp", "g", True, 2, 32, 1),  # 1 - 3 = -2 < 2 signed
    "down6-past-0": (40, -6, 64, "cmp", "ne", True, -2, 64, 7),
    "start-past-end": (30, 1, 32, "cmp", "b", True, 8, 32, 1),  # do-while: one iteration
    "test-after-step": (6, -1, 32, "test", "ne", True, 0, 32, 6),
    "test-jg": (9, -1, 32, "test", "g", True, 0, 32, 9),
    "32-bit-step-64-bit-cmp": (0, 1, 32, "cmp", "ne", True, 12, 64, 12),
    "je-leaves-at-once": (3, 1, 32, "cmp", "e", True, 9, 32, 1),
    "signed-wrap-jl": (0x7FFFFFF0, 4, 32, "cmp", "l", False, 0, 32, 4),  # leaves at >= 0...
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_trip_counts_are_exact(case: str) -> None:
    start, delta, width, kind, cc, stays, end, cwidth, trips = CASES[case]
    sub = kind == "substep"
    kind = "step" if sub else kind
    got = trips_of(start, _step(delta, width, sub), ExitTest(kind, cwidth, cc, stays), end)
    assert got == _brute(start, delta, width, kind, cc, stays, end, cwidth, sub)
    if trips is not None or case.endswith("wraps"):
        assert got == trips


def test_trip_counts_match_a_plain_run_on_random_loops() -> None:
    """Random starts (near 0 and the sign and wrap boundaries), steps, ends, widths and
    exits, against the plain run (equality exits are solved, not run)."""
    rng = random.Random("arm-loop-trips")
    ccs = ["e", "ne", "b", "ae", "be", "a", "l", "ge", "le", "g", "s"]
    for _ in range(3000):
        width, cwidth = rng.choice([(32, 32), (64, 64), (32, 64), (64, 32)])
        kind = rng.choice(["step", "substep", "cmp", "rcmp", "test"])
        if kind in ("step", "substep"):
            cwidth = width
        cc = rng.choice(ccs[:2] + ["b", "ae", "s", "l"] if kind in ("step", "substep")
                        else ccs[:-1])
        edge = rng.choice([0, 1 << 31, 1 << 32, 1 << 63, 1 << width])
        start = (edge + rng.randint(-40, 40)) % (1 << width)
        delta = rng.choice([1, -1, 2, -2, 3, -3, 5, 8, -8, 16])
        end = (rng.choice([0, 1 << 31, 1 << cwidth]) + rng.randint(-60, 60)) % (1 << cwidth)
        stays = rng.random() < 0.5
        sub = kind == "substep"
        k = "step" if sub else kind
        got = trips_of(start, _step(delta, width, sub), ExitTest(k, cwidth, cc, stays), end,
                       limit=300)
        want = _brute(start, delta, width, k, cc, stays, end, cwidth, sub, limit=300)
        assert got == want, (start, delta, width, kind, cc, stays, end, cwidth)


def test_an_inexact_step_never_meeting_its_end_is_nocount_instructions() -> None:
    assert trips_of(0, _step(8, 64), ExitTest("cmp", 64, "ne", True), 60) is None
    assert trips_of(0, _step(3), ExitTest("cmp", 32, "ne", True), 10, limit=1000) is None


# -- refusals -------------------------------------------------------------------------

HEAD = "the region contains a loop (a cycle through its blocks): "
ARM = ["test dil, 1", "je join"]
CALLEE = 0x20000
REFUSALS = {  # case -> (region lines, callee lines, the end of the reason)
    "never-meets": (
        [*ARM, "xor ecx, ecx", "top:", "add rax, 3", "add rcx, 8", "cmp rcx, 60", "jne top",
         "join:", "ret"], ["ret"],
        "the loop's head; its counter rcx goes from 0 in steps of 8 and `cmp rcx, 0x3c` never "
        "leaves the loop (modulo 2**64 it never meets its end)"),
    "exact-too-many": (
        [*ARM, "xor ecx, ecx", "top:", "add rax, 3", "add ecx, 3", "cmp ecx, 10", "jne top",
         "join:", "ret"], ["ret"],
        "the loop's head; it runs 2863311534 times, more than 65536"),
    "inequality-too-many": (
        [*ARM, "mov ecx, 5", "top:", "add rax, 3", "add ecx, 1", "cmp ecx, 3", "jae top",
         "join:", "ret"], ["ret"],
        "the loop's head; it runs more than 65536 times (its counter rcx goes from 5 in steps "
        "of 1 until `cmp ecx, 3` and `jae` leave the loop)"),
    "dec-jae": (  # dec keeps CF: the exit would read a flag from before the loop
        [*ARM, "mov ecx, 5", "top:", "add rax, 3", "dec ecx", "jae top", "join:", "ret"],
        ["ret"], "the loop's head; it is not a counted loop"),
    "tests-another-value": (  # lea edx, [rcx + rsi]; test edx, edx (gcc's signed n -= 2)
        [*ARM, "mov ecx, 5", "top:", "add rax, 3", "sub ecx, 2", "lea edx, [rcx + rsi]",
         "test edx, edx", "jg top", "join:", "ret"], ["ret"],
        "the loop's head; it is not a counted loop"),
    "callee-does-not-restore": (
        [*ARM, "mov ebx, 5", f"call {CALLEE:#x}", "top:", "add rax, rbx", "sub ebx, 1",
         "jne top", "join:", "ret"],
        ["push rbx", "mov ebx, 1", "mov qword ptr [rsp], rax", "pop rbx", "ret"],
        "its counter rbx is set by 'pop rbx' at 0x2000a, not to a constant known before the "
        "loop runs: its trip count need not be the same when its arm is off"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_loops_that_are_not_counted_are_refused_with_the_reason(case: str) -> None:
    lines, callee, message = REFUSALS[case]
    result = harden(PASS, view_from_asm(lines, callees={CALLEE: callee}))
    assert isinstance(result, Refusal), result
    assert result.reason.startswith(HEAD), result.reason
    assert result.reason.endswith(message) or message in result.reason, result.reason


def test_a_start_across_a_saving_callee_is_accepted_in_asm() -> None:
    """The same region with a callee that gives rbx back: the walk passes over it."""
    lines, _callee, _ = REFUSALS["callee-does-not-restore"]
    result = harden(PASS, view_from_asm(
        lines, callees={CALLEE: ["push rbx", "mov ebx, 1", "add rax, rbx", "pop rbx", "ret"]}))
    assert isinstance(result, Rewrite), result
    assert any(line.startswith("mov qword ptr") and line.endswith(", 0x5")
               for line in result.code or ()), result.code


def test_a_strided_index_is_set_from_the_hiddencount_instructions(program: Image) -> None:
    """The table index of a loop stepped by 2 (and -2) is ``a + b * n`` with ``b = -2``
    (``2``): each iteration's start computes it with an ``imul``."""
    _, rewrite = clone_check(program, "r_strided")
    code = rewrite.code or ()
    assert "imul rax, rax, -2" in code and "imul rax, rax, 2" in code, code
