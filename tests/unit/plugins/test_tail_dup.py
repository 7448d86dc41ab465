"""Regions with side entries and shared tails (issue 15 item 2): a block of a region that is
also entered from outside it, or reached from both arms of its branch, or a loop latch the
arms share.  The region is formed (its blocks listed in ``CodeRegion.shared`` when entered
from outside), its copy holds its own duplicate of every block and is entered only at the
region's start, and the original stays for the other entries.

Differential runs in raw Unicorn (tests/unit/dbt/harness.py) on hand-written shapes:
if-conversion and bounded-loop copies against the original region on hundreds of random
register, flag and memory states, both of if-conversion's schemes; the whole function with
the region's entry jump written over its start (as the dispatcher does) against the pristine
function, so side entries run the original; and the copy's instructions and cache lines are
the same whatever the secret.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import pytest
from unicorn import UC_HOOK_CODE

from leakdbt.dbt.cfg import function_cfg
from leakdbt.dbt.region import CodeRegion, RegionError, form_region
from leakdbt.dbt.relocate import Translation
from leakdbt.loader.elf import load_image
from leakdbt.loader.image import Image
from leakdbt.plugin_api import Rewrite
from leakdbt.x86.asm import assemble
from plugins import if_conversion
from plugins.bounded_loop import PASS as BOUNDED_LOOP
from plugins.if_conversion import PASS as IF_CONVERSION
from tests.unit.dbt.harness import (
    STACK,
    Outcome,
    RegionCheck,
    Sandbox,
    State,
    _Run,
    compile_program,
    differences,
    nm_symbols,
    random_state,
)
from tests.unit.plugins.ifc_support import (
    REG,
    harden,
    iteration_check,
    state,
    trace,
    translate,
    view_of,
)

SHAPES_S = r"""
        .intel_syntax noprefix
        .bss
        .balign 64
        .globl tail_buf
tail_buf:
        .zero   64
        .text

/* if (p || s) arm-else: the else arm is also entered from the public test */
        .globl  side_arm
        .type   side_arm, @function
side_arm:
        mov     eax, edx
        test    esi, esi
        jne     side_arm_else
side_arm_br:
        test    edi, 1
        je      side_arm_else
side_arm_then:
        lea     eax, [rdx + rdx*2 + 1]
        mov     qword ptr [rip + tail_buf], rax
        jmp     side_arm_join
side_arm_else:
        imul    eax, edx, 5
        sub     eax, edi
        mov     qword ptr [rip + tail_buf + 8], rdi
side_arm_join:
        add     eax, 1
        ret
        .size   side_arm, .-side_arm

/* the arms meet only by returning; one of them through a return block that a public
   early exit also reaches */
        .globl  shared_ret
        .type   shared_ret, @function
shared_ret:
        test    esi, esi
        je      shared_ret_out
shared_ret_br:
        test    edi, 2
        jne     shared_ret_then
shared_ret_else:
        lea     rdx, [rdx + rdi*4]
        mov     qword ptr [rsp - 8], rdx
        jmp     shared_ret_out
shared_ret_then:
        xor     edx, edi
        lea     rax, [rdx + 3]
        ret
shared_ret_out:
        mov     rax, rdx
        add     rax, 7
        ret
        .size   shared_ret, .-shared_ret

/* a tail shared by the two arms (and by a nested arm), also entered from before the
   branch */
        .globl  tail_dag
        .type   tail_dag, @function
tail_dag:
        mov     rax, rsi
        test    ecx, ecx
        jne     tail_dag_tail
tail_dag_br:
        test    edi, 1
        je      tail_dag_else
tail_dag_then:
        lea     rax, [rsi + 3]
        test    edi, 2
        jne     tail_dag_tail
tail_dag_then2:
        add     rax, rdx
        jmp     tail_dag_join
tail_dag_else:
        mov     rax, rdx
        sub     rax, rsi
        mov     qword ptr [rip + tail_buf + 16], rax
tail_dag_tail:
        imul    rax, rax, 7
        add     qword ptr [rip + tail_buf + 24], rax
