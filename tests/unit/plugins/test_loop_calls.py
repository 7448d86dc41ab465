"""Loops and calls together in an if-converted region (plugins/support/arm_loop.py with
plugins/support/clone.py's ``loops=True``): a callee's counted loop runs in its clone, a
counted loop in an arm may call, and a region may hold several such loops (one per clone
instance and arm, nested ones included).  A loop's counter may start from a constant the
caller sets before the call (``mov esi, 5; call rounds``).

Differential runs in raw Unicorn (tests/unit/dbt/harness.py): the copy against the original
on hundreds of random states, both arms taken often; the copy's instructions and cache
lines are the same for both values of the secret bit; every new refusal's message.
"""

from __future__ import annotations

import pytest

from leakdbt.loader.image import Image
from leakdbt.plugin_api import Refusal, Rewrite
from plugins.if_conversion import PASS
from plugins.support.clone import expand_calls
from plugins.support.predication import Refused
from tests.unit.plugins.ifc_support import (
    build,
    check_path_hidden,
    check_secret_bit,
    clone_check,
    harden,
    view_from_asm,
)

STATES = 300

SOURCE = r"""
unsigned long table[16] = {3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59};
unsigned long g_last;

/* a counted loop whose start the callee sets (mov ecx, 8), module data read and stored */
__attribute__((noipa)) unsigned long looper(unsigned long x)
{
    for (int i = 0; i < 8; i++) {
        x = x * 0x9E3779B97F4A7C15UL + (x >> 29) + table[5];
        g_last = x;
    }
    return x;
}

/* a loop up to n (cmp rsi, rcx; n = 6 from the caller, through movsxd rsi, esi) */
__attribute__((noipa)) unsigned long steps(unsigned long x, int n)
{
    for (int i = 0; i < n; i++)
        x = (x ^ (x >> 7) ^ (unsigned long)i) * 0xff51afd7ed558ccdUL + table[1];
    return x;
}

__attribute__((noipa)) unsigned long by_end(unsigned long s, unsigned long x)
{
    unsigned long r = x;
    if (s & 64)
        r = steps(x, 6) + 1;
    return r ^ s;
}

/* a counted loop whose start the caller sets (mov esi, 5; call rounds; sub esi, 1; jne) */
__attribute__((noipa)) unsigned long rounds(unsigned long x, int n)
{
    do {
        x = (x << 7) ^ (x >> 3) ^ table[2];
    } while (--n);
    return x;
}

__attribute__((noipa)) unsigned long leaf(unsigned long x)
{
    return (x ^ (x >> 13)) * 0x2545F4914F6CDD1DUL;
}

__attribute__((noipa)) unsigned long outer(unsigned long x)
{
    return looper(x ^ 0x55) + 1;
}

__attribute__((noipa)) unsigned long one_arm(unsigned long s, unsigned long x)
{
    unsigned long r = x;
    if (s & 1)
        r = looper(x) + 3;
    return r ^ s;
}

__attribute__((noipa)) unsigned long by_caller(unsigned long s, unsigned long x)
{
    unsigned long r = x + 1;
    if (s & 2)
        r = rounds(x, 5);
    return r - s;
}

__attribute__((noipa)) unsigned long two_arms(unsigned long s, unsigned long x)
{
    unsigned long r;
    if (s & 4)
        r = looper(x);
    else
        r = rounds(x, 3);
    return r + s;
}

__attribute__((noipa)) unsigned long call_in_loop(unsigned long s, unsigned long x)
{
    unsigned long r = x;
    if (s & 8) {
#pragma GCC unroll 1
        for (int i = 0; i < 4; i++)
            r = leaf(r) + i;
    }
    return r ^ s;
}

__attribute__((noipa)) unsigned long nested(unsigned long s, unsigned long x)
{
    unsigned long r = x;
    if (s & 16)
        r = outer(x) * 3;
    return r ^ s;
}

__attribute__((noipa)) unsigned long loop_of_loops(unsigned long s, unsigned long x)
{
    unsigned long r = x;
    if (s & 32) {
#pragma GCC unroll 1
        for (int i = 0; i < 3; i++)
            r = looper(r) ^ i;
    }
    return r + s;
}

int main(int argc, char **argv)
{
    (void)argv;
    unsigned long a = (unsigned long)argc;
    return (int)(one_arm(a, a) + by_caller(a, a) + two_arms(a, a) + call_in_loop(a, a)
                 + nested(a, a) + loop_of_loops(a, a) + by_end(a, a));
}
"""
FUNCTIONS = {"one_arm": 1, "by_caller": 2, "two_arms": 4, "call_in_loop": 8, "nested": 16,
             "loop_of_loops": 32, "by_end": 64}  # function -> the secret bit of rdi
LOOPS = {"one_arm": 1, "by_caller": 1, "two_arms": 2, "call_in_loop": 1, "nested": 1,
         "loop_of_loops": 2, "by_end": 1}  # hardened loops in the region's code


