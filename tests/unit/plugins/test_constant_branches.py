"""Clone branches decided by constants (plugins/support/constant_branches.py): the data flow
itself (meets, clobbers, widths, flags checked against Unicorn), the fold in
``expand_calls``, and differential runs of hardened regions whose arms call a callee with a
constant argument (``__umodti3`` with a 64-bit divisor, a mode flag), static and
static-pie, plus the footprint and the branches that must stay if-converted."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as x

from leakdbt.dbt.cfg import function_cfg
from leakdbt.dbt.harden import Callees, region_view
from leakdbt.dbt.region import CodeRegion, form_region
from leakdbt.loader.elf import load_image
from leakdbt.loader.image import Image
from leakdbt.plugin_api import Flow, RegionView
from leakdbt.x86.asm import AssemblyError, assemble_block
from plugins.support.clone import Graph, cloned_instructions, expand_calls
from plugins.support.constant_branches import Flags, Regs, analyse_graph, decide, run_block
from tests.conftest import binary
from tests.unit.dbt.harness import RegionCheck, State
from tests.unit.plugins.ifc_support import (
    blocks_from_asm,
    build,
    sandbox_for,
    state,
    trace,
    view_from_asm,
)
from tests.unit.plugins.test_predicated_calls import _check, _umod_state

BASE = 0x10000
CALLEE = 0x20000

# -- the data flow ---------------------------------------------------------------------------


def _facts(lines: list[str], fold_all: bool = True) -> tuple[dict[int, Regs], dict[int, int],
                                                              dict[str, int]]:
    """analyse_graph over ``lines`` (every block but the entry foldable when ``fold_all``):
    (facts by block, folded branches, labels -> block start)."""
    blocks = blocks_from_asm(lines, BASE)
    labels: dict[str, int] = {}
    insns = [i for b in blocks for i in b.insns]
    n = 0
    for line in lines:
        if line.endswith(":"):
            labels[line[:-1]] = insns[n].address
        else:
            n += 1
    foldable = [b.start for b in blocks if b.start != BASE] if fold_all else []
    result = analyse_graph(BASE, blocks, foldable)
    return result.facts, result.taken, labels


def _after(lines: list[str], regs: Regs | None = None) -> tuple[Regs, Flags | None]:
    """The registers and flags known after ``lines`` (one block) from ``regs``."""
    block = blocks_from_asm([*lines, "ret"], BASE)[0]
    return run_block(block, regs or {})


def test_the_meet_keeps_a_register_only_when_every_path_agrees() -> None:
    facts, _, at = _facts(["test dil, 1", "je other", "mov ecx, 5", "mov edx, 1", "jmp join",
                           "other:", "mov ecx, 5", "mov edx, 2", "join:", "ret"])
    assert facts[at["join"]] == {"rcx": 5}
    assert facts[at["other"]] == {}  # the region's entry starts with nothing known


def test_a_decided_branch_propagates_along_its_taken_edge_only() -> None:
    lines = ["test dil, 1", "je join", "xor ecx, ecx", "test rcx, rcx", "jne far",
             "mov edx, 3", "jmp join", "far:", "mov edx, 3", "mov esi, 9", "join:", "ret"]
    facts, taken, at = _facts(lines)
    assert at["far"] not in facts  # reached only through the untaken edge
    block = next(b for b in blocks_from_asm(lines, BASE) if b.last.mnemonic == "jne")
    assert taken == {block.start: block.last.next}  # jne not taken: the fall-through
    assert facts[at["join"]] == {}  # the entry's own edge brings rdx unknown
    not_folded, none, _ = _facts(lines, fold_all=False)
    assert not none and at["far"] in not_folded  # a region's own branch is never folded


def test_the_region_entry_starts_unknown_even_on_a_back_edge() -> None:
    facts, taken, at = _facts(["top:", "test dil, 1", "je next", "mov ecx, 5", "jmp top",
                               "next:", "test ecx, ecx", "jne out", "mov eax, 1", "out:",
                               "ret"])
    assert facts[BASE] == {} and facts[at["next"]] == {}  # not rcx = 5 from the back edge
    assert not taken


def test_loops_reach_a_fixpoint_and_a_changing_register_is_unknown() -> None:
    lines = ["test dil, 1", "je out", "mov ecx, 4", "mov edx, 7", "top:", "dec ecx",
             "cmp edx, 7", "jne out", "test ecx, ecx", "jne top", "out:", "ret"]
    facts, taken, at = _facts(lines)
    assert facts[at["top"]] == {"rdx": 7}  # rcx: 4 on entry, 3, ... on the back edge
    assert at["top"] in taken  # cmp edx, 7 / jne: never taken
    assert all(k != at["top"] + 9 for k in taken)  # test ecx, ecx / jne top: not decided


@pytest.mark.parametrize(("lines", "known"), [
    (["mov rax, 0xffffffffffffffff", "mov eax, 5"], {"rax": 5}),  # a 32-bit write zero-extends
    (["mov rax, 0xffffffffffffffff", "mov al, 5"], {"rax": 0xFFFF_FFFF_FFFF_FF05}),  # 8-bit: merged
    (["mov rax, 0x1122", "mov ah, 0x77"], {"rax": 0x7722}),
    (["mov ah, 1"], {}),  # merged into an unknown register
    (["mov cx, 0xfffe"], {}),
    (["xor r9d, r9d"], {"r9": 0}),  # zero whatever it held
    (["sub rbx, rbx", "mov rcx, rbx", "movabs rdx, 0x123456789"],
     {"rbx": 0, "rcx": 0, "rdx": 0x123456789}),
    (["mov eax, 0x80", "movsx rdx, al", "movzx esi, al", "movsxd rdi, eax"],
     {"rax": 0x80, "rdx": 2**64 - 0x80, "rsi": 0x80, "rdi": 0x80}),
    (["mov ecx, 3", "lea rdx, [rcx + rcx*4 + 2]", "lea rsi, [rdi + 1]"],
     {"rcx": 3, "rdx": 17}),
    (["mov ecx, 7", "mov rax, qword ptr [rdi]", "mov rcx, qword ptr [rsp + 8]"], {}),  # loads
    (["mov eax, 3", "mov edx, 1", "mul rbx"], {}),  # mul writes rax and rdx: unknown
    (["mov eax, 3", "mov ebx, 1", "pop rbx", "cmovne eax, edx"], {}),
    (["mov eax, 3", "mov esi, 2", "call 0x30000"], {}),  # a call: every register
    (["mov eax, 3", "mov esi, 2", "syscall"], {}),
    (["mov eax, 3", "div rcx"], {}),  # rax, rdx written by the division
    (["mov r8d, 6", "shl r8, cl", "mov r9d, 1", "setne r9b"], {}),
    (["mov eax, 6", "add eax, -6", "or rax, 0x10", "and eax, 0x13", "xor eax, 1",
      "inc eax", "dec rax", "dec rax"], {"rax": 0x10}),
    (["mov rsp, 8", "mov eax, 1"], {"rax": 1}),  # RSP is never tracked
])
def test_the_transfer_of_each_instruction(lines: list[str], known: Regs) -> None:
    regs, _ = _after(lines)
    assert regs == known


_FLAG_BITS = {"cf": 0, "pf": 2, "zf": 6, "sf": 7, "of": 11}
_WIDTH_REGS = {8: ("rax", "rbx"), 4: ("eax", "ebx"), 2: ("ax", "bx"), 1: ("al", "bl")}


def _unicorn_flags(code: bytes, rax: int, rbx: int) -> tuple[int, int]:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, code)
    uc.reg_write(x.UC_X86_REG_RAX, rax)
    uc.reg_write(x.UC_X86_REG_RBX, rbx)
    uc.emu_start(0x1000, 0x1000 + len(code))
    return uc.reg_read(x.UC_X86_REG_RAX), uc.reg_read(x.UC_X86_REG_EFLAGS)


def _spelt(head: str, imm: int, width: int) -> str:
    """``head, imm`` as Capstone prints it (signed or masked, by instruction)."""
    for value in (imm, imm & ((1 << 8 * width) - 1)):
        try:
            assemble_block([f"{head}, {value}"], 0x1000)
        except AssemblyError:
            continue
        return f"{head}, {value}"
    raise AssertionError(head)


@pytest.mark.parametrize("op", ["add", "sub", "cmp", "and", "or", "xor", "test", "inc", "dec"])
@pytest.mark.parametrize("width", [8, 4, 2, 1])
def test_flags_and_results_are_exactly_unicorns(op: str, width: int) -> None:
    """Random operands, register and immediate forms: the result and every flag the model
    says it knows are those the CPU (Unicorn) computes."""
    rng = random.Random(f"{op}{width}")
    a, b = _WIDTH_REGS[width]
    edges = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF_FFFF, 0x8000_0000, 2**63, 2**64 - 1]
    for n in range(60):
        va = rng.choice(edges) if n % 3 == 0 else rng.getrandbits(64)
        vb = rng.choice(edges) if n % 4 == 0 else rng.getrandbits(64)
        imm = rng.choice([0, 1, -1, 5, -128, 127])
        forms = [f"{op} {a}"] if op in ("inc", "dec") else [f"{op} {a}, {b}", _spelt(
            f"{op} {a}", imm, width)]
        for form in forms:
            lines = ["mov rax, rsi", "mov rbx, rdi", form]
            regs, flags = _after(lines, {"rsi": va, "rdi": vb})
            rax, eflags = _unicorn_flags(assemble_block([form], 0x1000), va, vb)
            assert regs.get("rax") == rax, form
            assert flags is not None and set(flags) >= {"zf", "sf", "pf", "of"}, form
            for flag, value in flags.items():
                assert value == (eflags >> _FLAG_BITS[flag]) & 1, (form, flag, va, vb)
            assert ("cf" in flags) == (op not in ("inc", "dec"))


def test_a_branch_is_decided_only_from_known_flags_it_reads() -> None:
    _, flags = _after(["mov ecx, 0", "test rcx, rcx"])
    assert decide("je", flags) is True and decide("jne", flags) is False
    _, flags = _after(["mov eax, 3", "cmp eax, 5"])
    assert (decide("jb", flags), decide("jl", flags), decide("jg", flags),
            decide("jbe", flags), decide("ja", flags)) == (True, True, False, True, False)
    _, flags = _after(["mov eax, 3", "inc eax"])
    assert decide("jb", flags) is None and decide("je", flags) is False  # inc leaves CF
    _, flags = _after(["mov eax, 3", "cmp eax, 3", "mov rdx, qword ptr [rdi]"])
    assert decide("je", flags) is True  # no flag write after the cmp
    _, flags = _after(["mov eax, 3", "cmp eax, 3", "shl rax, cl"])
    assert decide("je", flags) is None  # the last flag write is not modelled
    _, flags = _after(["mov edx, 5", "cmp rdx, rsi"])
    assert decide("je", flags) is None  # an operand is unknown
    _, flags = _after(["mov edx, 5", "cmp rdx, qword ptr [rsi]"])
    assert decide("je", flags) is None  # a load
    assert decide("je", None) is None


def test_flags_set_in_a_predecessor_are_not_used() -> None:
    facts, taken, at = _facts(["test dil, 1", "je out", "xor ecx, ecx", "test ecx, ecx",
                               "jmp next", "next:", "je out", "mov eax, 1", "out:", "ret"])
    assert at["next"] in facts and at["next"] not in taken


# -- the fold in expand_calls -----------------------------------------------------------------


def _graph(lines: list[str], callee: list[str]) -> tuple[RegionView, Graph]:
    view = view_from_asm(lines, callees={CALLEE: callee})
    return view, expand_calls(view, list(view.blocks), loops=True)


CALLEE_ON_RCX = ["test rcx, rcx", "jne big", "mov eax, 1", "ret", "big:", "mov eax, 2",
                 "mov qword ptr [rip + 0x100], rax", "ret"]


def _origins(graph: Graph) -> set[int]:
    return {graph.origin[k].start for k in graph.clones}


def test_a_callee_branch_on_a_constant_the_arm_passes_is_folded() -> None:
    view, graph = _graph(["test dil, 1", "je join", "xor ecx, ecx", f"call {CALLEE:#x}",
                          "join:", "ret"], CALLEE_ON_RCX)
    big = CALLEE + 3 + 2 + 5 + 1  # test, jne, mov eax, ret
    assert _origins(graph) == {CALLEE, CALLEE + 5}  # the untaken block is not cloned
    entry = next(b for b in graph.blocks if b.start in graph.clones
                 and graph.origin[b.start].start == CALLEE)
    assert entry.last.mnemonic == "jmp" and len(entry.successors) == 1
    assert graph.insns == 2  # test rcx, rcx; mov eax, 1
    assert big not in {i.address for i in cloned_instructions(view)}
    assert CALLEE + 5 in {i.address for i in cloned_instructions(view)}


@pytest.mark.parametrize("arm", [
    ["mov rcx, rsi"],  # an argument the arm does not set to a constant
    ["mov ecx, 0", "mov rcx, qword ptr [rsp - 8]"],  # a load
    ["xor ecx, ecx", "imul rcx, rsi"],  # a clobber of rcx
])
def test_a_callee_branch_on_a_non_constant_is_kept(arm: list[str]) -> None:
    _, graph = _graph(["test dil, 1", "je join", *arm, f"call {CALLEE:#x}", "join:", "ret"],
                      CALLEE_ON_RCX)
    assert len(_origins(graph)) == 3


def test_the_meet_runs_through_the_region_blocks_before_the_call() -> None:
    """Two region paths into the call: folded when both set rcx to 0, not when they differ."""
    def graph_of(second: str) -> Graph:
        return _graph(["test dil, 1", "je other", "xor ecx, ecx", "jmp site", "other:", second,
                       "site:", f"call {CALLEE:#x}", "ret"], CALLEE_ON_RCX)[1]
    assert len(_origins(graph_of("mov ecx, 0"))) == 2
    assert len(_origins(graph_of("mov ecx, 1"))) == 3


def test_a_second_instance_is_judged_on_its_own_call_site() -> None:
    _, graph = _graph(["test dil, 1", "je join", "xor ecx, ecx", f"call {CALLEE:#x}",
                       "mov rcx, rsi", f"call {CALLEE:#x}", "join:", "ret"], CALLEE_ON_RCX)
    assert len(graph.clones) == 2 + 3


# -- compiled programs: differential, footprint ------------------------------------------------

SOURCE = r"""
long g_a, g_b;

