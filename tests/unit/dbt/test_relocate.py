"""Relocation is the identity translation every hardening pass builds on, so it gets the house
test: original and copy run from many random states and must leave the same registers, flags,
vector registers and memory, and stop at the same original address (see ``harness.py`` for the
set-up and the stop rule).  Structural checks pin what the copy must look like: RIP-relative
operands reach the same address, every way out jumps to the original successor, far branch
forms where short ones no longer reach, and an error where an operand is out of reach.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import pytest

from leakdbt.dbt.cfg import FunctionCFG, function_cfg
from leakdbt.dbt.region import CodeRegion, RegionError, form_region
from leakdbt.dbt.relocate import Translation, relocate
from leakdbt.loader.elf import load_image
from leakdbt.loader.image import Image
from leakdbt.x86.asm import AssemblyError
from leakdbt.x86.insn import SHORT_ONLY, Flow, decode, decode_all
from tests.conftest import BUILD
from tests.unit.dbt.harness import (
    PIE_BIAS,
    SENTINEL,
    Chooser,
    RegionCheck,
    Report,
    Sandbox,
    comparable,
    compile_program,
    nm_symbols,
    random_state,
)

STATES = 30  # random states per region
KINDS = ("static", "static-pie")
# The test programs' own functions (whatever of them gcc did not inline).
PROGRAMS = {
    "sha256": ("main", "block", "sha_init", "sha_update", "sha_final", "hex"),
    "modexp": ("main", "mulmod", "modpow"),
    "region_loop": ("main", "tiny_region"),
}
# C library functions per program and kind of which one region is run; LEAKDBT_DIFF_ALL=1
# runs every region of every function instead (about 29,000 per program: many minutes).
LIBC_SAMPLE = 16
DIFF_ALL = os.environ.get("LEAKDBT_DIFF_ALL") == "1"

TRICKY_C = r"""
/* Constructs whose relocation is easy to get wrong; every function is also a whole region. */
#include <stdint.h>

uint64_t g_counter;
int64_t g_sink[4];
static uint64_t g_table[16] = { 3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3 };
static const double g_weights[4] = { 0.5, -1.25, 3.0, 0.125 };

__attribute__((noipa)) uint64_t helper(uint64_t a, uint64_t b)
{
    g_counter += a;
    return a * 31 + (b ^ g_counter);
}

/* RIP-relative loads, stores and address-of */
__attribute__((noipa)) uint64_t globals(uint64_t x, uint64_t y)
{
    g_counter += x;
    g_table[x & 15] ^= y;
    g_sink[y & 3] = (int64_t)&g_table[(x >> 4) & 15];
    return g_table[(x >> 8) & 15] + (uint64_t)&g_sink[1];
}

/* a jump table */
__attribute__((noipa)) int64_t dispatch(unsigned op, int64_t a, int64_t b)
{
    switch (op) {
    case 0: return a + b;
    case 1: return a - b;
    case 2: return a * b;
    case 3: return a ^ (b << 3);
    case 4: return a | b;
    case 5: return a & ~b;
    case 6: return a << (b & 31);
    case 7: return a >> (b & 31);
    case 8: return (int64_t)helper((uint64_t)a, (uint64_t)b);
    default: return -1;
    }
}

/* cmov and setcc */
__attribute__((noipa)) int64_t selects(int64_t a, int64_t b, uint64_t c)
{
    int64_t lo = a < b ? a : b;
    int64_t hi = a < b ? b : a;
    uint64_t u = c > (uint64_t)a ? c : (uint64_t)a;
    return lo * 3 + hi + (int64_t)u + (a == b) + ((a > 0) << 3) + ((c & 0x10) != 0);
}

/* signed and unsigned division */
__attribute__((noipa)) int64_t divide(int64_t a, int64_t b, uint64_t c, uint64_t d)
{
    int64_t r = 0;
    if (b != 0 && !(a == INT64_MIN && b == -1))
        r = a / b + a % b;
    if (d != 0)
        r += (int64_t)(c / d) - (int64_t)(c % d);
    return r;
}

