"""plugins.bounded_loop on loops nested three deep: a secret early exit in the innermost
loop that leaves all three (``cube``), a secret break out of the middle loop and another
out of the innermost one (``planes``); each level's induction variables address the
buffers.  Differential runs against the original in raw Unicorn, the same instructions and
lines whatever the secret, and the refusals of nests too deep."""

from __future__ import annotations

import random

import pytest

from leakdbt.dbt.harden import Callees, region_view
from leakdbt.dbt.relocate import relocate
from leakdbt.loader.elf import load_image
from leakdbt.loader.image import Image
from leakdbt.plugin_api import Refusal, Rewrite
from plugins.bounded_loop import INNER_KEY, PASS
from plugins.support.loop_nest import MAX_DEPTH, nest
from tests.unit.dbt.harness import SCRATCH, RegionCheck, Sandbox, State, compile_program
from tests.unit.plugins.ifc_support import (
    CFLAGS,
    REG,
    harden,
    region_of,
    sandbox_for,
    state,
    trace,
    view_from_asm,
    view_of,
    with_memory,
)

SOURCE = r"""
/* equal planes?  The innermost loop's secret early exit leaves all three loops. */
__attribute__((noipa)) int cube(const unsigned char *a, const unsigned char *b,
                                unsigned long n, unsigned long m, unsigned long p) {
    do {
        const unsigned char *qa = a, *qb = b;
        unsigned long j = m;
        do {
            unsigned long k = 0;
            do {
                if (qa[k] != qb[k]) return 0;
            } while (++k < p);
            qa += 8;
            qb += 8;
        } while (--j);
        a += 64;
        b += 64;
    } while (--n);
    return 1;
}
/* a zero at a row's start ends the plane (the middle loop's secret break), a one ends the
   row (the innermost loop's); sums the bytes before */
__attribute__((noipa)) unsigned long planes(const unsigned char *a, unsigned long n,
                                            unsigned long m, unsigned long p) {
    unsigned long t = 0;
    do {
        const unsigned char *q = a;
        unsigned long j = m;
        do {
            if (q[0] == 0) break;
            unsigned long k = 0;
            do {
                if (q[k] == 1) break;
                t += q[k];
            } while (++k < p);
            q += 8;
        } while (--j);
        a += 64;
    } while (--n);
    return t;
}
/* a two ends the plane from the innermost loop: an exit that leaves two loops at once,
   skipping the middle loop's tail (t += 3) */
__attribute__((noipa)) unsigned long skip(const unsigned char *a, unsigned long n,
                                          unsigned long m, unsigned long p) {
    unsigned long t = 0;
    do {
        const unsigned char *q = a;
        unsigned long j = m;
        do {
            unsigned long k = 0;
            do {
                if (q[k] == 1) break;
                if (q[k] == 2) goto next_plane;
                t += q[k];
            } while (++k < p);
            q += 8;
        } while (--j);
        t += 3;
    next_plane:
        a += 64;
    } while (--n);
    return t;
}
/* a call in the innermost loop: a predicated clone of mix three loops down */
__attribute__((noinline)) unsigned long mix(unsigned long x) { return x * 3 + 1; }
__attribute__((noipa)) unsigned long mixed(const unsigned char *a, unsigned long n,
                                           unsigned long m, unsigned long p) {
    unsigned long t = 0;
    do {
        const unsigned char *q = a;
        unsigned long j = m;
        do {
            unsigned long k = 0;
            do {
                if (q[k] == 0) break;
                t += mix(q[k]);
            } while (++k < p);
            q += 8;
        } while (--j);
        a += 64;
    } while (--n);
    return t;
}
int main(void) { return 0; }
"""
# Shapes gcc does not emit: a secret back edge from the innermost loop straight to the
# middle loop's header (the middle loop tests its count at its header), and a secret exit
# from the innermost loop out of the region (its induction variable in the result).
ROWSKIP_S = r"""
        .intel_syntax noprefix
        .text
        .globl  rowskip
        .type   rowskip, @function
/* rowskip(a = rdi, n = rsi >= 1, m = rdx >= 1, p = rcx >= 1): sums bytes; a 1 skips the
   rest of its row, a 2 returns 1000 + its column */
rowskip:
        xor     eax, eax
rowskip_top:
        lea     r8, [rdi - 8]
        mov     r9, rdx
rowskip_mid:
        sub     r9, 1
        jb      rowskip_plane
        add     r8, 8
        xor     r10d, r10d
rowskip_in:
        movzx   r11d, byte ptr [r8 + r10]
        cmp     r11d, 1
        je      rowskip_mid
        cmp     r11d, 2
        je      rowskip_found
        add     rax, r11
        add     r10, 1
        cmp     r10, rcx
        jb      rowskip_in
        xor     rax, r9
        jmp     rowskip_mid
rowskip_plane:
        add     rdi, 64
        sub     rsi, 1
        jne     rowskip_top
        ret
rowskip_found:
        lea     rax, [r10 + 1000]
        ret
        .size   rowskip, .-rowskip
"""
A, B = SCRATCH + 0x1000, SCRATCH + 0x1200
PLANES, ROWS, COLS = 3, 4, 8  # the bounds: outer, middle, innermost