tail_dag_join:
        xor     rax, rdi
        ret
        .size   tail_dag, .-tail_dag

/* for (i = 0; i != n; i++) r = (s >> i) & 1 ? r + d : r ^ i; both arms jump to the latch */
        .globl  latch_loop
        .type   latch_loop, @function
latch_loop:
        xor     eax, eax
        xor     ecx, ecx
latch_loop_top:
        bt      rsi, rcx
        jnc     latch_loop_even
latch_loop_odd:
        add     rax, rdx
        mov     qword ptr [rsp - 8], rax
        jmp     latch_loop_latch
latch_loop_even:
        xor     rax, rcx
latch_loop_latch:
        inc     rcx
        cmp     rcx, rdi
        jne     latch_loop_top
latch_loop_done:
        ret
        .size   latch_loop, .-latch_loop

/* the latch duplicated into both arms: the branch's paths meet only after the loop */
        .globl  dup_latch
        .type   dup_latch, @function
dup_latch:
        xor     eax, eax
        xor     ecx, ecx
dup_latch_top:
        bt      rsi, rcx
        jnc     dup_latch_even
dup_latch_odd:
        add     rax, rdx
        inc     rcx
        cmp     rcx, rdi
        jne     dup_latch_top
        ret
dup_latch_even:
        xor     rax, rcx
        inc     rcx
        cmp     rcx, rdi
        jne     dup_latch_top
        ret
        .size   dup_latch, .-dup_latch

/* side_arm without stores: a tree, which if-conversion runs with its fork scheme */
        .globl  side_fork
        .type   side_fork, @function
side_fork:
        mov     eax, edx
        test    esi, esi
        jne     side_fork_else
side_fork_br:
        test    edi, 1
        je      side_fork_else
side_fork_then:
        lea     eax, [rdx + rdx*2 + 1]
        jmp     side_fork_join
side_fork_else:
        imul    eax, edx, 5
        sub     eax, edi
side_fork_join:
        add     eax, 1
        ret
        .size   side_fork, .-side_fork

/* each arm is a latch of its own, and both leave to the same exit */
        .globl  two_latch
        .type   two_latch, @function
two_latch:
        xor     eax, eax
        xor     ecx, ecx
two_latch_top:
        bt      rsi, rcx
        jnc     two_latch_even
two_latch_odd:
        add     rax, rdx
        inc     rcx
        cmp     rcx, rdi
        jne     two_latch_top
        jmp     two_latch_done
two_latch_even:
        xor     rax, rcx
        mov     qword ptr [rsp - 16], rax
        inc     rcx
        cmp     rcx, rdi
        jne     two_latch_top
two_latch_done:
        ret
        .size   two_latch, .-two_latch

/* a side entry into a cycle that the region's branch also enters at its other block */
        .globl  irr_side
        .type   irr_side, @function
irr_side:
        test    ecx, ecx
        jne     irr_side_b
irr_side_br:
        test    edi, edi
        je      irr_side_b
irr_side_a:
        dec     esi
        je      irr_side_done
irr_side_b:
        dec     edx
        jne     irr_side_a
irr_side_done:
        ret
        .size   irr_side, .-irr_side

/* a side entry into a block that ends with an unknown indirect jump */
        .globl  ind_side
        .type   ind_side, @function
ind_side:
        test    ecx, ecx
        jne     ind_side_jump
ind_side_br:
        test    edi, edi
        je      ind_side_out
ind_side_jump:
        jmp     rsi
ind_side_out:
        ret
        .size   ind_side, .-ind_side

/* store-free: three paths into a shared tail (which also has a side entry); the fork
   scheme runs it as a tree, the tail duplicated per path */
        .globl  fork_dag
        .type   fork_dag, @function
fork_dag:
        mov     rax, rsi
        test    ecx, ecx
        jne     fork_dag_tail
fork_dag_br:
        test    edi, 1
        je      fork_dag_else
fork_dag_then:
        lea     rax, [rsi + 3]
        test    edi, 2
        jne     fork_dag_tail
fork_dag_then2:
        add     rax, rdx
        jmp     fork_dag_join