/* SSE arithmetic with a RIP-relative constant table */
__attribute__((noipa)) double vector(const double *v, long n, double scale)
{
    double s = 0.0;
    for (long i = 0; i < (n & 31); i++)
        s += v[i] * scale * g_weights[i & 3];
    return s > 1e9 ? 1e9 : s;
}

/* calls that return into the copy */
__attribute__((noipa)) uint64_t calls(uint64_t x, uint64_t y)
{
    uint64_t r = y;
    for (unsigned i = 0; i < (x & 7); i++)
        r += helper(r, i);
    if (r & 1)
        r = helper(r, x);
    return r + g_counter;
}

__attribute__((noipa)) uint64_t branchy(uint64_t x, uint64_t y)
{
    uint64_t r = 0;
    if (x & 1)
        r = y * 3;
    else
        r = y ^ 0x55;
    if (x & 2)
        r += 7;
    if ((x & 12) == 8)
        return r << 1;
    while (r > 1000 && y--)
        r = r / 2 + (y & 1);
    return r;
}

uint64_t loop_far(uint64_t n, uint64_t key, uint64_t step);
uint64_t loops_mixed(uint64_t n, uint64_t key);
uint64_t ecx_loops(uint64_t n, uint64_t step);

int main(int argc, char **argv)
{
    double v[4] = { 1, 2, 3, 4 };
    uint64_t r = globals((uint64_t)argc, 5) + (uint64_t)dispatch((unsigned)argc, argc, 3);
    r += (uint64_t)selects(argc, 2, 9) + (uint64_t)divide(argc, 2, 9, 4) + calls(argc, 1);
    r += branchy(argc, 2000) + loop_far((uint64_t)argc, 1, 2) + loops_mixed((uint64_t)argc, 3);
    r += (uint64_t)vector(v, argc, 2.0) + ecx_loops((uint64_t)argc, 7);
    (void)argv;
    return (int)(r & 0x7f);
}
"""

TRICKY_S = r"""
/* Branches whose short forms are out of reach once relocated: each "exit" below is a short
 * jcc to a neighbouring function; a copy elsewhere needs the 6-byte form for it, so every
 * body grows by 4 bytes per exit and the short loop/jrcxz/jcc/jmp around it must go far. */
        .intel_syntax noprefix
        .data
        .p2align 3
asm_data:
        .quad   0x0123456789abcdef, 0x0fedcba987654321, 0x1111111111111111, 0x2222222222222222
        .quad   0x3333333333333333, 0x4444444444444444, 0x5555555555555555, 0x6666666666666666
        .globl  asm_out
asm_out:
        .quad   0

        .text
        .type   exit_low, @function
exit_low:
        mov     eax, 0x1111
        ret
        .size   exit_low, .-exit_low

/* uint64_t loop_far(uint64_t n, uint64_t key, uint64_t step): loop and jrcxz go far */
        .globl  loop_far
        .type   loop_far, @function
loop_far:
        mov     rcx, rdi
        shr     rcx, 3
        and     ecx, 7
        mov     rax, rsi
        lea     r8, [rip + asm_data]
        jrcxz   loop_far_done
loop_far_body:
        cmp     al, 3
        je      exit_low
        add     rax, rcx
        xor     rax, [r8 + rcx*8]
        cmp     al, 5
        je      exit_low
        imul    rax, rax, 0x1f
        add     rax, [rip + asm_data + 8]
        cmp     al, 7
        jb      exit_low
        rol     rax, 7
        mov     [rip + asm_out], rax
        cmp     al, 11
        je      exit_low
        sub     rax, rdx
        lea     r9, [rax + rcx*4 + 0x11]
        cmp     r9b, 13
        je      exit_low
        xor     rax, r9
        cmp     al, 17
        je      exit_high
        imul    rax, rax, 0x3b
        cmp     rax, rdx
        cmovb   rax, rdx
        cmp     al, 19
        je      exit_high
        ror     rax, 13
        cmp     al, 23
        je      exit_high
        add     rax, [r8 + 16]
        cmp     al, 29
        je      exit_high
        loop    loop_far_body