@pytest.fixture(scope="module", params=["static", "static-pie"])
def program(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Image:
    directory = tmp_path_factory.mktemp("deep")
    return load_image(str(compile_program(directory, "deep", {"deep.c": SOURCE,
                                                               "rowskip.S": ROWSKIP_S},
                                          request.param, CFLAGS)))


@pytest.fixture(scope="module")
def sandbox(program: Image) -> Sandbox:
    return sandbox_for(program)


def _key(delta: int) -> str:
    return f"{INNER_KEY}+{delta:#x}" if delta >= 0 else f"{INNER_KEY}-{-delta:#x}"


def _params(program: Image, function: str, rows: int = ROWS
            ) -> dict[str, int | str | bool]:
    """bound = PLANES, the middle loop's ROWS, the innermost loop's COLS."""
    region = region_of(program, function, loop=True)
    shape = nest(region.entry, view_of(region, 0, "loop").blocks, 0)
    assert len(shape.inners) == 2
    middle = next(i for i in shape.inners if i.parent is None)
    inner = next(i for i in shape.inners if i.parent == middle.header)
    assert inner in middle.children and inner.members < middle.members
    return {"bound": PLANES, _key(middle.header - region.entry): rows,
            _key(inner.header - region.entry): COLS}


# The first instruction of each outer header: the states below fit this code.
ENTRY = {"cube": "mov r11, rcx", "planes": "mov r8, r11", "skip": "mov r10, rdx",
         "mixed": "mov r9, rbx", "rowskip": "lea r8, [rdi - 8]"}


def _hardened(program: Image, sandbox: Sandbox, function: str, rows: int = ROWS
              ) -> RegionCheck:
    """The region hardened, its calls cloned (the program's own functions as callees)."""
    region = region_of(program, function, loop=True)
    first = next(b for b in region.block_list() if b.start == region.entry).insns[0]
    assert f"{first.mnemonic} {first.op_str}" == ENTRY[function]
    callees = Callees(program)
    view = region_view(region, "loop", sandbox.bias, _params(program, function, rows), None,
                       program, callees)
    rewrite = harden(PASS, view)
    assert isinstance(rewrite, Rewrite), rewrite
    t = relocate(region, sandbox.bias, sandbox.place, dict(rewrite.replace), rewrite.code,
                 callees.instructions())
    # a call clobbers the red zone: compare the stack from RSP down only without one
    return RegionCheck(sandbox, region, t, scratch_below_red_zone=True,
                       dead_below=0 if function == "mixed" else 128)


def _pair(rng: random.Random) -> tuple[bytes, bytes]:
    """Two PLANES x 64 buffers, equal or differing at a few random bytes."""
    a = bytes(rng.randrange(256) for _ in range(64 * PLANES))
    b = bytearray(a)
    for _ in range(rng.choice([0, 0, 1, 1, 2, 4])):
        b[rng.randrange(64 * PLANES)] ^= 1 + rng.randrange(255)
    return a, bytes(b)


def _cube_state(seed: str) -> State:
    """At cube's outer header: r10 = a, rsi = b, rdx = n, rcx = m, r8 = p."""
    rng = random.Random(seed)
    a, b = _pair(rng)
    s = state(seed, r10=A, rsi=B, rdx=rng.randrange(1, PLANES + 1),
              rcx=rng.randrange(1, ROWS + 1), r8=rng.randrange(1, COLS + 1))
    return with_memory(with_memory(s, A, a), B, b)


def _planes_state(seed: str) -> State:
    """At planes' outer header: r10 = a, r9 = n, r11 = m, rdi = p, rcx = t."""
    rng = random.Random(seed)
    data = bytes(rng.choice([0, 1, 2, 7, 9, 200, 255]) if rng.random() < 0.15
                 else rng.randrange(2, 256) for _ in range(64 * PLANES))
    s = state(seed, r10=A, r9=rng.randrange(1, PLANES + 1), r11=rng.randrange(1, ROWS + 1),
              rdi=rng.randrange(1, COLS + 1), rcx=rng.randrange(1 << 20))
    return with_memory(s, A, data)


def _bytes(rng: random.Random) -> bytes:
    """PLANES x 64 bytes, a few of them 0, 1 or 2 (the secret breaks and exits)."""
    return bytes(rng.choice([0, 1, 2, 9]) if rng.random() < 0.1 else rng.randrange(3, 256)
                 for _ in range(64 * PLANES))


def _skip_state(seed: str) -> State:
    """At skip's outer header: r11 = a, rsi = n, rdx = m, rcx = p, r8 = t."""
    rng = random.Random(seed)
    s = state(seed, r11=A, rsi=rng.randrange(1, PLANES + 1), rdx=rng.randrange(1, ROWS + 1),
              rcx=rng.randrange(1, COLS + 1), r8=rng.randrange(1 << 20))
    return with_memory(s, A, _bytes(rng))


def _mixed_state(seed: str) -> State:
    """At mixed's outer header: r10 = a, r11 = n, rbx = m, r8 = p, rcx = t."""
    rng = random.Random(seed)
    s = state(seed, r10=A, r11=rng.randrange(1, PLANES + 1), rbx=rng.randrange(1, ROWS + 1),
              r8=rng.randrange(1, COLS + 1), rcx=rng.randrange(1 << 20))
    return with_memory(s, A, _bytes(rng))


def _rowskip_state(seed: str) -> State:
    """At rowskip's outer header: rdi = a, rsi = n, rdx = m, rcx = p, rax = t."""
    rng = random.Random(seed)
    s = state(seed, rdi=A, rsi=rng.randrange(1, PLANES + 1), rdx=rng.randrange(1, ROWS + 1),
              rcx=rng.randrange(1, COLS + 1), rax=rng.randrange(1 << 20))
    return with_memory(s, A, _bytes(rng) + bytes(rng.randrange(3, 256) for _ in range(64)))


STATES = {"cube": _cube_state, "planes": _planes_state, "skip": _skip_state,
          "mixed": _mixed_state, "rowskip": _rowskip_state}
RESULT = {"cube": "rax", "planes": "rcx", "skip": "r8", "mixed": "rcx", "rowskip": "rax"}
# rowskip's middle header runs once more than its rows (its test leaves there)
MIDDLE = {"rowskip": ROWS + 1}


@pytest.mark.parametrize("function", sorted(STATES))
def test_three_deep_nests_compute_what_the_original_computes(
        program: Image, sandbox: Sandbox, function: str) -> None:
    states = [(f"deep:{function}:{i}", STATES[function](f"deep:{function}:{i}"))
              for i in range(300)]
    check = _hardened(program, sandbox, function, MIDDLE.get(function, ROWS))
    with check:
        report = check.compare(states)
        results = {check.outcome(False, s).gprs[REG[RESULT[function]]] for _, s in states}
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared == len(states)
    assert len(results) >= 2  # different secrets gave different results


def _cube_fixed(at: int | None) -> State:
    a = bytes(range(64 * PLANES))
    b = bytearray(a)
    if at is not None:
        b[at] ^= 0xff
    s = state("same", r10=A, rsi=B, rdx=PLANES, rcx=ROWS, r8=COLS)
    return with_memory(with_memory(s, A, a), B, bytes(b))


def test_a_secret_exit_from_the_innermost_loop_shows_nowhere(
        program: Image, sandbox: Sandbox) -> None:
    """cube with the first difference in plane 0, row 0; plane 1, row 2; plane 2, row 3;
    or none: the original's trip counts show, the copy's instructions and lines do not."""
    check = _hardened(program, sandbox, "cube")
    states = [_cube_fixed(at) for at in (1, 64 + 19, 128 + 31, None)]
    with check:
        orig = [trace(check, s, copy=False) for s in states]
        copy = [trace(check, s, copy=True) for s in states]
        outs = [check.outcome(True, s) for s in states]
    # rax = k where the copy left: byte 1, 3 or 7 of its row, or 8 (all equal)
    assert [o.gprs[REG["rax"]] for o in outs] == [1, 3, 7, 8]
    assert outs[0].address == outs[1].address == outs[2].address != outs[3].address
    assert len({o[0] for o in orig}) == len(states)
    assert len({c[0] for c in copy}) == 1  # same instructions in the same order
    assert len({c[1] for c in copy}) == 1  # same cache lines, read/write, same order


def test_a_secret_break_from_the_middle_loop_shows_nowhere(
        program: Image, sandbox: Sandbox) -> None:
    """planes with a zero starting row 0, 2 or no row of each plane, and ones inside rows:
    the same instructions and lines."""
    check = _hardened(program, sandbox, "planes")
    states = []
    for zero_row, one_at in ((0, 3), (2, 5), (None, 1), (None, None)):
        data = bytearray(b"\x05" * (64 * PLANES))
        for plane in range(PLANES):
            if zero_row is not None:
                data[64 * plane + 8 * zero_row] = 0
            if one_at is not None:
                data[64 * plane + 8 + one_at] = 1
        s = state("mid", r10=A, r9=PLANES, r11=ROWS, rdi=COLS, rcx=0)
        states.append(with_memory(s, A, bytes(data)))
    with check:
        orig = [trace(check, s, copy=False) for s in states]
        copy = [trace(check, s, copy=True) for s in states]
        outs = [check.outcome(True, s) for s in states]
    # t, per plane: nothing (row 0 starts with a zero); row 0 and row 1 up to its one
    # at column 5, then row 2's zero; rows 0, 2, 3 and row 1 up to column 1; 4 full rows
    assert [o.gprs[REG["rcx"]] for o in outs] == [0, PLANES * 5 * (8 + 5),
                                                   PLANES * 5 * (3 * 8 + 1),
                                                   PLANES * 5 * ROWS * 8]
    assert len({o[0] for o in orig}) == len(states)
    assert len({c[0] for c in copy}) == 1
    assert len({c[1] for c in copy}) == 1


def test_a_wrong_middle_bound_goes_on_in_the_original_middle_loop(
        program: Image, sandbox: Sandbox) -> None:
    """A middle bound below m: the copy leaves for the original middle header, in the
    state the original has there (correct, but it leaks)."""
    check = _hardened(program, sandbox, "cube", rows=2)
    region = region_of(program, "cube", loop=True)
    shape = nest(region.entry, view_of(region, 0, "loop").blocks, 0)
    middle = next(i for i in shape.inners if i.parent is None)
    s = _cube_fixed(None)
    with check:
        out = check.outcome(True, s)
    assert out.kind == "exit" and out.address == middle.header + sandbox.bias
    assert out.gprs[REG["r11"]] == ROWS - 2  # two rows of the first plane ran
    assert out.gprs[REG["r9"]] == B + 16


# -- the nest's shape and refusals -----------------------------------------------------------

# Four loops: top (the region's), mid, inner, core; each counts down from 4.
FOUR = ["top:", "mov eax, 4", "mid:", "mov edx, 4", "inner:", "mov esi, 4", "core:",
        "dec rsi", "jne core", "dec rdx", "jne inner", "dec rax", "jne mid", "dec rdi",
        "jne top", "jmp 0x13000"]
FIVE = ["top:", "mov eax, 4", "mid:", "mov edx, 4", "inner:", "mov esi, 4", "core:",
        "mov ecx, 4", "deepest:", "dec rcx", "jne deepest", "dec rsi", "jne core",
        "dec rdx", "jne inner", "dec rax", "jne mid", "dec rdi", "jne top", "jmp 0x13000"]


def _bounds(lines: list[str]) -> dict[str, int | str | bool]:
    shape = nest(0x10000, view_from_asm(lines, "loop", "loop", {"bound": 4}).blocks, 0)
    return {"bound": 4, **{_key(i.header - 0x10000): 4 for i in shape.inners}}


def test_the_nest_knows_each_loops_parent() -> None:
    shape = nest(0x10000, view_from_asm(FOUR, "loop", "loop", {"bound": 4}).blocks, 0)
    by_header = {i.header: i for i in shape.inners}
    mid, inner, core = sorted(by_header)
    assert by_header[mid].parent is None and by_header[inner].parent == mid
    assert by_header[core].parent == inner
    assert shape.inner_of(core) is by_header[core]  # the innermost loop holding it
    assert [i.header for i in shape.ancestors(by_header[core])] == [inner, mid]
    assert [n for n in shape.order if not hasattr(n, "start")] == [by_header[mid]]


def test_four_deep_is_accepted() -> None:
    assert MAX_DEPTH == 4
    result = harden(PASS, view_from_asm(FOUR, "loop", "loop", _bounds(FOUR)))
    assert isinstance(result, Rewrite), result


def test_five_deep_is_refused() -> None:
    result = harden(PASS, view_from_asm(FIVE, "loop", "loop", {"bound": 4}))
    assert isinstance(result, Refusal), result
    assert result.reason == ("loops are nested more than 4 deep: the inner loop at 0x1000f "
                             "holds another loop at 0x10014, 5 levels down"), result.reason


def test_every_level_needs_its_bound() -> None:
    params = _bounds(FOUR)
    core = max(k for k in params if k.startswith(INNER_KEY))
    del params[core]
    result = harden(PASS, view_from_asm(FOUR, "loop", "loop", params))
    assert isinstance(result, Refusal), result
    assert f"(the region's at {core[len(INNER_KEY):]}) needs a bound" in result.reason


def test_a_back_edge_from_the_innermost_loop_to_the_middle_header(
        program: Image, sandbox: Sandbox) -> None:
    """rowskip: the innermost loop's header jumps back to the middle header (a 1 skips the
    rest of the row) and leaves the region (a 2); both ways, and the plain one, give the
    original's results, with the same instructions and lines."""
    region = region_of(program, "rowskip", loop=True)
    shape = nest(region.entry, view_of(region, 0, "loop").blocks, 0)
    middle = next(i for i in shape.inners if i.parent is None)
    inner = next(i for i in shape.inners if i.parent == middle.header)
    assert inner.header in middle.latches  # the back edge from the innermost loop
    check = _hardened(program, sandbox, "rowskip", ROWS + 1)
    states = []
    for special in ({}, {8 + 2: 1, 64 + 3: 1}, {64 + 8 + 5: 2}, {0: 1, 64 + 16: 2}):
        data = bytearray(b"\x07" * (64 * PLANES + 64))
        for at, value in special.items():
            data[at] = value
        s = state("skip", rdi=A, rsi=2, rdx=3, rcx=COLS, rax=0)
        states.append(with_memory(s, A, bytes(data)))
    with check:
        orig = [check.outcome(False, s) for s in states]
        outs = [check.outcome(True, s) for s in states]
        copy = [trace(check, s, copy=True) for s in states]
    assert all(o.kind == "exit" for o in orig + outs)
    regs = [REG[r] for r in ("rax", "rdi", "rsi", "r8", "r9", "r10", "r11")]
    assert [[o.gprs[r] for r in regs] for o in outs] == [[o.gprs[r] for r in regs]
                                                         for o in orig]
    assert [o.address for o in outs] == [o.address for o in orig]
    assert outs[0].address == outs[1].address != outs[2].address == outs[3].address
    assert [o.gprs[REG["r10"]] for o in outs[2:]] == [5, 0]  # the 2's column
    assert outs[0].gprs[REG["rax"]] != outs[1].gprs[REG["rax"]]  # the skips showed
    assert len({c[0] for c in copy}) == 1
    assert len({c[1] for c in copy}) == 1


# The middle loop loads its row pointer from memory (not an induction variable): the
# innermost loop's address through it is refused; started from the outer pointer, it
# is the middle loop's induction variable and accepted.
LOADED_ROW = ["top:", "mov eax, 4", "mid:", "mov rdx, qword ptr [rsi]", "xor ecx, ecx",
              "inner:", "cmp byte ptr [rdx + rcx], 0x30", "jne next", "inc rcx",
              "cmp rcx, 8", "jne inner", "next:", "dec rax", "jne mid", "add rsi, 8",
              "dec rdi", "jne top", "jmp 0x13000"]


def test_an_innermost_address_from_what_the_middle_loop_computes_is_refused() -> None:
    result = harden(PASS, view_from_asm(LOADED_ROW, "loop", "loop", _bounds(LOADED_ROW)))
    assert isinstance(result, Refusal), result
    assert "its address depends on rdx, which the loop computes (not an induction " \
           "variable)" in result.reason, result.reason
    started = ["top:", "mov eax, 4", "lea rdx, [rsi + 0x10]", "mid:", "add rdx, 8",
               *LOADED_ROW[4:]]
    assert isinstance(harden(PASS, view_from_asm(started, "loop", "loop", _bounds(started))),
                      Rewrite)
