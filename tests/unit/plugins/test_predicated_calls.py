"""Predicated calls (plugins/support/clone.py): a branch region whose arm calls a function is
if-converted with an inline, predicated clone of the callee.  Differential: original vs
hardened in raw Unicorn, clones included, predicate on and off; every refusal's message."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leakdbt.dbt.cfg import function_cfg
from leakdbt.dbt.harden import Callees, region_view
from leakdbt.dbt.region import CodeRegion, form_region
from leakdbt.dbt.relocate import relocate
from leakdbt.loader.elf import load_image
from leakdbt.loader.image import Image
from leakdbt.plugin_api import BlockView, Insn, Refusal, Rewrite
from leakdbt.x86.insn import decode_all
from plugins.ct_division import PASS as CT_DIVISION
from plugins.if_conversion import PASS
from plugins.support.clone import cloned_instructions
from tests.conftest import binary
from tests.unit.dbt.harness import RegionCheck, Sandbox
from tests.unit.plugins.ifc_support import build, harden, sandbox_for, state, trace, view_from_asm

SOURCE = r"""
long g_acc;
long g_last;

__attribute__((noinline)) long leaf(long x, long y)
{
    if (x > y) {
        g_acc += x;
        return x - y;
    }
    g_last = y;
    return y ^ x;
}

__attribute__((noinline)) long mid(long x, long y)
{
    long r = leaf(x, y);
    if (r & 4)
        return r * 3 + leaf(y, r);
    return r + 1;
}

__attribute__((noipa)) long calls(long s, long x, long y)
{
    long r = x;
    if (s & 1)
        r = mid(x, y) + y;
    return r * 5;
}

int main(int argc, char **argv)
{
    (void)argv;
    return (int)calls(argc, argc + 1, argc + 2);
}
"""


def _check(image: Image, region: CodeRegion, composed: bool) -> RegionCheck:
    """The region hardened by if-conversion (and ct-division when ``composed``), laid out
    in a sandbox: a RegionCheck that ignores the dead stack below RSP (a call clobbers it)."""
    sb: Sandbox = sandbox_for(image)
    callees = Callees(image)
    view = region_view(region, "branch", sb.bias, {}, None, image, callees)
    rewrite = harden(PASS, view)
    assert isinstance(rewrite, Rewrite), rewrite
    replace = {}
    if composed:
        divisions = CT_DIVISION.harden(view, None, None)  # type: ignore[arg-type]
        assert isinstance(divisions, Rewrite) and divisions.replace
        replace = dict(divisions.replace)
    t = relocate(region, sb.bias, sb.place, replace, rewrite.code, callees.instructions())
    return RegionCheck(sb, region, t, scratch_below_red_zone=True, dead_below=0)


def _umod_region() -> tuple[Image, CodeRegion]:
    """test_binaries/umod_modexp's secret branch: ``bt r13, rbp; mov rsi, rdx; jae join``,
    arm ``mul r12; ...; call __umodti3``."""
    image = load_image(binary("static", "umod_modexp"))
    sym = image.symbol("modexp")
    assert sym is not None
    at = sym.value + 0x46
    return image, form_region(function_cfg(image, sym, extra_leaders=[at]), at, "modexp+0x46")


@pytest.fixture(scope="module")
def umod(built: Path) -> tuple[Image, CodeRegion]:
    return _umod_region()


@pytest.fixture(scope="module")
def umod_check(umod: tuple[Image, CodeRegion]) -> RegionCheck:
    return _check(*umod, composed=True)


def _umod_state(seed: str, bit: int, r: int, b: int, m: int) -> object:
    """rbp's bit 5 is the exponent bit the branch tests (r13 = 5); rcx = r, r12 = b, rbx =
    m: the multiply's operands."""
    return state(seed, rbp=(0x1234 & ~0x20) | (bit << 5), r13=5, rax=r, rdx=r, r12=b, rbx=m)


@pytest.mark.parametrize("composed", [False, True], ids=["if-conversion", "with-ct-division"])
def test_umodti3_call_in_the_secret_arm_computes_what_the_original_does(
        umod: tuple[Image, CodeRegion], composed: bool) -> None:
    image, region = umod
    check = _check(image, region, composed)
    with check:
        report = check.check(f"umod:{i}" for i in range(120))
        chosen = check.compare(
            (f"umod-bit:{i}", _umod_state(f"umod-bit:{i}", i & 1, 0x9E37_79B9_7F4A_7C15 + i,
                                          65537 + i, 2**64 - 59 - (i >> 1)))
            for i in range(80))
    assert not report.mismatches, report.mismatches[:2]
    assert not chosen.mismatches, chosen.mismatches[:2]
    assert report.compared >= 110 and chosen.compared == 80