loop_far_done:
        ret
        .size   loop_far, .-loop_far

        .type   exit_high, @function
exit_high:
        mov     eax, 0x2222
        ret
        .size   exit_high, .-exit_high

        .type   exit_b_low, @function
exit_b_low:
        mov     eax, 0x3333
        ret
        .size   exit_b_low, .-exit_b_low

/* uint64_t loops_mixed(uint64_t n, uint64_t key): a backward jne, a forward jne and a forward
 * jmp go far; loopne stays short; a call returns into the copy */
        .globl  loops_mixed
        .type   loops_mixed, @function
loops_mixed:
        mov     ecx, edi
        and     ecx, 7
        inc     ecx
        mov     rax, rsi
        test    sil, 1
        jne     lm_second
lm_loop:
        cmp     al, 3
        je      exit_b_low
        add     rax, rcx
        imul    rax, rax, 0x1f
        cmp     al, 5
        je      exit_b_low
        rol     rax, 7
        add     rax, [rip + asm_data + 16]
        cmp     al, 7
        je      exit_b_low
        setne   dl
        movzx   edx, dl
        add     rax, rdx
        cmp     al, 11
        je      exit_b_low
        lea     rdx, [rax + rcx*8 + 0x21]
        cmp     dl, 13
        je      exit_b_low
        xor     rax, rdx
        cmp     al, 17
        je      exit_b_low
        ror     rax, 11
        imul    rax, rax, 0x25
        cmp     al, 19
        je      exit_b_low
        imul    rax, rax, 0x3d
        xor     rax, [rip + asm_data + 40]
        rol     rax, 3
        add     rax, rcx
        lea     rdx, [rax + 5]
        cmovs   rax, rdx
        sub     rax, [rip + asm_data + 48]
        sub     rax, rcx
        dec     ecx
        jne     lm_loop
        jmp     lm_end
lm_second:
        xor     rax, [rip + asm_data + 24]
        cmp     al, 3
        je      exit_b_high
        imul    rax, rax, 0x1d
        cmp     al, 5
        je      exit_b_high
        rol     rax, 9
        cmp     rax, rsi
        cmova   rax, rsi
        cmp     al, 7
        je      exit_b_high
        add     rax, rcx
        lea     rdx, [rax + rax*2 + 0x17]
        cmp     dl, 11
        je      exit_b_high
        xor     rax, rdx
        imul    rax, rax, 0x2b
        cmp     al, 13
        je      exit_b_high
        ror     rax, 5
        cmp     al, 17
        je      exit_b_high
        add     rax, [rip + asm_data + 32]
        cmp     al, 19
        je      exit_b_high
        cmp     al, 23
        je      exit_b_high
        cmp     al, 29
        je      exit_b_high
        cmp     al, 31
        je      exit_b_high
        cmp     al, 37
        je      exit_b_high
        mov     edx, ecx
lm_small:
        add     rax, rdx
        cmp     al, 0x40
        loopne  lm_small
lm_end:
        push    rax
        mov     rdi, rax
        mov     rsi, rcx
        call    helper
        pop     rdx
        add     rax, rdx
        lea     rdx, [rip + asm_out]
        mov     [rdx], rax
        ret
        .size   loops_mixed, .-loops_mixed

        .type   exit_b_high, @function
exit_b_high:
        mov     eax, 0x4444
        ret
        .size   exit_b_high, .-exit_b_high

