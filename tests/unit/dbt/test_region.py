"""Region formation on hand-written functions: the exact blocks of each branch region (from the
labels of the assembly source, read back with nm) and the exact refusal messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from leakdbt.dbt.cfg import FunctionCFG, function_cfg, returns_never
from leakdbt.dbt.region import CodeRegion, RegionError, form_region, side_reachable
from leakdbt.errors import TranslationError
from leakdbt.loader.elf import load_image
from leakdbt.x86.insn import Flow
from tests.conftest import binary
from tests.unit.dbt.harness import compile_program, nm_symbols

KINDS = ("static", "static-pie")

# Every block start of the functions below has a label named FUNCTION_something (nm lists
# them as local symbols; the loader ignores such untyped symbols).
REGIONS_S = r"""
        .intel_syntax noprefix
        .text

        .globl  diamond
        .type   diamond, @function
diamond:
        test    edi, edi
        je      diamond_else
diamond_then:
        lea     eax, [rsi + 1]
        jmp     diamond_join
diamond_else:
        lea     eax, [rsi - 1]
diamond_join:
        add     eax, edx
        ret
        .size   diamond, .-diamond

        .globl  triangle
        .type   triangle, @function
triangle:
        mov     eax, esi
        test    edi, edi
        jne     triangle_join
triangle_then:
        add     eax, 5
triangle_join:
        imul    eax, eax, 3
        ret
        .size   triangle, .-triangle

        .globl  two_returns
        .type   two_returns, @function
two_returns:
        test    edi, edi
        js      two_returns_neg
two_returns_pos:
        lea     eax, [rdi + rdi]
        ret
two_returns_neg:
        mov     eax, edi
        neg     eax
        ret
        .size   two_returns, .-two_returns

        .globl  nested
        .type   nested, @function
nested:
        xor     eax, eax
        test    edi, edi
        je      nested_else
nested_then:
        test    esi, esi
        je      nested_then_b
nested_then_a:
        inc     eax
        jmp     nested_join
nested_then_b:
        dec     eax
        jmp     nested_join
nested_else:
        mov     eax, edx
nested_join:
        ret
        .size   nested, .-nested

        .globl  call_arm
        .type   call_arm, @function
call_arm:
        mov     eax, esi
        test    edi, edi
        je      call_arm_join
call_arm_call:
        call    diamond
call_arm_after:
        add     eax, 1
call_arm_join:
        ret
        .size   call_arm, .-call_arm

        .globl  loop_head
        .type   loop_head, @function
loop_head:
        xor     eax, eax
loop_head_top:
        test    edi, edi
        je      loop_head_done
loop_head_body:
        add     eax, edi
        dec     edi
        jmp     loop_head_top
loop_head_done:
        ret
        .size   loop_head, .-loop_head

        .globl  dowhile
        .type   dowhile, @function
dowhile:
        xor     eax, eax
dowhile_body:
        add     eax, edi
        dec     edi
        jne     dowhile_body
dowhile_done:
        ret
        .size   dowhile, .-dowhile

        .globl  abort_arm
        .type   abort_arm, @function
abort_arm:
        test    edi, edi
        je      abort_arm_join
abort_arm_fail:
        call    abort
abort_arm_join:
        mov     eax, esi
        ret
        .size   abort_arm, .-abort_arm

        # dies never returns, by its own CFG (no name of the NORETURN table): both its
        # paths end in calls to abort and exit
        .globl  dies
        .type   dies, @function
dies:
        test    edi, edi
        je      dies_exit
dies_abort:
        call    abort
dies_exit:
        call    exit
        .size   dies, .-dies

        .globl  die_arm
        .type   die_arm, @function
die_arm:
        xor     eax, eax
        test    edi, edi
        je      die_arm_else
die_arm_then:
        test    esi, esi
        je      die_arm_fail
die_arm_ok:
        lea     eax, [rsi + 1]
        jmp     die_arm_join
die_arm_fail:
        call    dies
die_arm_else:
        lea     eax, [rsi - 1]
die_arm_join:
        add     eax, edx
        ret
        .size   die_arm, .-die_arm

        .globl  tail_arm
        .type   tail_arm, @function
tail_arm:
        test    edi, edi
        je      tail_arm_other
tail_arm_self:
        lea     eax, [rsi + 7]
        ret
tail_arm_other:
        jmp     diamond
        .size   tail_arm, .-tail_arm

        .globl  latch
        .type   latch, @function
latch:
        xor     eax, eax
latch_head:
        test    esi, esi
        je      latch_skip
latch_add:
        add     eax, esi
latch_skip:
        dec     edi
        jne     latch_head