@pytest.fixture(scope="module", params=["static", "static-pie"])
def program(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Image:
    return build(tmp_path_factory.mktemp(f"loop-calls-{request.param}"), "loop_calls", SOURCE,
                 request.param)


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_loops_with_calls_compute_what_the_original_computes(program: Image,
                                                             function: str) -> None:
    check, rewrite = clone_check(program, function)
    code = rewrite.code or ()
    labels = [line for line in code if line.startswith("arm_loop") and line.endswith(":")
              and not line.startswith("arm_loop_more")]
    assert len(labels) == LOOPS[function], labels
    assert not any(line.startswith("call") for line in code)
    bit = FUNCTIONS[function]
    check_secret_bit(check, "loop-calls", function, bit, STATES)


@pytest.mark.parametrize("function", ["by_caller", "by_end", "call_in_loop", "loop_of_loops"])
def test_both_paths_run_the_same_instructions_and_lines(program: Image, function: str) -> None:
    check, _ = clone_check(program, function)
    bit = FUNCTIONS[function]
    check_path_hidden(check, f"loop-calls-leak:{function}", bit)


# -- refusals ------------------------------------------------------------------------------

CALLEE = 0x20000


def _refusal(lines: list[str], callee: list[str]) -> str:
    result = harden(PASS, view_from_asm(lines, callees={CALLEE: callee}))
    assert isinstance(result, Refusal), result
    return result.reason


ARM = ["test dil, 1", "je join"]  # 0x10000 .. 0x10006
REFUSALS = {  # case -> (region lines, callee lines, the exact reason)
    "register-start": (
        [*ARM, "lea esi, [rdx + 1]", f"call {CALLEE:#x}", "join:", "ret"],
        ["top:", "add rax, 3", "sub esi, 1", "jne top", "ret"],
        "the function at 0x20000 has a loop: 'jne 0x20000' at 0x20007 jumps back to 0x20000, "
        "the loop's head; its counter rsi is set by 'lea esi, [rdx + 1]' at 0x10006, not to a "
        "constant known before the loop runs: its trip count need not be the same when its "
        "arm is off"),
    "copied-register": (
        [*ARM, "mov esi, edx", f"call {CALLEE:#x}", "join:", "ret"],
        ["top:", "add rax, 3", "sub esi, 1", "jne top", "ret"],
        "its counter rsi is set on no path into the loop (no block before 0x10000 sets it)"),
    "end-register": (
        [*ARM, "mov ecx, dword ptr [rip + 0x100]", f"call {CALLEE:#x}", "join:", "ret"],
        ["xor eax, eax", "top:", "add rdx, 3", "add rax, 1", "cmp rcx, rax", "jne top", "ret"],
        "its end rcx is set by 'mov ecx, dword ptr [rip + 0x100]' at 0x10006, not to a "
        "constant known before the loop runs"),
    "not-counted": (
        [*ARM, f"call {CALLEE:#x}", "join:", "ret"],
        ["top:", "add rax, 1", "test al, 7", "jne top", "ret"],
        "the function at 0x20000 has a loop: 'jne 0x20000' at 0x20006 jumps back to 0x20000, "
        "the loop's head; it is not a counted loop (a 32/64-bit register set to a constant "
        "before it, stepped by a constant once per iteration in its header or latch, which "
        "ends with a conditional jump on that step's flags or on a `cmp`/`test` of it after "
        "the step): its trip count need not be public when its arm is off"),
    "two-paths": (
        [*ARM, f"call {CALLEE:#x}", "join:", "ret"],
        ["mov ecx, 3", "test rsi, rsi", "je pre", "mov ecx, 5", "pre:", "nop", "top:",
         "add rax, 1", "dec ecx", "jne top", "ret"],
        "the function at 0x20000 has a loop: 'jne 0x20010' at 0x20016 jumps back to 0x20010, "
        "the loop's head; its counter rcx is not set to a constant on the one path into the "
        "loop (0x2000f has 2 predecessors): its trip count need not be the same when its arm "
        "is off"),
    "callee-writes-counter": (
        [*ARM, "mov ecx, 4", "top:", f"call {CALLEE:#x}", "sub ecx, 1", "jne top", "join:",
         "ret"],
        ["mov ecx, 1", "ret"],
        "the region contains a loop (a cycle through its blocks): 'jne 0x1000b' at 0x10013 "
        "jumps back to 0x1000b, the loop's head; it is not a counted loop"),
    "negative-start": (
        [*ARM, "mov ecx, 0x80000000", "top:", "add rax, 3", "sub ecx, 1", "jne top", "join:",
         "ret"],
        ["ret"],
        "its counter rcx starts at 0x80000000, outside 0 .. 2**31 - 1"),
    "shared-latch": (
        [*ARM, "jmp h2", "h1:", "add rax, 1", "l:", "dec ecx", "jne h1", "h2:", "mov ecx, 4",
         "jmp h1", "join:", "ret"],
        ["ret"],
        "jumps back to 0x10010, the loop's head; its latch also ends the loop at 0x10008"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_loops_that_are_not_run_are_refused_with_the_reason(case: str) -> None:
    lines, callee, message = REFUSALS[case]
    reason = _refusal(lines, callee)
    assert message in reason, reason


def test_the_same_shapes_with_a_constant_start_are_accepted() -> None:
    """The caller's ``mov esi, 5``, on the one path into the callee's loop; a callee that
    leaves the arm loop's counter alone."""
    for lines, callee in (
            ([*ARM, "mov esi, 5", f"call {CALLEE:#x}", "join:", "ret"],
             ["top:", "add rax, 3", "sub esi, 1", "jne top", "ret"]),
            ([*ARM, "mov ecx, 4", "top:", f"call {CALLEE:#x}", "sub ecx, 1", "jne top",
              "join:", "ret"],
             ["add rax, 1", "ret"])):
        result = harden(PASS, view_from_asm(lines, callees={CALLEE: callee}))
        assert isinstance(result, Rewrite), result
        assert any(line.startswith("sub qword ptr") and line.endswith(", 1")
                   for line in result.code or ()), result.code


def test_expand_calls_refuses_a_looping_callee_by_default() -> None:
    """Clones stay acyclic for clients that do not run loops (bounded-loop)."""
    view = view_from_asm([*ARM, "mov esi, 5", f"call {CALLEE:#x}", "join:", "ret"],
                         callees={CALLEE: ["top:", "add rax, 3", "sub esi, 1", "jne top",
                                           "ret"]})
    with pytest.raises(Refused, match=r"the function at 0x20000 has a loop \('jne 0x20000' at "
                                      r"0x20007 jumps back to 0x20000\): loops in callees are "
                                      r"not cloned"):
        expand_calls(view, list(view.blocks))
    graph = expand_calls(view, list(view.blocks), loops=True)
    assert graph.cyclic


# -- the stack-protector canary (fs:[0x28]) -----------------------------------------------

CANARY_SOURCE = r"""
__attribute__((noipa)) unsigned long canary(void)
{
    unsigned long c;
    __asm__ volatile("mov %%fs:0x28, %0" : "=r"(c));
    return c;
}

/* the canary read in a secret arm, and in a callee called from the other arm */
__attribute__((noipa)) unsigned long tagged(unsigned long s, unsigned long x)
{
    unsigned long r = x;
    if (s & 1) {
        unsigned long c;
        __asm__ volatile("mov %%fs:0x28, %0" : "=r"(c));
        r = x ^ c;
    } else {
        r = canary() + 7;
    }
    return r * 3;
}

int main(int argc, char **argv)
{
    (void)argv;
    return (int)tagged((unsigned long)argc, 5);
}
"""


@pytest.fixture(scope="module")
def canary_program(tmp_path_factory: pytest.TempPathFactory) -> Image:
    return build(tmp_path_factory.mktemp("canary"), "canary", CANARY_SOURCE)


def test_a_canary_read_in_an_arm_and_in_a_clone_computes_what_the_original_does(
        canary_program: Image) -> None:
    check, rewrite = clone_check(canary_program, "tagged")
    reads = [line for line in rewrite.code or () if line.startswith(".insn")]
    assert reads and not any(line.startswith("call") for line in rewrite.code or ())
    with check:
        report = check.check(f"canary:{i}" for i in range(STATES))
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared == STATES


CANARY_REFUSALS = {  # the access, where the arm reads it: the refusal's end
    "fs:[rsi + 0x28]": "it is relative to fs: (not redirected)",
    "fs:[0x100]": "it has no base register to redirect",
}


@pytest.mark.parametrize("operand", sorted(CANARY_REFUSALS))
def test_other_fs_reads_in_an_arm_are_still_refused(operand: str) -> None:
    result = harden(PASS, view_from_asm([*ARM, f"mov rax, qword ptr {operand}", "join:",
                                         "ret"]))
    assert isinstance(result, Refusal), result
    assert result.reason.endswith(CANARY_REFUSALS[operand]), result.reason
    accepted = harden(PASS, view_from_asm([*ARM, "mov rax, qword ptr fs:[0x28]", "join:",
                                           "ret"]))
    assert isinstance(accepted, Rewrite), accepted


def test_other_fs_reads_in_a_clone_are_still_refused() -> None:
    lines = [*ARM, f"call {CALLEE:#x}", "join:", "ret"]
    for operand in ("fs:[rsi + 0x28]", "fs:[0x40]"):
        reason = _refusal(lines, [f"mov rax, qword ptr {operand}", "ret"])
        assert reason.endswith("its address is neither the clone's own stack nor module "
                               "data, so it may fault when the predicate is off"), reason
    result = harden(PASS, view_from_asm(lines, callees={
        CALLEE: ["mov rax, qword ptr fs:[0x28]", "ret"]}))
    assert isinstance(result, Rewrite), result