/* uint64_t ecx_loops(uint64_t n, uint64_t step): with the address-size prefix, jecxz and loop
 * count in ecx; re-assembled from Capstone's text ("loop") they would count in rcx */
        .globl  ecx_loops
        .type   ecx_loops, @function
ecx_loops:
        mov     rcx, rdi
        xor     eax, eax
        jecxz   ecx_loops_done
ecx_loops_top:
        add     rax, rsi
        rol     rax, 5
        addr32 loop ecx_loops_top
ecx_loops_done:
        ret
        .size   ecx_loops, .-ecx_loops
        .section .note.GNU-stack,"",@progbits
"""
TRICKY = ("helper", "globals", "dispatch", "selects", "divide", "vector", "calls", "branchy",
          "loop_far", "loops_mixed", "ecx_loops", "main")
# Registers drawn in range where the random default would rarely reach the interesting code.
CHOOSE: dict[str, dict[str, Chooser]] = {
    "dispatch": {"rdi": lambda rng: rng.randrange(11)},
    "divide": {"rsi": lambda rng: rng.choice((0, -1, 1, 7, -3, rng.getrandbits(64))),
               "rdi": lambda rng: rng.choice((1 << 63, 100, -100, rng.getrandbits(64)))},
    "vector": {"rsi": lambda rng: rng.randrange(40)},
    # ecx small, rcx's upper half random
    "ecx_loops": {"rdi": lambda rng: rng.getrandbits(32) << 32 | rng.randrange(20)},
}


# ---------------------------------------------------------------------------------------------
# Helpers


@cache
def _image(path: str) -> Image:
    return load_image(path)


def _bias(image: Image) -> int:
    return PIE_BIAS if image.is_pie else 0


def _cfg(image: Image, name: str) -> FunctionCFG:
    sym = image.symbol(name)
    assert sym is not None and sym.kind == "func", name
    return function_cfg(image, sym)


def _name(cfg: FunctionCFG, at: int) -> str:
    return f"{cfg.name}+{at - cfg.entry:#x}" if at != cfg.entry else cfg.name


def regions_of(cfg: FunctionCFG) -> tuple[list[CodeRegion], list[str]]:
    """Every block region and every formable branch region of a function, and the refusals."""
    formed: list[CodeRegion] = []
    refused: list[str] = []
    for at in cfg.reachable:
        branches = (False, True) if cfg.blocks[at].last.flow is Flow.BRANCH else (False,)
        for branch in branches:
            try:
                formed.append(form_region(cfg, at, _name(cfg, at), branch))
            except RegionError as e:
                refused.append(str(e))
    return formed, refused


def whole(cfg: FunctionCFG) -> CodeRegion:
    """All reachable blocks of a function, as ``--translate-all`` translates them."""
    return CodeRegion(cfg.name, cfg, cfg.entry, tuple(sorted(cfg.reachable)), "function")


def run(sandbox: Sandbox, regions: Iterable[CodeRegion], states: int = STATES,
        choose: dict[str, dict[str, Chooser]] | None = None) -> list[Report]:
    """Relocate each region the harness can judge and compare it with its original."""
    reports = []
    for region in regions:
        if not comparable(region, sandbox.image):
            continue
        t = relocate(region, sandbox.bias, sandbox.place)
        seeds = (f"{region.cfg.name}:{region.kind}:{region.entry:#x}:{i}" for i in range(states))
        with RegionCheck(sandbox, region, t) as check:
            reports.append(check.check(seeds, (choose or {}).get(region.cfg.name)))
    return reports


def assert_equivalent(reports: list[Report], states: int = STATES) -> None:
    bad = [f"{r.region}: {m}" for r in reports for m in r.mismatches]
    assert not bad, f"{len(bad)} differing runs:\n" + "\n".join(bad[:10])
    compared = sum(r.compared for r in reports)
    assert compared >= 0.97 * states * len(reports), \
        f"only {compared} of {states * len(reports)} runs were conclusive"


@pytest.fixture(scope="module")
def tricky(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tricky-constructs program, built in both kinds."""
    directory = tmp_path_factory.mktemp("tricky")
    sources = {"tricky.c": TRICKY_C, "tricky.S": TRICKY_S}
    return {kind: compile_program(directory, "tricky", sources, kind) for kind in KINDS}