fork_dag_else:
        mov     rax, rdx
        sub     rax, rsi
        test    edi, 4
        je      fork_dag_tail
fork_dag_else2:
        xor     rax, rdi
        shl     rdx, 3
fork_dag_tail:
        imul    rax, rax, 7
        add     rax, qword ptr [rsp + 8]
        cmp     rax, rdx
fork_dag_join:
        adc     rax, rdi
        ret
        .size   fork_dag, .-fork_dag
        .section .note.GNU-stack,"",@progbits
"""
MAIN_C = "int main(void) { return 0; }\n"
STATES = 300


class Shapes:
    """The built shapes: image, labels (nm), and regions formed at labels."""

    def __init__(self, path: Path) -> None:
        self.image: Image = load_image(str(path))
        self.symbols = nm_symbols(path)
        self.bias = 0x5555_5555_4000 if self.image.is_pie else 0

    def region(self, function: str, label: str, loop: bool = False) -> CodeRegion:
        sym = self.image.symbol(function)
        assert sym is not None
        cfg = function_cfg(self.image, sym, [self.symbols[label]])
        return form_region(cfg, self.symbols[label], label, None if loop else True, loop)

    def at(self, *labels: str) -> tuple[int, ...]:
        return tuple(sorted(self.symbols[n] for n in labels))


@pytest.fixture(scope="module", params=["static", "static-pie"])
def shapes(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Shapes:
    directory = tmp_path_factory.mktemp(f"taildup-{request.param}")
    return Shapes(compile_program(directory, "shapes", {"shapes.S": SHAPES_S,
                                                        "main.c": MAIN_C}, request.param))


@pytest.fixture(scope="module")
def sandbox(shapes: Shapes) -> Sandbox:
    return Sandbox(shapes.image, shapes.bias)


# -- formation -------------------------------------------------------------------------------

# (function, region start, its blocks, the blocks also entered from outside it)
BRANCHES = {
    "side_arm": ("side_arm_br", ("side_arm_br", "side_arm_then", "side_arm_else"),
                 ("side_arm_else",)),
    "side_fork": ("side_fork_br", ("side_fork_br", "side_fork_then", "side_fork_else"),
                  ("side_fork_else",)),
    "shared_ret": ("shared_ret_br", ("shared_ret_br", "shared_ret_else", "shared_ret_then",
                                     "shared_ret_out"), ("shared_ret_out",)),
    "tail_dag": ("tail_dag_br", ("tail_dag_br", "tail_dag_then", "tail_dag_then2",
                                 "tail_dag_else", "tail_dag_tail"), ("tail_dag_tail",)),
    "latch_loop": ("latch_loop_top", ("latch_loop_top", "latch_loop_odd", "latch_loop_even"),
                   ()),
    "fork_dag": ("fork_dag_br", ("fork_dag_br", "fork_dag_then", "fork_dag_then2",
                                 "fork_dag_else", "fork_dag_else2", "fork_dag_tail"),
                 ("fork_dag_tail",)),
}
LOOPS = {
    "latch_loop": ("latch_loop_top", ("latch_loop_top", "latch_loop_odd", "latch_loop_even",
                                      "latch_loop_latch")),
}


@pytest.mark.parametrize("function", sorted(BRANCHES))
def test_a_region_with_side_entries_is_formed_and_says_which(shapes: Shapes,
                                                             function: str) -> None:
    start, blocks, shared = BRANCHES[function]
    region = shapes.region(function, start)
    assert region.kind == "branch"
    assert region.blocks == shapes.at(*blocks)
    assert region.shared == shapes.at(*shared)
    assert region.entry not in region.shared


def test_a_loop_whose_arms_share_the_latch_is_formed(shapes: Shapes) -> None:
    start, blocks = LOOPS["latch_loop"]
    region = shapes.region("latch_loop", start, loop=True)
    assert (region.kind, region.blocks, region.shared) == ("loop", shapes.at(*blocks), ())
    latch = shapes.symbols["latch_loop_latch"]
    inside = [p for p in region.cfg.blocks[latch].preds if p in region.blocks]
    assert sorted(inside) == list(shapes.at("latch_loop_odd", "latch_loop_even"))


def test_from_the_function_entry_nothing_is_shared(shapes: Shapes) -> None:
    """tail_dag from its entry: the public test is inside the region, no side entry is left
    (the tail is still reached from three blocks of the region)."""
    region = shapes.region("tail_dag", "tail_dag")
    assert region.shared == () and shapes.symbols["tail_dag_tail"] in region.blocks


# -- if-conversion: differential -------------------------------------------------------------

def _ifc(shapes: Shapes, sandbox: Sandbox, function: str, scheme: str
         ) -> tuple[RegionCheck, Rewrite]:
    region = shapes.region(function, BRANCHES[function][0])
    view = view_of(region, sandbox.bias, "branch")
    with pytest.MonkeyPatch.context() as mp:
        if scheme == "general":
            mp.setattr(if_conversion, "_is_tree", lambda order, infos: False)
        rewrite = harden(IF_CONVERSION, view)
    assert isinstance(rewrite, Rewrite), rewrite
    t: Translation = translate(sandbox, region, rewrite)
    return RegionCheck(sandbox, region, t, scratch_below_red_zone=True), rewrite


def _secret_bit(s: State, function: str) -> bool:
    if function == "latch_loop":
        return bool(s.gprs[REG["rsi"]] >> (s.gprs[REG["rcx"]] & 63) & 1)
    return bool(s.gprs[REG["rdi"]] & 1)


@pytest.mark.parametrize("scheme", ["any", "general"])
@pytest.mark.parametrize("function", sorted(BRANCHES))
def test_if_converted_region_with_shared_blocks_computes_what_the_original_computes(
        shapes: Shapes, sandbox: Sandbox, function: str, scheme: str) -> None:
    check, rewrite = _ifc(shapes, sandbox, function, scheme)
    assert not any(line.startswith("j") and "@" not in line for line in rewrite.code or ())
    seeds = [f"taildup:{function}:{i}" for i in range(STATES)]
    with check:
        report = check.check(seeds)
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared == STATES
    taken = sum(_secret_bit(random_state(random.Random(s)), function) for s in seeds)
    assert 30 <= taken <= STATES - 30, taken  # both arms were exercised


def test_the_fork_scheme_runs_a_tree_with_a_side_entry(shapes: Shapes, sandbox: Sandbox
                                                       ) -> None:
    """side_fork's region is a tree (its side entry does not count: the copy is entered only
    at the start): the fork scheme (no predicate masks) is used."""
    _, rewrite = _ifc(shapes, sandbox, "side_fork", "any")
    assert rewrite.code is not None
    assert not any("0xffffffffffffffff" in line or line.startswith("or ")
                   for line in rewrite.code)
    _, general = _ifc(shapes, sandbox, "side_fork", "general")
    assert general.code != rewrite.code


def test_the_fork_scheme_duplicates_a_shared_tail_once_per_path(shapes: Shapes,
                                                                  sandbox: Sandbox) -> None:
    """fork_dag's tail is reached on three paths: the fork scheme's code carries its
    instructions three times (one duplicate per path), the predicated-block engine's once."""
    tail = shapes.symbols["fork_dag_tail"]
    _, rewrite = _ifc(shapes, sandbox, "fork_dag", "any")
    _, general = _ifc(shapes, sandbox, "fork_dag", "general")
    assert list(rewrite.code or ()).count(f".insn {tail:#x}") == 3
    assert list(general.code or ()).count(f".insn {tail:#x}") == 1


