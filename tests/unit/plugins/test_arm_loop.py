"""If-conversion of a branch region whose arm holds a counted loop (plugins/support/arm_loop.py):
the loop runs its trip count, read from its code, whatever the secret; each iteration's
blocks are predicated by the arm's predicate and the loop's active mask.

Differential runs in raw Unicorn (tests/unit/dbt/harness.py): the copy against the original
on hundreds of random states, both arms taken often.  And the copy's instructions and cache
lines are the same for both values of the secret branch.  Loops whose trip count is not read
from the code are refused, naming the loop's head.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from leakdbt.dbt.region import CodeRegion
from leakdbt.loader.image import Image
from leakdbt.plugin_api import Refusal, Rewrite
from plugins.if_conversion import PASS as IF_CONVERSION
from tests.unit.dbt.harness import RegionCheck, Sandbox
from tests.unit.plugins.ifc_support import (
    BASE,
    build,
    check_path_hidden,
    harden,
    region_of,
    sandbox_for,
    translate,
    view_from_asm,
    view_of,
)

STATES = 300

SOURCE = r"""
unsigned long table[16];

/* a down-counted loop in one arm (gcc: mov edx, 8 ... sub edx, 1; jne) */
__attribute__((noipa)) unsigned long mix(unsigned long s, unsigned long b)
{
    unsigned long r = s >> 3;
    if (s & 1) {
        for (int i = 0; i < 8; i++)
            r = r * b + (r >> 7);
    }
    return r ^ s;
}

/* an up-counted loop whose counter the body reads, in the else arm, a diamond */
__attribute__((noipa)) unsigned long walk(unsigned long s, unsigned long b)
{
    unsigned long r;
    if (s & 2) {
        r = b * 5;
    } else {
        r = b;
        for (unsigned long i = 0; i < 13; i++)
            r = (r << 1) ^ (i * b) ^ (r >> 11);
    }
    return r + s;
}

/* a loop with an early exit on the data and a store to module data in its body */
__attribute__((noipa)) unsigned long early(unsigned long s, unsigned long b)
{
    unsigned long r = b;
    if (s & 4) {
        for (int i = 0; i < 6; i++) {
            r = r * 3 + 1;
            table[3] = r;
            if ((r & 15) == 7)
                break;
        }
    }
    return r - s;
}

/* the trip count is an argument: refused */
__attribute__((noipa)) unsigned long counted_by_n(unsigned long s, unsigned long b,
                                                    unsigned long n)
{
    unsigned long r = 1;
    if (s & 1) {
        for (unsigned long i = 0; i < n; i++)
            r = r * b + i;
    }
    return r ^ s;
}