def test_umodti3_clone_runs_and_touches_the_same_whatever_the_bit(
        umod: tuple[Image, CodeRegion]) -> None:
    image, region = umod
    check = _check(image, region, composed=True)
    with check:
        states = [_umod_state("leak", bit, 0x1234_5678_9ABC_DEF0, 3, 2**64 - 59)
                  for bit in (0, 1)]
        orig = [trace(check, s, copy=False) for s in states]  # type: ignore[arg-type]
        copy = [trace(check, s, copy=True) for s in states]  # type: ignore[arg-type]
    assert orig[0][0] != orig[1][0]  # the original calls __umodti3 only when the bit is set
    assert copy[0][0] == copy[1][0] and copy[0][0]  # the same instructions
    assert copy[0][1] == copy[1][1]  # the same cache lines, reads and writes, in order


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bit=st.integers(0, 1), r=st.integers(0, 2**64 - 1), b=st.integers(0, 2**64 - 1),
       m=st.integers(1, 2**64 - 1), flags=st.integers(0, 0xFFF))
def test_umodti3_clone_agrees_on_any_operands(umod_check: RegionCheck, bit: int,
                                              r: int, b: int, m: int, flags: int) -> None:
    check = umod_check
    s = dataclasses.replace(_umod_state("hyp", bit, r, b, m),  # type: ignore[type-var]
                            rflags=0x2 | (flags & 0x8D5))
    with check:
        report = check.compare([("hyp", s)])  # type: ignore[list-item]
    assert report.compared == 1 and not report.mismatches, report.mismatches


@pytest.fixture(scope="module")
def nested(tmp_path_factory: pytest.TempPathFactory) -> tuple[Image, CodeRegion]:
    image = build(tmp_path_factory.mktemp("calls"), "calls", SOURCE)
    sym = image.symbol("calls")
    assert sym is not None
    cfg = function_cfg(image, sym)
    branch = next(a for a in sorted(cfg.blocks) if cfg.blocks[a].last.mnemonic.startswith("j")
                  and cfg.blocks[a].last.mnemonic != "jmp")
    return image, form_region(cfg, branch, "calls-branch", branch=True)


def test_nested_calls_with_global_stores_and_several_returns(
        nested: tuple[Image, CodeRegion]) -> None:
    """calls -> mid -> leaf twice (two clones of leaf), stores to globals in leaf."""
    image, region = nested
    check = _check(image, region, composed=False)
    calls = [i for b in region.block_list() for i in b.insns if i.mnemonic == "call"]
    assert len(calls) == 1 and image.symbolize(calls[0].target or 0) == "mid"
    with check:
        report = check.check(f"nested:{i}" for i in range(150))
        odd = check.compare((f"nested-odd:{i}", state(f"nested-odd:{i}", rdi=i, rsi=i * 7 - 300,
                                                       rdx=(i * 13) % 50 - 20))
                            for i in range(100))
    assert not report.mismatches, report.mismatches[:2]
    assert not odd.mismatches, odd.mismatches[:2]
    assert report.compared >= 140 and odd.compared == 100


# -- refusals ------------------------------------------------------------------------------

CALLEE = 0x20000
INNER = 0x30000


def _arm_call(*extra: str) -> list[str]:
    """if (rdi & 1) { call CALLEE; extra }; join: ret."""
    return ["test dil, 1", "je join", f"call {CALLEE:#x}", *extra, "join:", "ret"]