@pytest.mark.parametrize("function", ["side_arm", "shared_ret", "tail_dag", "fork_dag"])
def test_the_copy_runs_and_touches_the_same_whatever_the_secret(
        shapes: Shapes, sandbox: Sandbox, function: str) -> None:
    check, _ = _ifc(shapes, sandbox, function, "any")
    with check:
        for n in range(3):
            states = [state(f"leak:{function}:{n}", rdi=v, rsi=1) for v in (0x10, 0x13)]
            orig = [trace(check, s, copy=False) for s in states]
            copy = [trace(check, s, copy=True) for s in states]
            assert orig[0][0] != orig[1][0]  # the original's path shows
            assert copy[0] == copy[1] and copy[0][0]  # instructions and lines: the same


# -- side entries run the original -----------------------------------------------------------

SIDE = {  # function -> the (public) register whose test takes the side entry
    "side_arm": "rsi", "side_fork": "rsi", "shared_ret": "rsi", "tail_dag": "rcx",
    "fork_dag": "rcx"}


def _run_function(sandbox: Sandbox, start: int, s: State, hits: dict[int, int]
                  ) -> tuple[str, int, dict[str, Any]]:
    """Run from ``start`` to the return (the hlt page), counting entries at ``hits``."""
    uc = sandbox.uc
    hooks = [uc.hook_add(UC_HOOK_CODE, lambda uc_, a, size, _: hits.__setitem__(
        a, hits.get(a, 0) + 1), None, a, a) for a in hits]
    uc.ctl_flush_tb()
    try:
        return sandbox.execute(start, _Run(False, lambda a: True, frozenset(), frozenset(),
                                           10_000), s)
    finally:
        for h in hooks:
            uc.hook_del(h)
        uc.ctl_flush_tb()