latch_done:
        ret
        .size   latch, .-latch

/* a loop whose body is also the target of code nothing reaches (an extra leader) */
        .globl  dead_loop
        .type   dead_loop, @function
dead_loop:
        xor     eax, eax
dead_loop_top:
        add     eax, edi
dead_loop_body:
        dec     edi
        jne     dead_loop_top
dead_loop_done:
        ret
dead_loop_dead:
        jmp     dead_loop_body
        .size   dead_loop, .-dead_loop

/* a cycle a <-> b entered at both a and b */
        .globl  irreducible
        .type   irreducible, @function
irreducible:
        test    edi, edi
        je      irreducible_b
irreducible_a:
        dec     esi
        je      irreducible_done
irreducible_b:
        dec     edx
        jne     irreducible_a
irreducible_done:
        ret
        .size   irreducible, .-irreducible

        .globl  indirect
        .type   indirect, @function
indirect:
        test    edi, edi
        je      indirect_out
indirect_jump:
        jmp     rsi
indirect_out:
        ret
        .size   indirect, .-indirect

        .globl  endless
        .type   endless, @function
endless:
        xor     eax, eax
endless_top:
        inc     eax
        test    eax, edi
        jne     endless_top
endless_other:
        dec     eax
        jmp     endless_top
        .size   endless, .-endless

        .globl  transaction
        .type   transaction, @function
transaction:
        mov     eax, edi
        xbegin  transaction_abort
transaction_body:
        inc     eax
        xend
transaction_abort:
        ret
        .size   transaction, .-transaction

        .globl  dead_code
        .type   dead_code, @function
dead_code:
        mov     eax, 1
        ret
dead_code_unreached:
        mov     eax, 2
        ret
        .size   dead_code, .-dead_code
        .section .note.GNU-stack,"",@progbits
"""

REGIONS_C = r"""
#include <stdlib.h>

__attribute__((noipa)) int c_switch(int op, int a, int b)
{
    switch (op) {
    case 0: return a + b;
    case 1: return a - b;
    case 2: return a * b;
    case 3: return a ^ b;
    case 4: return a | b;
    case 5: return a & b;
    case 6: return a << (b & 7);
    case 7: return a >> (b & 7);
    default: return -1;
    }
}

__attribute__((noipa)) int c_abort(int x)
{
    if (x < 0)
        abort();
    return x * 2;
}

