"""plugins.if_conversion: conditional blocks that move RSP (gcc -O2's shrink-wrapped
``push rbx`` ... ``pop rbx`` inside an arm, ``sub rsp, N`` ... ``add rsp, N``, pushes of
immediates and memory, nested pushes, a push before a call).  Hardened regions compute what
the originals compute (differential runs in raw Unicorn on random states, both paths; the
stack below RSP is compared down to the red zone, so a push of an inactive arm that was not
undone shows), run the same instructions and touch the same lines whatever the secret, and
the refusals name their reason."""

from __future__ import annotations

import pytest

from leakdbt.loader.image import Image
from leakdbt.plugin_api import Refusal, Rewrite
from plugins.if_conversion import PASS
from tests.unit.dbt.harness import STACK, RegionCheck, State
from tests.unit.plugins.ifc_support import (
    REG,
    build,
    cfg_of,
    clone_check,
    harden,
    region_of,
    state,
    trace,
    view_from_asm,
)

# C functions gcc -O2 shrink-wraps (the push of a callee-saved register only in the arm
# that calls; ``noipa`` keeps gcc from knowing which registers the callee leaves alone),
# and hand-written regions in top-level asm.
SOURCE = r"""
__attribute__((noipa)) long mix(long a) { return a * 3 + 1; }
__attribute__((noipa)) long sum4(long a) {
    long s = 0;
    for (int i = 0; i < 24; i++) s = s * 3 + (a >> i);  /* a counted loop, not unrolled */
    return s;
}
__attribute__((noinline)) long sw_ret(long x, long y) {
    if (x & 1) {
        long t = mix(y);
        return t + y * 5;
    }
    return x - 1;
}
__attribute__((noinline)) long sw_loop(long x, long y) {
    if (x & 1) {
        long t = sum4(y);
        return t + y * 5;
    }
    return x - 1;
}
__asm__(
    ".intel_syntax noprefix\n"
    /* a leaf: the red zone is live on the path that does not push */
    ".globl asm_push\n"
    ".type asm_push, @function\n"
    "asm_push:\n"
    "  mov qword ptr [rsp - 8], rdi\n"
    "  mov qword ptr [rsp - 16], rsi\n"
    "  test dl, 1\n"
    "  je 1f\n"
    "  push rbx\n"
    "  lea rbx, [rsi + rdi]\n"
    "  mov qword ptr [rsp - 8], rbx\n"
    "  add rbx, qword ptr [rsp + 8]\n"
    "  mov rax, rbx\n"
    "  pop rbx\n"
    "  jmp 2f\n"
    "1:\n"
    "  mov rax, qword ptr [rsp - 8]\n"
    "  add rax, qword ptr [rsp - 16]\n"
    "2:\n"
    "  add rax, qword ptr [rsp - 8]\n"
    "  xor rax, qword ptr [rsp - 16]\n"
    "  ret\n"
    ".size asm_push, .-asm_push\n"
    /* sub/add rsp in an arm: stores in its frame, flags set from RSP's value */
    ".globl asm_sub\n"
    ".type asm_sub, @function\n"
    "asm_sub:\n"
    "  test dil, 1\n"
    "  je 1f\n"
    "  sub rsp, 0x28\n"
    "  setp cl\n"
    "  mov qword ptr [rsp + 8], rsi\n"
    "  mov qword ptr [rsp + 0x10], rdx\n"
    "  mov rax, qword ptr [rsp + 8]\n"
    "  add rax, qword ptr [rsp + 0x10]\n"
    "  add rsp, 0x28\n"
    "  jmp 2f\n"
    "1:\n"
    "  mov rax, qword ptr [rsp - 0x18]\n"
    "  lea rcx, [rax + 1]\n"
    "2:\n"
    "  ret\n"
    ".size asm_sub, .-asm_sub\n"
    /* nested: a push in an arm, another in a nested arm; push of memory and immediate */
    ".globl asm_nested\n"
    ".type asm_nested, @function\n"
    "asm_nested:\n"
    "  test dil, 1\n"
    "  je 3f\n"
    "  push rbx\n"
    "  mov rbx, rsi\n"
    "  test dil, 2\n"
    "  je 1f\n"
    "  push r12\n"
    "  lea r12, [rbx + rdx]\n"
    "  mov rax, r12\n"
    "  push qword ptr [rsp + 8]\n"
    "  pop rcx\n"
    "  pop r12\n"
    "  jmp 2f\n"
    "1:\n"
    "  lea rax, [rbx + 7]\n"
    "  push 0x11\n"
    "  pop rcx\n"
    "2:\n"
    "  add rax, rcx\n"
    "  pop rbx\n"
    "  jmp 4f\n"
    "3:\n"
    "  mov rax, rdi\n"
    "4:\n"
    "  ret\n"
    ".size asm_nested, .-asm_nested\n"
    /* pop and push in the two arms of one region that returns from each */
    ".globl asm_epilogue\n"
    ".type asm_epilogue, @function\n"
    "asm_epilogue:\n"
    "  push rbx\n"
    "  mov rbx, rsi\n"
    "  test dil, 1\n"
    "  je 1f\n"
    "  lea rax, [rbx + rdx]\n"
    "  pop rbx\n"
    "  ret\n"
    "1:\n"
    "  push rdx\n"
    "  imul rax, rbx, 3\n"
    "  pop rdx\n"
    "  pop rbx\n"
    "  ret\n"
    ".size asm_epilogue, .-asm_epilogue\n"
    /* a counted loop in an arm that pushed; the loop body pushes and pops too */
    ".globl asm_loop\n"
    ".type asm_loop, @function\n"
    "asm_loop:\n"
    "  mov qword ptr [rsp - 16], rsi\n"
    "  mov rax, rdx\n"
    "  test dil, 1\n"
    "  je 2f\n"
    "  push rbx\n"
    "  mov rbx, rsi\n"
    "  mov ecx, 5\n"
    "1:\n"
    "  push rbx\n"
    "  imul rax, qword ptr [rsp], 3\n"
    "  add rbx, rax\n"
    "  pop rdx\n"
    "  sub ecx, 1\n"
    "  jne 1b\n"
    "  pop rbx\n"
    "2:\n"
    "  add rax, qword ptr [rsp - 16]\n"
    "  ret\n"
    ".size asm_loop, .-asm_loop\n"
    ".att_syntax prefix\n"
);
long asm_push(long, long, long);
long asm_sub(long, long, long);
long asm_nested(long, long, long);
long asm_epilogue(long, long, long);
long asm_loop(long, long, long);
int main(void) { return 0; }
"""