@pytest.mark.parametrize("function", sorted(SIDE))
def test_with_the_entry_jump_side_entries_run_the_original(
        shapes: Shapes, sandbox: Sandbox, function: str) -> None:
    """The whole function, from its entry, with a jump to the if-converted copy written over
    the region's first bytes (what the dispatcher's entry jump does), against the pristine
    function: the same registers, flags and memory, the copy entered exactly when control
    reaches the region's start, and the side entry's block run in the original."""
    check, _ = _ifc(shapes, sandbox, function, "any")
    bias = sandbox.bias
    region = check.region
    entry = region.entry + bias
    patch = assemble(f"jmp {check.t.entry:#x}", entry)
    original = bytes(sandbox.uc.mem_read(entry, len(patch)))
    side = region.shared[0] + bias
    start = shapes.symbols[function] + bias
    counts = {"copy": 0, "side": 0}
    sandbox.install(check.t)  # no RegionCheck hooks: the runs go on to the return
    for i in range(STATES):
        seed = f"side:{function}:{i}"
        s = random_state(random.Random(seed))
        gprs = list(s.gprs)
        gprs[REG[SIDE[function]]] = random.Random(seed).choice((0, 1, 7))
        s = dataclasses.replace(s, gprs=tuple(gprs))
        hits = {check.t.entry: 0, side: 0, entry: 0}
        before = _run_function(sandbox, start, s, hits)
        pristine = dict(hits)
        sandbox.uc.mem_write(entry, patch)
        hits = dict.fromkeys(hits, 0)
        try:
            after = _run_function(sandbox, start, s, hits)
        finally:
            sandbox.uc.mem_write(entry, original)
        assert before[:2] == after[:2], (seed, before[:2], after[:2])
        low = s.gprs[REG["rsp"]] - 128 - STACK  # the copy's scratch lies below the red zone
        for final in (before[2], after[2]):
            final["memory"]["stack"] = bytes(low) + final["memory"]["stack"][low:]
        a, b = (_outcome(r) for r in (before, after))
        assert not differences(a, b, {}), (seed, differences(a, b, {}))
        assert hits[check.t.entry] == pristine[entry]  # the copy, whenever the region
        if pristine[side] and not pristine[entry]:  # the side entry alone
            assert hits[side] == pristine[side]
            counts["side"] += 1
        else:  # the region's own duplicate ran instead of the original block
            assert hits[side] == 0
        counts["copy"] += hits[check.t.entry]
    assert counts["side"] >= 30 and counts["copy"] >= 30, counts


def _outcome(result: tuple[str, int, dict[str, Any]]) -> Outcome:
    kind, address, final = result
    return Outcome(kind, address, final["gprs"], final["rflags"], final["xmm"], final["mxcsr"],
                   final["memory"], 0)


# -- bounded-loop: a latch shared by the arms ------------------------------------------------

BOUND = 16