# ---------------------------------------------------------------------------------------------
# What the copy looks like


def _translations(tricky: dict[str, Path]) -> Iterable[tuple[int, CodeRegion, Translation]]:
    """Every formed and whole-function region of the tricky program and the test programs'
    own functions, relocated 256 MiB above the image."""
    paths = [tricky[k] for k in KINDS] + [BUILD / k / p for k in KINDS for p in sorted(PROGRAMS)]
    for path in paths:
        image = _image(str(path))
        bias = _bias(image)
        names = TRICKY if "tricky" in path.name else PROGRAMS[path.name]
        for name in names:
            if image.symbol(name) is None:
                continue
            cfg = _cfg(image, name)
            for region in [*regions_of(cfg)[0], whole(cfg)]:
                yield bias, region, relocate(region, bias, image.high + bias + 0x1000_0000)


def test_rip_relative_operands_reach_the_same_address(built: Path, tricky: dict[str, Path]
                                                      ) -> None:
    seen = 0
    for bias, region, t in _translations(tricky):
        originals = {i.address + bias: i for b in region.block_list() for i in b.insns}
        for at, orig_at in t.origin.items():
            orig = originals[orig_at]
            copy = decode(t.code[at - t.base:], at)
            assert copy is not None
            if orig.rip_target is None:
                if orig.flow in (Flow.NEXT, Flow.RETURN, Flow.STOP, Flow.INDIRECT_JUMP,
                                 Flow.INDIRECT_CALL):
                    assert copy.raw == orig.raw, f"{region.name}: {orig.text} changed"
                continue
            seen += 1
            assert copy.rip_target == orig.rip_target + bias, \
                f"{region.name}: {orig.text} at {orig_at:#x} became {copy.text} at {at:#x}"
            o = orig.disp_offset
            assert (copy.raw[:o], copy.raw[o + 4:]) == (orig.raw[:o], orig.raw[o + 4:])
            assert (copy.mnemonic, copy.size) == (orig.mnemonic, orig.size)
    assert seen > 100


def test_every_way_out_jumps_to_the_original_successor(built: Path, tricky: dict[str, Path]
                                                       ) -> None:
    """Walk each block's copy: branches reach the copy of an in-region target or the original
    target, calls call the original, and where a block's last instruction can continue, the
    copy of the next block follows or a ``jmp`` to the original next instruction does."""
    exits = 0
    for bias, region, t in _translations(tricky):
        decoded = {i.address: i for i in decode_all(t.code, t.base)}
        assert sum(i.size for i in decoded.values()) == len(t.code), region.name
        labels = {t.origin[a]: a for a in t.blocks}

        def resolve(target: int) -> int:
            return labels.get(target, target)  # noqa: B023

        for block in region.block_list():
            c = labels[block.start + bias]
            for insn in block.insns:
                assert t.origin.get(c) == insn.address + bias, (region.name, hex(c))
                copy = decoded[c]
                nxt = copy.next
                if insn.flow is Flow.BRANCH:
                    assert insn.target is not None and copy.mnemonic == insn.mnemonic
                    taken = copy.target
                    if insn.mnemonic in SHORT_ONLY:
                        # the original's bytes up to the rel8 (an address-size prefix stays)
                        assert copy.raw[:-1] == insn.raw[:-1], (region.name, insn.text)
                    if insn.mnemonic in SHORT_ONLY and taken == copy.next + 2:  # the far form
                        skip, far = decoded[copy.next], decoded[copy.next + 2]
                        assert (skip.mnemonic, skip.target) == ("jmp", far.next)
                        assert far.mnemonic == "jmp" and far.address not in t.origin
                        taken, nxt = far.target, far.next
                    assert taken == resolve(insn.target + bias), (region.name, insn.text)
                    exits += taken == insn.target + bias
                elif insn.flow is Flow.JUMP:
                    assert insn.target is not None
                    assert (copy.mnemonic, copy.target) == ("jmp", resolve(insn.target + bias))
                elif insn.flow is Flow.CALL:
                    assert insn.target is not None
                    assert (copy.mnemonic, copy.target) == ("call", insn.target + bias)
                c = nxt
            if block.last.flow in (Flow.NEXT, Flow.BRANCH, Flow.CALL, Flow.INDIRECT_CALL):
                follow = block.end + bias
                if c in t.origin:  # the next block's copy is laid out here
                    assert labels.get(follow) == c, (region.name, hex(follow))
                else:
                    jump = decoded[c]
                    assert (jump.mnemonic, jump.target) == ("jmp", resolve(follow)), \
                        (region.name, hex(follow))
                    exits += jump.target == follow
    assert exits > 100