STATES = 300

# function -> (the register whose bits choose the path, the bits)
CASES: dict[str, tuple[str, int]] = {
    "sw_ret": ("rdi", 1),
    "sw_loop": ("rdi", 1),
    "asm_push": ("rdx", 1),
    "asm_sub": ("rdi", 1),
    "asm_nested": ("rdi", 3),
    "asm_epilogue": ("rdi", 1),
    "asm_loop": ("rdi", 1),
}


@pytest.fixture(scope="module", params=["static", "static-pie"])
def program(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Image:
    return build(tmp_path_factory.mktemp("arm_rsp"), "arm_rsp", SOURCE, request.param)


def _check(program: Image, function: str) -> tuple[RegionCheck, Rewrite]:
    """The function's branch region hardened, laid out with its callees' clones."""
    calls = function.startswith("sw_")  # a clone's call clobbers the red zone itself
    check, rewrite = clone_check(program, function, dead_below=0 if calls else 128)
    assert rewrite.code is not None
    return check, rewrite


@pytest.mark.parametrize("function", ["sw_ret", "sw_loop"])
def test_gcc_shrink_wraps_the_push_into_the_arm(program: Image, function: str) -> None:
    """The premise: the ``push rbx`` is in a conditional block, not the entry; sum4 (which
    sw_loop calls) keeps its loop."""
    region = region_of(program, function)
    entry = next(b for b in region.block_list() if b.start == region.entry)
    assert not any(i.mnemonic == "push" for i in entry.insns)
    assert any(i.mnemonic == "push" for b in region.block_list() for i in b.insns)
    cfg = cfg_of(program, "sum4")
    assert any(cfg.dominates(s, p) for s in cfg.blocks for p in cfg.blocks[s].preds)


@pytest.mark.parametrize("function", sorted(CASES))
def test_arms_that_move_rsp_compute_what_the_original_computes(program: Image,
                                                               function: str) -> None:
    reg, bits = CASES[function]
    check, _ = _check(program, function)
    seen: set[int] = set()

    def path(s: State) -> int:
        return s.gprs[REG[reg]] & bits

    with check:
        states = []
        for i in range(STATES):
            s = state(f"arm_rsp:{function}:{i}", **{reg: i % 4 | (i << 8)})
            seen.add(path(s))
            states.append((f"{function}:{i}", s))
        report = check.compare(states)
    assert report.compared == STATES, report
    assert not report.mismatches, report.mismatches[0]
    assert len(seen) == bits + 1  # every path was taken


def test_an_inactive_push_leaves_the_red_zone_value_the_other_path_reads(
        program: Image) -> None:
    """asm_push stores RDI at ``[rsp - 8]`` before its branch; the arm that does not run
    pushes RBX there.  On the other path the hardened region returns RDI + RSI (read back
    from the red zone) and leaves RDI in the red zone, as the original does: the inactive
    push was undone."""
    check, _ = _check(program, "asm_push")
    rax, rsp = REG["rax"], REG["rsp"]
    with check:
        for n in range(20):
            s = state(f"redzone:{n}", rdx=0, rdi=0x1111 * (n + 1), rsi=0x2222, rbx=0x5555)
            orig, copy = check.outcome(False, s), check.outcome(True, s)
            assert orig.gprs[rax] == copy.gprs[rax] == 0x1111 * (n + 1) + 0x2222
            at = orig.gprs[rsp] - 8 - STACK
            for side in (orig, copy):
                assert side.memory["stack"][at:at + 8] == (0x1111 * (n + 1)).to_bytes(8, "little")


def _values(function: str) -> tuple[int, ...]:
    reg, bits = CASES[function]
    return tuple(range(bits + 1))


@pytest.mark.parametrize("function", sorted(CASES))
def test_both_secret_values_run_the_same_instructions_and_lines(program: Image,
                                                                function: str) -> None:
    """Footprint: whatever the secret, the same instructions in the same order and the
    same 64-byte lines, read or written (a push of an inactive arm touches its stack line
    anyway, as does the undo)."""
    reg, _ = CASES[function]
    check, _ = _check(program, function)
    with check:
        for n in range(3):
            states = [state(f"arm_rsp:leak:{function}:{n}", **{reg: v})
                      for v in _values(function)]
            orig = [trace(check, s, copy=False) for s in states]
            copy = [trace(check, s, copy=True) for s in states]
            assert len(set(orig)) > 1  # the original's path shows
            assert len({c[0] for c in copy}) == 1  # same instructions, same order
            assert len({c[1] for c in copy}) == 1  # same lines, reads/writes, same order
            assert copy[0][0]


def _arm(*body: str) -> list[str]:
    """if (rdi & 1) { body } ; join: ret."""
    return ["test dil, 1", "je join", *body, "join:", "ret"]


REFUSALS: dict[str, tuple[list[str], str]] = {
    "mov-rsp": (_arm("mov rsp, rbp"), "'mov rsp, rbp' at 0x10006 writes rsp (conditional "
                "code may only move it by a fixed amount: push/pop of a 64-bit register, "
                "immediate or memory, add/sub rsp, imm, lea rsp, [rsp + d])"),
    "and-rsp": (_arm("and rsp, 0xfffffffffffffff0"),
                "'and rsp, 0xfffffffffffffff0' at 0x10006 writes rsp"),
    "push16": (_arm("push ax", "pop ax"), "'push ax' at 0x10006 writes rsp (conditional code"),
    "pushfq": (_arm("pushfq", "pop rax"), "'pushfq' at 0x10006 pushes or pops the flags in "
               "conditional code (not predicated)"),
    "popfq": (_arm("push rax", "popfq"), "'popfq' at 0x10007 pushes or pops the flags in "
              "conditional code (not predicated)"),
    "pop-mem": (_arm("push rax", "pop qword ptr [rsp + 8]"), "'pop qword ptr [rsp + 8]' at "
                "0x10007 pops into memory in conditional code (not predicated)"),
    "push-unbalanced": (_arm("push rbx"), "rsp differs between the paths into 0x10007 (0 and "
                        "8 bytes below the region's)"),
    "push-returns": (["test dil, 1", "je other", "push rbx", "ret", "other:", "ret"],
                     "rsp differs between the region's returns ('ret' at 0x10008)"),
    "push-exit": (["test dil, 1", "je 0x10100", "push rbx", "jmp 0x10100"],
                  "rsp differs between the paths that leave the region for 0x10100"),
    "push-loop": (["test dil, 1", "je join", "push rbx", "mov ecx, 4", "top:", "push rcx",
                   "pop rcx", "dec ecx", "jne top", "pop rbx", "join:", "ret"],
                  "jumps back to 0x1000c, the loop's head; it is not a counted loop"),
    "loop-unbalanced": (["test dil, 1", "je join", "mov ecx, 4", "top:", "push rcx",
                         "dec ecx", "jne top", "join:", "ret"],
                        "rsp differs between the paths into 0x1000b (0 and 8 bytes below"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_rsp_refusals_say_why(case: str) -> None:
    lines, message = REFUSALS[case]
    result = harden(PASS, view_from_asm(lines))
    assert isinstance(result, Refusal), result
    assert message in result.reason, result.reason


ACCEPTED: dict[str, list[str]] = {
    "push-pop": _arm("push rbx", "mov rbx, rsi", "add rax, rbx", "pop rbx"),
    "push-imm": _arm("push 5", "pop rcx"),
    "push-mem": _arm("push qword ptr [rsp + 8]", "pop rcx"),
    "sub-add": _arm("sub rsp, 0x18", "mov qword ptr [rsp], rsi", "add rsp, 0x18"),
    "pop-loop-push": _arm("add rsp, 8", "mov ecx, 4", "top:", "add rax, 3", "sub ecx, 1",
                          "jne top", "sub rsp, 8"),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_fixed_rsp_moves_are_accepted(case: str) -> None:
    result = harden(PASS, view_from_asm(ACCEPTED[case]))
    assert isinstance(result, Rewrite), result


def test_a_loop_in_an_arm_that_pushed_runs_as_a_counted_loop(program: Image) -> None:
    """asm_loop's loop (in the arm, after ``push rbx``; its body pushes and pops) runs its
    5 iterations whatever the secret (plugins/support/arm_loop.py), at the arm's depth."""
    _, rewrite = _check(program, "asm_loop")
    assert any(line.startswith("arm_loop") for line in rewrite.code or ())
    assert any(line.startswith("mov ") and line.endswith(", 0x5") for line in rewrite.code or ())


def test_a_push_of_an_inactive_arm_is_recorded_and_undone() -> None:
    """The push's implicit store at ``[rsp - 8]`` is recorded (its address and old value)
    before the push runs: the region has no other store."""
    result = harden(PASS, view_from_asm(_arm("push rbx", "pop rbx")))
    assert isinstance(result, Rewrite) and result.code is not None
    assert "lea rax, [rsp - 0x8]" in result.code