int main(int argc, char **argv)
{
    (void)argv;
    return c_switch(argc, argc, 2) + c_abort(argc);
}
"""


class Program:
    """A built program with its symbols (labels included) and CFGs."""

    def __init__(self, path: Path) -> None:
        self.image = load_image(str(path))
        self.symbols = nm_symbols(path)

    def cfg(self, function: str, extra_leaders: tuple[str, ...] = ()) -> FunctionCFG:
        sym = self.image.symbol(function)
        assert sym is not None
        return function_cfg(self.image, sym, [self.symbols[e] for e in extra_leaders])

    def where(self, label: str, function: str) -> str:
        """A label as region messages name it: ``function+0xOFF``."""
        off = self.symbols[label] - self.symbols[function]
        return f"{function}+{off:#x}" if off else function

    def labels(self, function: str) -> dict[int, str]:
        """The labels of ``function`` in the assembly source, by address."""
        return {a: n for n, a in self.symbols.items()
                if n == function or n.startswith(function + "_")}

    def form(self, function: str, label: str, branch: bool | None = None,
             extra_leaders: tuple[str, ...] = ()) -> CodeRegion:
        cfg = self.cfg(function, extra_leaders)
        return form_region(cfg, self.symbols[label], self.where(label, function), branch)


@pytest.fixture(scope="module", params=KINDS)
def program(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Program:
    kind = request.param
    directory = tmp_path_factory.mktemp(f"regions-{kind}")
    # -fno-pie: the non-PIE kind gets gcc's absolute jump table, the PIE kind the relative one
    extra = ["-fno-pie"] if kind == "static" else []
    return Program(compile_program(directory, "regions", {"regions.S": REGIONS_S,
                                                          "regions.c": REGIONS_C},
                                   kind, extra))


# (function, start label, the region's block labels, the join: the immediate post-dominator,
# where the region ends; None: it runs to the returns)
BRANCH_REGIONS = [
    ("diamond", "diamond", {"diamond", "diamond_then", "diamond_else"}, "diamond_join"),
    ("triangle", "triangle", {"triangle", "triangle_then"}, "triangle_join"),
    ("two_returns", "two_returns", {"two_returns", "two_returns_pos", "two_returns_neg"},
     None),
    ("nested", "nested", {"nested", "nested_then", "nested_then_a", "nested_then_b",
                          "nested_else"}, "nested_join"),
    ("nested", "nested_then", {"nested_then", "nested_then_a", "nested_then_b"},
     "nested_join"),
    ("call_arm", "call_arm", {"call_arm", "call_arm_call", "call_arm_after"},
     "call_arm_join"),
    # a branch at the head of a loop: the whole loop, up to its exit
    ("loop_head", "loop_head_top", {"loop_head_top", "loop_head_body"}, "loop_head_done"),
    # a loop of one block
    ("dowhile", "dowhile_body", {"dowhile_body"}, "dowhile_done"),
]


@pytest.mark.parametrize(("function", "start", "blocks", "join"), BRANCH_REGIONS,
                         ids=[f"{f}@{s}" for f, s, _, _ in BRANCH_REGIONS])
def test_branch_region_spans_both_arms_up_to_the_join(
        program: Program, function: str, start: str, blocks: set[str], join: str | None
) -> None:
    cfg = program.cfg(function)
    labels = program.labels(function)
    assert {labels[b] for b in cfg.blocks} == set(labels.values())  # the CFG sees the labels
    at = program.symbols[start]
    assert cfg.postdominators[at] == (None if join is None else program.symbols[join])
    for branch in (None, True):
        region = program.form(function, start, branch)
        assert region.kind == "branch" and region.entry == at
        assert region.name == program.where(start, function)
        assert region.blocks == tuple(sorted(program.symbols[b] for b in blocks))
        assert {labels[b] for b in region.blocks} == blocks


@pytest.mark.parametrize("function", ["diamond", "nested", "call_arm", "loop_head", "latch",
                                      "irreducible", "endless", "dead_code"])
def test_block_region_is_the_block_itself(program: Program, function: str) -> None:
    """Any block without an unknown or table jump or an xbegin at its end forms a block
    region, also a block that ends with a conditional branch when asked for (branch=False)."""
    cfg = program.cfg(function)
    assert cfg.reachable
    for at in cfg.reachable:
        region = form_region(cfg, at, f"b{at:#x}", False)
        assert (region.kind, region.entry, region.blocks) == ("block", at, (at,))
        assert region.byte_ranges == [(at, cfg.blocks[at].end)]


# (function, start label, branch, message with {label} and {label:#x} placeholders: a label's
# function+offset and its address)
REFUSALS = [
    ("tail_arm", "tail_arm", True,
     "tail_arm: exit from the middle: {tail_arm_other} leaves tail_arm for {diamond:#x}"),
    ("indirect", "indirect", None,
     "indirect: {indirect_jump} ends with an indirect jump whose targets are unknown "
     "('jmp rsi')"),
    ("indirect", "indirect_jump", None,
     "{indirect_jump}: {indirect_jump} ends with an indirect jump whose targets are unknown "
     "('jmp rsi')"),
    ("endless", "endless_top", None,
     "{endless_top}: no path from 'jne {endless_top:#x}' leaves endless (an endless loop)"),
    ("transaction", "transaction", None,
     "transaction: transaction starts a hardware transaction (xbegin), which the translator "
     "does not relocate"),
    ("transaction", "transaction", True,
     "transaction: a branch region must start at a block that ends with a conditional "
     "branch; this block ends with 'xbegin {transaction_abort:#x}'"),
    ("diamond", "diamond_then", True,
     "{diamond_then}: a branch region must start at a block that ends with a conditional "
     "branch; this block ends with 'jmp {diamond_join:#x}'"),
    ("dead_code", "dead_code_unreached", None,
     "{dead_code_unreached}: not a block start reachable by decoding dead_code from its entry "
     "(unreachable code, or data inside the function)"),
]


@pytest.mark.parametrize(("function", "start", "branch", "message"), REFUSALS,
                         ids=[f"{f}@{s}-{b}" for f, s, b, _ in REFUSALS])
def test_refusal_names_the_block_and_the_reason(
        program: Program, function: str, start: str, branch: bool | None, message: str
) -> None:
    with pytest.raises(RegionError) as info:
        program.form(function, start, branch)
    assert str(info.value) == _fill(program, message, function)
    assert isinstance(info.value, TranslationError)


def _fill(program: Program, message: str, function: str) -> str:
    fields: dict[str, object] = {}
    for name, address in program.symbols.items():
        if name.isidentifier():
            fields[name] = _Label(address, program.where(name, function)
                                  if name.startswith(function) else name)
    return message.format(**fields)


class _Label:
    """``{label}`` is function+offset, ``{label:#x}`` the address."""

    def __init__(self, address: int, where: str) -> None:
        self.address = address
        self.where = where

    def __format__(self, spec: str) -> str:
        return format(self.address, spec) if spec else self.where


# (function, start label, the region's block labels, those also entered from outside it)
SIDE_ENTRIES = [
    # a branch at a loop's latch: the loop, whose header is also entered from the entry
    ("latch", "latch_skip", {"latch_skip", "latch_head", "latch_add"}, {"latch_head"}),
    # the cycle a <-> b is irreducible in the function (entered at a and at b), but the
    # copy is entered only at b: a loop with one entry, its header b
    ("irreducible", "irreducible_b", {"irreducible_b", "irreducible_a"}, {"irreducible_a"}),
]


@pytest.mark.parametrize(("function", "start", "blocks", "shared"), SIDE_ENTRIES,
                         ids=[f"{f}@{s}" for f, s, _, _ in SIDE_ENTRIES])
def test_blocks_also_entered_from_outside_are_formed_and_listed(
        program: Program, function: str, start: str, blocks: set[str], shared: set[str]
) -> None:
    """A side entry no longer refuses the region: the copy is entered only at the start
    and holds its own duplicate of each block; the original stays for the other entries."""
    region = program.form(function, start)
    assert region.kind == "branch" and region.entry == program.symbols[start]
    assert region.blocks == tuple(sorted(program.symbols[b] for b in blocks))
    assert region.shared == tuple(sorted(program.symbols[b] for b in shared))
    outside = {p for b in region.shared for p in region.cfg.blocks[b].preds
               if p not in region.blocks}
    assert outside == {program.symbols[function]}


def test_side_reachable_blocks_stop_at_the_region_start(program: Program) -> None:
    """latch@latch_skip: the side entry runs latch_head, latch_add in the original, then
    reaches latch_skip, the start, where the copy takes over."""
    region = program.form("latch", "latch_skip")
    assert side_reachable(region) == {program.symbols["latch_head"],
                                      program.symbols["latch_add"]}
    assert side_reachable(program.form("diamond", "diamond")) == frozenset()


def test_a_loop_entered_from_unreachable_code_leaves_that_code_out(program: Program) -> None:
    """dead_loop_dead (decoded as an extra leader, reached by nothing) jumps into the body:
    it is not part of the natural loop, but a side entry into it."""
    cfg = program.cfg("dead_loop", ("dead_loop_top", "dead_loop_dead"))
    top = program.symbols["dead_loop_top"]
    region = form_region(cfg, top, "dead_loop_top", loop=True)
    assert region.kind == "loop"
    assert region.blocks == (top, program.symbols["dead_loop_body"])
    assert region.shared == (program.symbols["dead_loop_body"],)


@pytest.mark.parametrize(("function", "start"), [("diamond", "diamond"), ("nested", "nested"),
                                                 ("two_returns", "two_returns")])
def test_single_entry_regions_share_nothing(program: Program, function: str, start: str
                                            ) -> None:
    assert program.form(function, start).shared == ()


def test_irreducible_loop_is_refused(program: Program) -> None:
    """The cycle a <-> b is entered at both a and b: neither dominates the other."""
    with pytest.raises(RegionError) as info:
        program.form("irreducible", "irreducible")
    a, b = program.where("irreducible_a", "irreducible"), program.where("irreducible_b",
                                                                        "irreducible")
    assert str(info.value) in {
        f"irreducible: irreducible flow: the loop through {x} and {y} has more than one entry"
        for x, y in ((a, b), (b, a))}


def test_block_start_inside_an_instruction_or_unreachable(program: Program) -> None:
    cfg = program.cfg("dead_code")
    mid = program.symbols["dead_code"] + 1  # inside "mov eax, 1"
    with pytest.raises(RegionError, match=r"^mid: not a block start reachable by decoding "
                                          r"dead_code from its entry"):
        form_region(cfg, mid, "mid")
    # decoded (as an extra leader), but nothing leads there
    region_at = "dead_code_unreached"
    with pytest.raises(RegionError) as info:
        program.form("dead_code", region_at, extra_leaders=(region_at,))
    assert str(info.value) == f"{program.where(region_at, 'dead_code')}: unreachable from " \
                              "the entry of dead_code"


def test_jump_table_switch_is_refused(program: Program) -> None:
    cfg = program.cfg("c_switch")
    assert len(cfg.jump_tables) == 1 and not cfg.unknown_jumps
    (jump, table), = cfg.jump_tables.items()
    assert table.entry_size == (4 if program.image.is_pie else 8)
    assert len(table.targets) == 8
    block = cfg.block_at(jump)
    assert block is not None and block.last.address == jump
    where = f"c_switch+{block.start - cfg.entry:#x}"
    expected = (f"{where} ends with a jump-table jump ('{block.last.text}'): its table holds "
                "original addresses, so a copy cannot keep control inside the region")
    # the bounds check's branch region contains the jump; the jump's own block region too
    for at, name in ((cfg.entry, "c_switch"), (block.start, where)):
        with pytest.raises(RegionError) as info:
            form_region(cfg, at, name)
        assert str(info.value) == f"{name}: {expected}"


def test_arm_calling_abort_in_a_cold_part_is_a_dead_end_of_the_region(program: Program
                                                                        ) -> None:
    """gcc moves the abort() call to c_abort.cold, below the function: that path of the
    region ends there (a dead end), the other runs to the return."""
    cfg = program.cfg("c_abort")
    cold, entry = program.symbols["c_abort.cold"], program.symbols["c_abort"]
    assert cold < entry and cold in cfg.blocks and cfg.blocks[cold].dead_end
    region = form_region(cfg, entry, "c_abort")
    assert region.kind == "branch" and cold in region.blocks
    assert all(cfg.blocks[b].dead_end or cfg.blocks[b].last.flow is Flow.RETURN
               or cfg.blocks[b].inside_succs() for b in region.blocks)


# (function, start label, the region's blocks, its dead ends, the join)
DEAD_END_REGIONS = [
    # abort (by name, NORETURN): the join is where the path that goes on continues
    ("abort_arm", "abort_arm", {"abort_arm", "abort_arm_fail"}, {"abort_arm_fail"},
     "abort_arm_join"),
    # dies (by its own CFG) inside one arm of a diamond: the diamond's join stays the join
    ("die_arm", "die_arm", {"die_arm", "die_arm_then", "die_arm_ok", "die_arm_fail",
                            "die_arm_else"}, {"die_arm_fail"}, "die_arm_join"),
]


@pytest.mark.parametrize(("function", "start", "blocks", "dead", "join"), DEAD_END_REGIONS,
                         ids=[f"{f}@{s}" for f, s, _, _, _ in DEAD_END_REGIONS])
def test_a_call_that_does_not_return_ends_its_path_of_the_region(
        program: Program, function: str, start: str, blocks: set[str], dead: set[str],
        join: str) -> None:
    """A block ending in a call that does not return is a dead end: no edge leaves it, it
    is part of the region, and the join ignores it (the post-dominator counting it as an
    exit is the function's end)."""
    cfg = program.cfg(function)
    at = program.symbols[start]
    assert {b for b in cfg.blocks if cfg.blocks[b].dead_end} == \
        {program.symbols[d] for d in dead}
    assert cfg.joins[at] == program.symbols[join]
    assert cfg.postdominators[at] is None
    region = program.form(function, start)
    assert region.kind == "branch"
    assert region.blocks == tuple(sorted(program.symbols[b] for b in blocks))


def test_a_function_is_known_not_to_return_by_its_cfg_or_by_name(program: Program) -> None:
    """dies (abort or exit on each path) never returns by its CFG; diamond returns;
    function_cfg(general=False) knows only the NORETURN table, so die_arm's call to dies
    then falls through to die_arm_else."""
    assert returns_never(program.cfg("dies"))
    assert not returns_never(program.cfg("diamond"))
    assert not returns_never(program.cfg("tail_arm"))  # a tail call: may return
    sym = program.image.symbol("die_arm")
    assert sym is not None
    narrow = function_cfg(program.image, sym, general=False)
    fail = program.symbols["die_arm_fail"]
    assert not narrow.blocks[fail].dead_end
    assert narrow.blocks[fail].inside_succs() == [program.symbols["die_arm_else"]]


def test_loop_region_is_the_natural_loop_of_its_header(built: Path) -> None:
    """mac_verify's comparison loop: header and latch, two exits; a block that is not a
    loop header is refused."""
    image = load_image(binary("static", "mac_verify"))
    func = image.symbol("verify")
    assert func is not None
    cfg = function_cfg(image, func, extra_leaders=[func.value + 8])
    region = form_region(cfg, func.value + 8, "verify+0x8", loop=True)
    assert region.kind == "loop"
    assert [b - func.value for b in region.blocks] == [0x8, 0x11]
    exits = {e.target - func.value for b in region.block_list() for e in b.succs
             if e.target not in region.blocks}
    assert exits == {0x1b, 0x28}
    with pytest.raises(RegionError, match="verify: not a loop header"):
        form_region(cfg, func.value, "verify", loop=True)