def test_out_of_reach_branches_take_their_far_forms(tricky: dict[str, Path]) -> None:
    """Each exit grows from 2 to 6 bytes in the copy, so the loop bodies outgrow rel8: the
    short loop, jrcxz, jcc and jmp around them get far forms; the short loopne keeps its."""
    for kind in KINDS:
        image = _image(str(tricky[kind]))
        bias = _bias(image)
        symbols = nm_symbols(tricky[kind])
        place = image.high + bias + 0x1000_0000
        loop_far = relocate(whole(_cfg(image, "loop_far")), bias, place)
        loops_mixed = relocate(whole(_cfg(image, "loops_mixed")), bias, place)
        ecx_loops = relocate(whole(_cfg(image, "ecx_loops")), bias, place)
        # (translation, label, bytes before it, mnemonic, its size, the copy's size; +7: the
        # far sequence "loop L1; jmp L2; L1: jmp target; L2:")
        for t, label, back, mnemonic, size, copied in (
            (loop_far, "loop_far_body", 2, "jrcxz", 2, 9),
            (loop_far, "loop_far_done", 2, "loop", 2, 9),
            (loops_mixed, "lm_loop", 2, "jne", 2, 6),  # forward over lm_loop
            (loops_mixed, "lm_second", 4, "jne", 2, 6),  # backward to lm_loop
            (loops_mixed, "lm_second", 2, "jmp", 2, 5),  # forward over lm_second
            (loops_mixed, "lm_end", 2, "loopne", 2, 2),  # within reach: stays short
            (ecx_loops, "ecx_loops_top", 3, "jecxz", 3, 3),  # 67 e3: ecx, stays short
            (ecx_loops, "ecx_loops_done", 3, "loop", 3, 3),  # 67 e2: ecx, stays short
        ):
            address = symbols[label] - back
            insn = decode(image.read(address, size), address)
            assert insn is not None and (insn.mnemonic, insn.size) == (mnemonic, size), label
            at = next(a for a, o in t.origin.items() if o == address + bias)
            following = sorted(a for a in t.origin if a > at)
            end = following[0] if following else t.end
            copy = decode(t.code[at - t.base:], at)
            assert copy is not None and copy.mnemonic == mnemonic
            assert end - at == copied, f"{kind}: {insn.text} became {end - at} bytes"
            if copied == size + 7:
                assert copy.target == at + size + 2  # over the short jmp, to the near one
            if mnemonic in SHORT_ONLY:
                assert copy.raw[:-1] == insn.raw[:-1]  # prefixes and opcode kept