def _loop_state(seed: str) -> State:
    rng = random.Random(seed)
    return state(seed, rdi=rng.randrange(1, BOUND + 1), rcx=0, rax=rng.getrandbits(64),
                 rsi=rng.getrandbits(64))


@pytest.mark.parametrize("function", ["latch_loop", "two_latch"])
def test_bounded_loop_with_a_shared_latch_computes_what_the_original_computes(
        shapes: Shapes, sandbox: Sandbox, function: str) -> None:
    region = shapes.region(function, f"{function}_top", loop=True)
    rewrite = harden(BOUNDED_LOOP, view_of(region, sandbox.bias, "loop", {"bound": BOUND}))
    assert isinstance(rewrite, Rewrite), rewrite
    check = RegionCheck(sandbox, region, translate(sandbox, region, rewrite),
                        scratch_below_red_zone=True)
    states = [(f"loop:{function}:{i}", _loop_state(f"loop:{function}:{i}"))
              for i in range(STATES)]
    with check:
        report = check.compare(states)
        for n in range(2):  # the same instructions and lines whatever the secret bits
            same = [state(f"lk:{n}", rdi=9, rcx=0, rsi=v) for v in (0, 0x1F5)]
            copies = [trace(check, s, copy=True) for s in same]
            assert copies[0] == copies[1] and copies[0][0]
            assert trace(check, same[0], copy=False) != trace(check, same[1], copy=False)
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared == STATES


# -- refusals --------------------------------------------------------------------------------

def test_a_branch_whose_arms_each_carry_the_latch_runs_one_iteration_at_a_time(
        shapes: Shapes, sandbox: Sandbox) -> None:
    """gcc duplicating the latch into both arms: the branch's paths meet only after the
    loop, so its region holds the loop's back edge to its own start (entered at the start
    only: formed).  if-conversion runs it one iteration at a time (an iteration region,
    tests/unit/plugins/test_iteration_region.py): the same results as the loop, and the
    same instructions whatever the secret bits; the loop region is accepted by
    bounded-loop too."""
    region = shapes.region("dup_latch", "dup_latch_top")
    assert shapes.symbols["dup_latch_top"] in region.blocks
    result = harden(IF_CONVERSION, view_of(region, sandbox.bias, "branch"))
    assert isinstance(result, Rewrite), result
    check = iteration_check(sandbox, region, result)
    states = [(f"dup:{i}", _loop_state(f"dup:{i}")) for i in range(STATES)]
    with check:
        report = check.compare(states)
        one = [state("dup-one", rdi=1, rcx=0, rsi=v) for v in (0, 1)]
        copies = [trace(check, s, copy=True) for s in one]
        assert trace(check, one[0], copy=False)[0] != trace(check, one[1], copy=False)[0]
    assert copies[0][0] == copies[1][0] and copies[0][0]
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared == STATES
    loop = shapes.region("dup_latch", "dup_latch_top", loop=True)
    assert isinstance(harden(BOUNDED_LOOP, view_of(loop, 0, "loop", {"bound": 8})), Rewrite)


def test_irreducible_flow_inside_the_copy_is_still_refused(shapes: Shapes) -> None:
    """irr_side's branch enters the cycle a <-> b at both blocks (b also from outside): even
    entered only at its start, the copy has a loop with two entries."""
    with pytest.raises(RegionError) as info:
        shapes.region("irr_side", "irr_side_br")
    a, b = (f"irr_side+{shapes.symbols[n] - shapes.symbols['irr_side']:#x}"
            for n in ("irr_side_a", "irr_side_b"))
    assert str(info.value) in {
        f"irr_side_br: irreducible flow: the loop through {x} and {y} has more than one entry"
        for x, y in ((a, b), (b, a))}


def test_an_unknown_indirect_jump_in_a_shared_block_is_still_refused(shapes: Shapes) -> None:
    with pytest.raises(RegionError) as info:
        shapes.region("ind_side", "ind_side_br")
    jump = shapes.symbols["ind_side_jump"] - shapes.symbols["ind_side"]
    assert str(info.value) == (f"ind_side_br: ind_side+{jump:#x} ends with an indirect jump "
                               "whose targets are unknown ('jmp rsi')")