int main(void)
{
    return (int)(mix(1, 2) + walk(1, 2) + early(4, 2) + counted_by_n(1, 2, 3));
}
"""
FUNCTIONS = {"mix": 1, "walk": 2, "early": 4}  # function -> the secret bit of rdi


@pytest.fixture(scope="module", params=["static", "static-pie"])
def program(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Image:
    directory: Path = tmp_path_factory.mktemp(f"arm-loop-{request.param}")
    return build(directory, "arm_loop", SOURCE, request.param)


def _check(program: Image, function: str) -> tuple[RegionCheck, Rewrite, CodeRegion]:
    sandbox: Sandbox = sandbox_for(program)
    region = region_of(program, function)
    rewrite = harden(IF_CONVERSION, view_of(region, sandbox.bias, "branch"))
    assert isinstance(rewrite, Rewrite), rewrite
    t = translate(sandbox, region, rewrite)
    return RegionCheck(sandbox, region, t, scratch_below_red_zone=True), rewrite, region


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_loop_in_an_arm_computes_what_the_original_computes(program: Image,
                                                            function: str) -> None:
    check, rewrite, _ = _check(program, function)
    code = rewrite.code or ()
    assert any(line.startswith("arm_loop") and line.endswith(":") for line in code), code
    seeds = [f"arm-loop:{function}:{i}" for i in range(STATES)]
    with check:
        report = check.check(seeds)
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared == STATES


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_both_arms_run_the_same_instructions_and_lines(program: Image, function: str) -> None:
    check, _, _ = _check(program, function)
    bit = FUNCTIONS[function]
    check_path_hidden(check, f"arm-loop-leak:{function}", bit)


def test_a_loop_counted_up_to_a_register_is_refused_naming_its_head(program: Image) -> None:
    sandbox = sandbox_for(program)
    region = region_of(program, "counted_by_n")
    refusal = harden(IF_CONVERSION, view_of(region, sandbox.bias, "branch"))
    assert isinstance(refusal, Refusal), refusal
    blocks = region.cfg.blocks
    header = next(b for b in sorted(region.blocks) if any(
        p in region.blocks and p >= b for p in blocks[b].preds))
    latch = blocks[max(p for p in blocks[header].preds if p in region.blocks)].last
    assert refusal.reason == (
        f"the region contains a loop (a cycle through its blocks): '{latch.text}' at "
        f"{latch.address + sandbox.bias:#x} jumps back to {header + sandbox.bias:#x}, the "
        "loop's head; its end rdx is set on no path into the loop (no block before "
        f"{region.entry + sandbox.bias:#x} sets it): its trip count need not be the same when "
        "its arm is off")


def _at(n: int) -> str:
    return f"{BASE + n:#x}"


HEAD = "the region contains a loop (a cycle through its blocks): "
REFUSALS = {
    "two-latches": (
        ["test dil, 1", "je join", "mov ecx, 4", "top:", "add rax, 1", "test al, 1", "jne top",
         "sub ecx, 1", "jne top", "join:", "ret"],
        "jumps back to 0x1000b, the loop's head; it has 2 back edges (from 0x1000b, "
        "0x10013): a counted loop has one latch"),
    # (a loop whose head is the region's entry is an iteration region now, which
    # if-conversion runs: tests/unit/plugins/test_iteration_region.py)
    "two-preheaders": (
        ["test dil, 1", "je other", "mov ecx, 4", "jmp top", "other:", "test sil, 1",
         "je join", "mov ecx, 4", "top:", "add rax, 1", "sub ecx, 1", "jne top", "join:",
         "ret"],
        "the loop's head; it is entered from more than one block (its counter's start is "
        "read from its one preheader)"),
    "uncounted": (
        ["test dil, 1", "je join", "top:", "add rax, 1", "test al, 7", "jne top", "join:",
         "ret"],
        "'jne 0x10006' at 0x1000c jumps back to 0x10006, the loop's head; it is not a counted "
        "loop"),
    "register-start": (
        ["test dil, 1", "je join", "top:", "dec rsi", "jne top", "join:", "ret"],
        "'jne 0x10006' at 0x10009 jumps back to 0x10006, the loop's head; its counter rsi is "
        "set on no path into the loop (no block before 0x10000 sets it): its trip count need "
        "not be the same when its arm is off"),
    "counter-written-twice": (
        ["test dil, 1", "je join", "mov ecx, 4", "top:", "add ecx, eax", "sub ecx, 1",
         "jne top", "join:", "ret"],
        "it is not a counted loop"),
    "too-many": (
        ["test dil, 1", "je join", "mov ecx, 0x20000", "top:", "add rax, 3", "sub ecx, 1",
         "jne top", "join:", "ret"],
        "the loop's head; it runs 131072 times, more than 65536"),
    "irreducible": (
        ["test dil, 1", "je b", "a:", "add rax, 1", "test al, 4", "je join", "b:",
         "add rax, 2", "test al, 8", "jne a", "join:", "ret"],
        "the cycle is entered at more than one block (irreducible flow)"),
    "moves-rsp": (  # a loop body that moves rsp runs only when each iteration puts it back
        ["test dil, 1", "je join", "mov ecx, 4", "top:", "push rax", "sub ecx, 1", "jne top",
         "join:", "ret"],
        "rsp differs between the paths into 0x1000b (0 and 8 bytes below the region's)"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_loops_if_conversion_does_not_run_are_refused_with_the_reason(case: str) -> None:
    lines, message = REFUSALS[case]
    result = harden(IF_CONVERSION, view_from_asm(lines))
    assert isinstance(result, Refusal), result
    if case != "moves-rsp":
        assert result.reason.startswith(HEAD), result.reason
    assert message in result.reason, result.reason


def test_a_counted_loop_in_asm_is_accepted() -> None:
    """The same shapes with one counter, stepped once, from one preheader: accepted."""
    for lines in (["test dil, 1", "je join", "mov ecx, 4", "top:", "add rax, 3", "sub ecx, 1",
                   "jne top", "join:", "ret"],
                  ["test dil, 1", "je join", "xor ecx, ecx", "top:", "add rax, rcx",
                   "add rcx, 1", "cmp rcx, 9", "jne top", "join:", "ret"],
                  ["test dil, 1", "je join", "mov edx, 6", "jmp cnt", "top:", "add rax, 3",
                   "test al, 7", "je join", "cnt:", "sub edx, 1", "jne top", "join:", "ret"]):
        result = harden(IF_CONVERSION, view_from_asm(lines))
        assert isinstance(result, Rewrite), (lines, result)
        assert any(line.startswith("sub qword ptr") and line.endswith(", 1")
                   for line in result.code or ()), result.code