def test_rip_relative_operand_out_of_reach_is_an_error(tricky: dict[str, Path]) -> None:
    """Placed where a RIP-relative target is 2 GiB away, the copy is refused, not wrong; one
    byte nearer it is right."""
    image = _image(str(tricky["static-pie"]))
    bias = _bias(image)
    cfg = _cfg(image, "globals")
    region = form_region(cfg, cfg.entry, "globals", False)
    t = relocate(region, bias, image.high + bias + 0x1000_0000)
    rips = []
    for at, orig_at in t.origin.items():
        copy = decode(t.code[at - t.base:], at)
        assert copy is not None
        if copy.rip_target is not None:
            rips.append((at - t.base, copy.size, copy.rip_target, orig_at))
    assert rips
    # The copy below the image: the displacement to the farthest target is the limit.
    lowest = max(target - off - size - (1 << 31) + 1 for off, size, target, _ in rips)
    ok = relocate(region, bias, lowest)
    for at, orig_at in ok.origin.items():
        copy = decode(ok.code[at - ok.base:], at)
        orig = next(i for b in region.block_list() for i in b.insns
                    if i.address + bias == orig_at)
        assert copy is not None
        if orig.rip_target is not None:
            assert copy.rip_target == orig.rip_target + bias
    with pytest.raises(AssemblyError, match="RIP-relative target .* out of reach"):
        relocate(region, bias, lowest - 1)
    # Far above the image every RIP operand (and the exit jump) is out of reach.
    with pytest.raises(AssemblyError):
        relocate(region, bias, bias + (1 << 33))


def test_xbegin_is_not_relocated(built: Path) -> None:
    """A hand-made region with a hardware transaction (glibc's lock elision) is refused."""
    image = _image(str(BUILD / "static" / "sha256"))
    region = whole(_cfg(image, "__lll_lock_elision"))
    with pytest.raises(RegionError, match=r"^__lll_lock_elision: xbegin at 0x[0-9a-f]+ is not "
                                          r"relocated$"):
        relocate(region, 0, image.high + 0x1000_0000)


# ---------------------------------------------------------------------------------------------
# Differential runs (after the quick checks above: pytest-xdist hands out tests in file order)


@pytest.mark.parametrize("kind", KINDS)
def test_tricky_constructs_compute_what_the_original_computes(
        tricky: dict[str, Path], kind: str) -> None:
    image = _image(str(tricky[kind]))
    bias = _bias(image)
    sandbox = Sandbox(image, bias)
    regions: list[CodeRegion] = []
    for name in TRICKY:
        cfg = _cfg(image, name)
        regions += regions_of(cfg)[0]
        regions.append(whole(cfg))
    reports = run(sandbox, regions, choose=CHOOSE)
    assert len(reports) == len(regions) > 100
    assert_equivalent(reports)
    # The runs went where the constructs are: through the jump table into the original's
    # case blocks, out through the far exits, and back to the caller.
    by_name = {r.region: r for r in reports}
    assert by_name["dispatch"].reentries >= 10
    symbols = nm_symbols(tricky[kind])
    for name in ("loop_far", "loops_mixed"):
        check = _stops(sandbox, whole(_cfg(image, name)), 60)
        exits = {a - bias for a in check}
        assert SENTINEL in check, name
        assert exits & {symbols["exit_low"], symbols["exit_high"], symbols["exit_b_low"],
                        symbols["exit_b_high"]}, name


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_test_program_regions_compute_what_the_original_computes(
        built: Path, program: str, kind: str) -> None:
    """Every block and branch region of the program's own functions and each whole function,
    plus one region of each of LIBC_SAMPLE C library functions (all: LEAKDBT_DIFF_ALL=1)."""
    image = _image(str(BUILD / kind / program))
    sandbox = Sandbox(image, _bias(image))
    own = [n for n in PROGRAMS[program] if image.symbol(n) is not None]
    assert "main" in own and len(own) >= 2
    regions: list[CodeRegion] = []
    for name in own:
        cfg = _cfg(image, name)
        regions += regions_of(cfg)[0]
        regions.append(whole(cfg))
    kinds = {r.kind for r in regions}
    assert kinds == {"block", "branch", "function"}, kinds
    libc: list[CodeRegion] = []
    others = [sym for sym in image.functions if sym.name not in own]
    if not DIFF_ALL:
        others = random.Random(f"{program}:{kind}").sample(others, LIBC_SAMPLE)
    for sym in others:
        formed = regions_of(function_cfg(image, sym))[0]
        if DIFF_ALL:
            libc += formed
        elif formed:
            libc.append(random.Random(sym.name).choice(formed))
    assert all(comparable(r, image) for r in regions)
    reports = run(sandbox, regions + libc)
    assert len(reports) >= len(regions) + LIBC_SAMPLE // 2
    assert_equivalent(reports)