__attribute__((noipa)) long mode_op(long x, long y, int mode)
{
    if (mode == 2) {
        g_a = x;
        return x * y + 7;
    }
    if (mode) {
        g_b = y;
        return x - y;
    }
    return (x ^ y) + 1;
}

__attribute__((noipa)) long fixed_two(long s, long x, long y)
{
    long r = x;
    if (s & 1)
        r = mode_op(x, y, 2);
    return r * 3;
}

__attribute__((noipa)) long fixed_zero(long s, long x, long y)
{
    long r = x;
    if (s & 1)
        r = mode_op(x, y, 0);
    return r * 3;
}

__attribute__((noipa)) long free_mode(long s, long x, long y, int m)
{
    long r = x;
    if (s & 1)
        r = mode_op(x, y, m);
    return r * 3;
}

__attribute__((noipa)) long secret_mode(long s, long x, long y)
{
    long r = x;
    if (s & 1)
        r = mode_op(x, y, (int)(s >> 4));
    return r * 3;
}

int main(int argc, char **argv)
{
    (void)argv;
    return (int)(fixed_two(argc, 3, 4) + fixed_zero(argc, 5, 6) + free_mode(argc, 1, 2, argc)
                 + secret_mode(argc, 7, 8));
}
"""

CALLERS = ("fixed_two", "fixed_zero", "free_mode", "secret_mode")


@pytest.fixture(scope="module", params=["static", "static-pie"])
def modes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Image:
    return build(tmp_path_factory.mktemp("modes"), "modes", SOURCE, request.param)


def _branch_region(image: Image, function: str) -> CodeRegion:
    sym = image.symbol(function)
    assert sym is not None
    cfg = function_cfg(image, sym)
    branch = next(a for a in sorted(cfg.blocks) if cfg.blocks[a].last.flow is Flow.BRANCH)
    return form_region(cfg, branch, f"{function}-branch", branch=True)


def _expanded(image: Image, region: CodeRegion) -> Graph:
    view = region_view(region, "branch", sandbox_for(image).bias, {}, None, image,
                       Callees(image))
    return expand_calls(view, list(view.blocks), loops=True)


def _callee_blocks(image: Image) -> int:
    sym = image.symbol("mode_op")
    assert sym is not None
    return len(function_cfg(image, sym).blocks)


@pytest.mark.parametrize(("function", "folded"), [
    ("fixed_two", True), ("fixed_zero", True), ("free_mode", False), ("secret_mode", False)])
def test_only_the_arms_constant_mode_folds_the_callee(modes: Image, function: str,
                                                      folded: bool) -> None:
    graph = _expanded(modes, _branch_region(modes, function))
    every = _callee_blocks(modes)
    assert (len(_origins(graph)) < every) == folded
    branches = [b for b in graph.blocks if b.start in graph.clones
                and b.last.flow is Flow.BRANCH]
    assert bool(branches) != folded  # mode 2 or 0: both of mode_op's branches decided


def _mode_state(seed: str, n: int) -> State:
    return state(seed, rdi=n, rsi=n * 0x9E37_79B9 - 12345, rdx=(n * 7919) ^ 0x55,
                 rcx=(n >> 1) % 4)


@pytest.mark.parametrize("function", CALLERS)
def test_hardened_callers_compute_what_the_original_does(modes: Image, function: str) -> None:
    region = _branch_region(modes, function)
    check = _check(modes, region, composed=False)
    with check:
        report = check.check(f"{function}:{i}" for i in range(150))
        chosen = check.compare((f"{function}-arm:{i}",
                                _mode_state(f"{function}-arm:{i}", i))
                               for i in range(100))
    assert not report.mismatches, report.mismatches[:2]
    assert not chosen.mismatches, chosen.mismatches[:2]
    assert report.compared >= 140 and chosen.compared == 100


@pytest.mark.parametrize("function", ["fixed_two", "secret_mode"])
def test_both_secret_values_run_the_same_instructions_and_lines(modes: Image,
                                                                function: str) -> None:
    check = _check(modes, _branch_region(modes, function), composed=False)
    with check:
        states = [_mode_state("footprint", n) for n in (0x20, 0x31)]  # arm off, arm on
        orig = [trace(check, s, copy=False) for s in states]
        copy = [trace(check, s, copy=True) for s in states]
    assert orig[0][0] != orig[1][0]
    assert copy[0][0] == copy[1][0] and copy[0][0]
    assert copy[0][1] == copy[1][1]


def _umod(kind: str) -> tuple[Image, CodeRegion]:
    image = load_image(binary(kind, "umod_modexp"))
    sym = image.symbol("modexp")
    assert sym is not None
    at = sym.value + 0x46
    return image, form_region(function_cfg(image, sym, extra_leaders=[at]), at, "modexp+0x46")


@pytest.fixture(scope="module", params=["static", "static-pie"])
def umod(request: pytest.FixtureRequest, built: Path) -> tuple[Image, CodeRegion]:
    return _umod(request.param)


def test_umodti3_keeps_only_the_paths_of_a_64_bit_divisor(umod: tuple[Image, CodeRegion]
                                                          ) -> None:
    """``xor ecx, ecx`` before the call: the divisor's high half is 0, so ``test rcx, rcx;
    jne`` in __umodti3 is decided and the paths of a 128-bit divisor are not cloned."""
    image, region = umod
    graph = _expanded(image, region)
    sym = image.symbol("__umodti3")
    assert sym is not None
    every = len(function_cfg(image, sym).blocks)
    kept = _origins(graph)
    assert sym.value in kept and len(kept) < every
    entry = next(b for b in graph.blocks if b.start in graph.clones
                 and graph.origin[b.start].start == sym.value)
    assert entry.last.mnemonic == "jmp"  # test rcx, rcx / jne: never taken
    divisions = [i for k in graph.clones for i in graph.origin[k].insns if i.mnemonic == "div"]
    assert divisions and len(divisions) < sum(
        1 for b in function_cfg(image, sym).blocks.values() for i in b.insns
        if i.mnemonic == "div")


@pytest.mark.parametrize("composed", [False, True], ids=["if-conversion", "with-ct-division"])
def test_folded_umodti3_computes_what_the_original_does(umod: tuple[Image, CodeRegion],
                                                         composed: bool) -> None:
    image, region = umod
    check: RegionCheck = _check(image, region, composed)
    rng = random.Random(f"fold-umod-{composed}")
    with check:
        report = check.check(f"fold-umod:{i}" for i in range(100))
        chosen = check.compare(
            (f"fold-umod:{i}", _umod_state(f"fold-umod:{i}", i & 1, rng.getrandbits(64),
                                           rng.getrandbits(64),
                                           rng.choice([2**64 - 59, 3, rng.getrandbits(64) | 1])))
            for i in range(100))
    assert not report.mismatches, report.mismatches[:2]
    assert not chosen.mismatches, chosen.mismatches[:2]
    assert report.compared >= 90 and chosen.compared == 100