REFUSALS = {  # case -> (callee lines, or None for none; params; message)
    "undecodable": (None, {}, "calls 0x20000, which is not a function the translator can "
                    "decode"),
    "plt": (["jmp qword ptr [rip + 0x1000]"], {},
            "calls the function at 0x20000 through 'jmp qword ptr [rip + 0x1000]' at 0x20000, "
            "whose target cannot be resolved: only the translator resolves it, while the "
            "program runs"),
    "table-jump": (["test rsi, rsi", "je out", "jmp rax", "out:", "ret"], {},
                   "the function at 0x20000 leaves through 'jmp rax' at 0x20005 (an indirect "
                   "jump: a jump table or a tail call through a pointer), which is not cloned"),
    "depth": ([f"call {INNER:#x}", "ret"], {"clone_depth": 1},
              "the call is nested deeper than the clone budget (clone_depth = 1)"),
    "none": (["ret"], {"clone_depth": 0},
             "the call is nested deeper than the clone budget (clone_depth = 0)"),
    "recursion": ([f"call {CALLEE:#x}", "ret"], {}, "calls itself (recursion is not cloned)"),
    "size": (["inc rax"] * 20 + ["ret"], {"clone_insns": 10},
             "would run more than 10 instructions (clone_insns)"),
    "loop": (["top:", "dec rsi", "jne top", "ret"], {},
             "the function at 0x20000 has a loop: 'jne 0x20000' at 0x20003 jumps back to "
             "0x20000, the loop's head; its counter rsi is set on no path into the loop"),
    "tail": (["test rsi, rsi", "je 0x50000", "ret"], {},
             "leaves the function at 0x20000 for 0x50000 (a tail call or a jump out of the "
             "function is not cloned)"),
    "dynamic-rsp": (["mov rsp, rbp", "ret"], {}, "changes rsp by an amount not known before "
                    "it runs"),
    "uneven": (["test rsi, rsi", "je skip", "push rbx", "skip:", "pop rbx", "ret"], {},
               "RSP differs between the paths into"),
    "unbalanced": (["push rbx", "ret"], {}, "returns with rsp -8 bytes away from its return "
                   "address"),
    "stack-args": (["mov rax, qword ptr [rsp + 8]", "ret"], {},
                   "accesses the caller's stack (stack arguments are not cloned)"),
    "pointer": (["mov rax, qword ptr [rdi]", "ret"], {},
                "its address is neither the clone's own stack nor module data, so it may fault "
                "when the predicate is off"),
    "syscall": (["syscall", "ret"], {}, "is a system call or software interrupt"),
    "dead-end": (["test rsi, rsi", "je out", "ud2", "out:", "ret"], {},
                 "'ud2' at 0x20005 ends the program's path in the function at 0x20000 (a dead "
                 "end in a callee is not cloned)"),
    "indirect-call": (["ret"], {"indirect": True}, "is an indirect call (its callee is known "
                      "only when it runs)"),
    "got-call": (["ret"], {"got": True}, "'call qword ptr [rip + 0x2000]' at 0x10006 is an "
                 "indirect call through a memory slot that cannot be resolved: only the "
                 "translator resolves it, while the program runs"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_call_refusals_say_why(case: str) -> None:
    callee, params, message = REFUSALS[case]
    lines = (["test dil, 1", "je join", "call rax", "join:", "ret"] if params.get("indirect")
             else ["test dil, 1", "je join", "call qword ptr [rip + 0x2000]", "join:", "ret"]
             if params.get("got") else _arm_call())
    functions = {} if callee is None else {CALLEE: callee, INNER: ["ret"]}
    budget = {k: v for k, v in params.items() if k not in ("indirect", "got")}
    result = harden(PASS, view_from_asm(lines, params=budget, callees=functions))
    assert isinstance(result, Refusal), result
    assert message in result.reason, result.reason


def test_a_callee_within_budget_is_cloned() -> None:
    """The same shapes the refusals start from, within budget: a rewrite, whose code
    stands for the callee's instructions and never calls."""
    result = harden(PASS, view_from_asm(_arm_call(), params={"clone_depth": 2},
                                        callees={CALLEE: [f"call {INNER:#x}", "ret"],
                                                 INNER: ["push rbx", "inc rbx", "pop rbx",
                                                         "ret"]}))
    assert isinstance(result, Rewrite) and result.code is not None
    assert ".insn 0x30001" in result.code  # inc rbx of the inner clone
    assert not any(line.startswith("call") for line in result.code)


def test_scratch_slots_follow_rsp_in_the_clone() -> None:
    """Inside a clone RSP is CLONE_BASE + 8 (+ pushes) below the region's: the predicate's
    slot is addressed above it, never in the callee's stack (below it)."""
    result = harden(PASS, view_from_asm(_arm_call(), callees={CALLEE: ["push rbx",
                                                                       "inc rbx", "pop rbx",
                                                                       "ret"]}))
    assert isinstance(result, Rewrite) and result.code is not None
    code = list(result.code)
    assert "lea rsp, [rsp - 0x1288]" in code  # entering the clone
    inside = code[code.index("lea rsp, [rsp - 0x1288]"):code.index("lea rsp, [rsp + 0x1288]")]
    assert any("[rsp + 0x" in line for line in inside)
    assert not any(line.startswith("mov") and "[rsp - 0x" in line for line in inside)


# -- calls through the GOT, and the budget -------------------------------------------------

def _resolving(lines: list[str], callees: dict[int, list[str]], slots: dict[int, int],
               params: dict[str, int | str | bool] | None = None,
               raw: dict[int, bytes] | None = None) -> Rewrite | Refusal:
    """if-conversion of ``lines`` whose ``jmp``/``call [rip + X]`` resolve through
    ``slots`` (X's address -> the function it is bound to), as the translator's linker
    resolves GOT slots (leakdbt.dbt.calls); ``raw``: callees given as machine code (one
    block each: Keystone spells neither ``endbr64`` nor ``bnd``)."""
    def resolve(insn: Insn) -> int | str:
        target = slots.get(insn.rip_target or -1)
        return "not a GOT slot" if target is None else target

    view = view_from_asm(lines, params=params, callees=callees)
    blocks = {a: (BlockView(a, tuple(decode_all(code, a)), ()),) for a, code in
              (raw or {}).items()}
    return harden(PASS, dataclasses.replace(
        view, resolve_indirect=resolve,
        callee=lambda a: blocks[a] if a in blocks else view.callee(a)))


@pytest.mark.parametrize(("stub", "slot"), [
    (bytes.fromhex("ff2500100000"), CALLEE + 6 + 0x1000),  # jmp [rip + 0x1000]
    (bytes.fromhex("f30f1efa f2ff2500100000"), CALLEE + 4 + 7 + 0x1000),  # endbr64; bnd jmp
], ids=["plt", "plt.sec"])
def test_a_plt_stub_is_cloned_as_the_function_its_slot_is_bound_to(stub: bytes,
                                                                   slot: int) -> None:
    """``call F@plt``, F@plt being ``jmp [rip + GOT]`` (``.plt``) or ``endbr64; bnd jmp
    [rip + GOT]`` (``.plt.sec``): the clone is F's, never the stub's."""
    inner = {INNER: ["push rbx", "inc rbx", "pop rbx", "ret"]}
    result = _resolving(_arm_call(), inner, {slot: INNER}, raw={CALLEE: stub})
    assert isinstance(result, Rewrite) and result.code is not None
    assert ".insn 0x30001" in result.code  # inc rbx, from the function the slot names
    assert not any(f".insn {CALLEE + i:#x}" in result.code for i in range(len(stub)))
    unresolved = _resolving(_arm_call(), inner, {}, raw={CALLEE: stub})
    assert isinstance(unresolved, Refusal)
    assert unresolved.reason.endswith("whose target cannot be resolved: not a GOT slot")


def test_a_call_through_the_got_is_cloned() -> None:
    """``call [rip + GOT]`` (-fno-plt): resolved, then cloned like a direct call."""
    lines = ["test dil, 1", "je join", "call qword ptr [rip + 0x2000]", "join:", "ret"]
    slot = 0x10006 + 6 + 0x2000
    result = _resolving(lines, {INNER: ["push rbx", "inc rbx", "pop rbx", "ret"]},
                        {slot: INNER})
    assert isinstance(result, Rewrite) and result.code is not None
    assert ".insn 0x30001" in result.code
    assert not any(line.startswith("call") for line in result.code)


def test_a_stub_that_jumps_to_nothing_decodable_is_refused() -> None:
    result = _resolving(_arm_call(), {CALLEE: ["jmp qword ptr [rip + 0x1000]"]},
                        {CALLEE + 6 + 0x1000: 0x50000})
    assert isinstance(result, Refusal)
    assert result.reason == ("'call 0x20000' at 0x10006 calls the PLT stub at 0x20000, which "
                             "jumps to 0x50000, not a function the translator can decode")


CHAIN = {CALLEE: [f"call {INNER:#x}", "ret"], INNER: ["call 0x50000", "ret"],
         0x50000: ["push rbx", "inc rbx", "pop rbx", "ret"]}


def test_a_raised_depth_budget_lets_a_deeper_call_be_cloned() -> None:
    """region -> CALLEE -> INNER -> 0x50000: three levels, over the default budget (2)."""
    refused = harden(PASS, view_from_asm(_arm_call(), callees=CHAIN))
    assert isinstance(refused, Refusal)
    assert refused.reason == ("'call 0x50000' at 0x30000: the call is nested deeper than the "
                              "clone budget (clone_depth = 2)")
    cloned = harden(PASS, view_from_asm(_arm_call(), params={"clone_depth": 3},
                                        callees=CHAIN))
    assert isinstance(cloned, Rewrite) and cloned.code is not None
    assert ".insn 0x50001" in cloned.code
    deep = view_from_asm(_arm_call(), params={"clone_depth": 3}, callees=CHAIN)
    assert 0x50001 in {i.address for i in cloned_instructions(deep)}  # ct-division sees it
    assert 0x50001 not in {i.address for i in cloned_instructions(
        view_from_asm(_arm_call(), callees=CHAIN))}