def _stops(sandbox: Sandbox, region: CodeRegion, states: int) -> set[int]:
    """Where the original of ``region`` stops, over ``states`` states."""
    t = relocate(region, sandbox.bias, sandbox.place)
    stops = set()
    with RegionCheck(sandbox, region, t) as check:
        for i in range(states):
            state = random_state(random.Random(f"stops:{region.name}:{i}"))
            stops.add(check.outcome(False, state).address)
    return stops


def test_wrong_translations_are_caught(built: Path) -> None:
    """The harness is not vacuous: small corruptions of a correct copy make runs differ."""
    image = _image(str(BUILD / "static" / "sha256"))
    sandbox = Sandbox(image, 0)
    formed: list[CodeRegion] = []
    for name in ("block", "sha_final", "main"):
        cfg = _cfg(image, name)
        formed += [whole(cfg), *regions_of(cfg)[0]]

    def mutant(t: Translation, pick: str) -> Translation | None:
        """``t`` with one corruption of kind ``pick`` (all exits for "exit"; None: nothing
        to corrupt)."""
        code = bytearray(t.code)
        changed = False
        for insn in decode_all(t.code, t.base):
            off = insn.address - t.base
            original = t.origin.get(insn.address)
            if pick == "displacement" and insn.rip_target is not None:
                d = off + insn.disp_offset
                code[d:d + 4] = ((int.from_bytes(code[d:d + 4], "little") + 4) & 0xFFFF_FFFF
                                 ).to_bytes(4, "little")
            elif pick == "condition" and insn.flow is Flow.BRANCH \
                    and insn.mnemonic not in SHORT_ONLY:
                code[off + insn.size - 5 if insn.size == 6 else off] ^= 1  # the opposite jcc
            elif pick == "lost" and insn.mnemonic in ("add", "xor", "ror") \
                    and original is not None:
                code[off:off + insn.size] = b"\x90" * insn.size
            elif pick == "exit" and original is None and insn.mnemonic == "jmp":
                # an exit to the original's successor that goes to the block after it instead
                assert insn.target is not None
                code[off + 1:off + 5] = ((insn.target + 4 - insn.next) & 0xFFFF_FFFF
                                         ).to_bytes(4, "little")
                changed = True
                continue
            else:
                continue
            return dataclasses.replace(t, code=bytes(code))
        return dataclasses.replace(t, code=bytes(code)) if changed else None

    for pick in ("displacement", "condition", "lost", "exit"):
        caught = tried = 0
        for region in formed:
            t = relocate(region, 0, sandbox.place)
            bad = mutant(t, pick)
            if bad is None:
                continue
            if tried == 8:
                break
            tried += 1
            with RegionCheck(sandbox, region, bad) as check:
                report = check.check(f"mutant:{pick}:{i}" for i in range(STATES))
            caught += bool(report.mismatches)
        # A corrupted exit shows only where some state reaches it (not past the entry cap of a
        # long loop, not after a fault), which about half of these regions do.
        share = 0.5 if pick == "exit" else 0.8
        assert tried == 8, pick
        assert caught >= share * tried, f"{pick}: caught {caught} of {tried} corrupted copies"
