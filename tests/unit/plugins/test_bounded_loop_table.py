"""plugins.support.loop_table in bounded-loop: a decoder loop's table lookup at an index the
loop computes (``movsx eax, byte ptr [rdx + rax]``, RDX the table, fixed) runs as a scan of
the table's 64-byte units in every iteration.  Differential runs (original vs hardened on
random states, with the table's bounds known, unknown, or the index anywhere) agree; the
masked iterations read only the table's lines; the lines and instructions are the same
whatever the secret exit point; the refusal for other computed addresses stays."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_READ, Uc
from unicorn import x86_const as x

from leakdbt.loader.image import Image
from leakdbt.plugin_api import Refusal, Rewrite
from plugins.bounded_loop import PASS
from tests.unit.dbt.harness import GPRS, SCRATCH, RegionCheck, Sandbox, State
from tests.unit.plugins.ifc_support import (
    REG,
    build,
    harden,
    region_of,
    sandbox_for,
    state,
    trace,
    translate,
    view_from_asm,
    view_of,
    with_memory,
)

SOURCE = r"""
__attribute__((noinline, optimize("no-tree-ch")))  /* the header tests p != end */
long firstval(const unsigned char *p, const unsigned char *end, const signed char *t) {
    while (p != end) {
        unsigned char c = (unsigned char)(*p++ - 43);
        if (c < 80) { signed char v = t[c]; if (v >= 0) return v * 1000 + (end - p); }
    }
    return -1;
}
int main(void) { return 0; }
"""
TEXT, TABLE = SCRATCH + 0x1000, SCRATCH + 0x2010  # the table straddles 64-byte lines
SIZE = 80


@pytest.fixture(scope="module", params=["static", "static-pie"])
def program(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Image:
    return build(tmp_path_factory.mktemp("tabloop"), "tabloop", SOURCE, request.param)


@pytest.fixture(scope="module")
def sandbox(program: Image) -> Sandbox:
    return sandbox_for(program)


def _hardened(program: Image, sandbox: Sandbox, bound: int | str) -> RegionCheck:
    region = region_of(program, "firstval", loop=True)
    rewrite = harden(PASS, view_of(region, sandbox.bias, "loop", {"bound": bound}))
    assert isinstance(rewrite, Rewrite), rewrite
    check = RegionCheck(sandbox, region, translate(sandbox, region, rewrite),
                        scratch_below_red_zone=True)
    # The out-of-range path runs the header, then the original loop (copy + original rest).
    copy_only, orig = check.copy_inside, check.original_inside
    check.allow_reentry = True
    check.copy_inside = lambda a: copy_only(a) or orig(a)
    return check


@contextmanager
def _bounds(uc: Uc, check: RegionCheck, known: bool) -> Iterator[None]:
    """The ``.bounds`` line writes the table's (start, size) when the base is in it (as
    leakdbt.run.allocations would for a sized data object), else (0, 0)."""
    regs = dict(GPRS)

    def hook(uc_: Uc, address: int, size: int, _: object) -> None:
        register, offset, _mapped = check.t.probes[address]
        value = uc_.reg_read(regs[register])
        start, length = (TABLE, SIZE) if known and TABLE <= value < TABLE + SIZE else (0, 0)
        rsp = uc_.reg_read(x.UC_X86_REG_RSP)
        uc_.mem_write(rsp - offset, start.to_bytes(8, "little") + length.to_bytes(8, "little"))

    assert check.t.probes
    handles = [uc.hook_add(UC_HOOK_CODE, hook, None, a, a) for a in check.t.probes]
    uc.ctl_flush_tb()
    try:
        yield
    finally:
        for h in handles:
            uc.hook_del(h)
        uc.ctl_flush_tb()


def _state(seed: str, exit_at: int | None = None, n: int | None = None) -> State:
    """Text at TEXT (n characters, of them some outside the table's range, and a value
    the table maps to >= 0 at ``exit_at``), the table at TABLE (mostly -1)."""
    rng = random.Random(seed)
    n = rng.randrange(41) if n is None else n
    table = bytes((rng.randrange(64) if rng.random() < 0.2 else 0xFF) for _ in range(SIZE))
    good = [c for c in range(SIZE) if table[c] < 0x80]
    bad = [c for c in range(SIZE) if table[c] >= 0x80]
    text = bytearray((43 + rng.choice(bad)) if rng.random() < 0.8 else rng.randrange(256)
                     for _ in range(64))
    for k in range(len(text)):
        if (text[k] - 43) % 256 < SIZE and table[(text[k] - 43) % 256] < 0x80:
            text[k] = 43 + rng.choice(bad)
    if exit_at is None and n and rng.random() < 0.7:
        exit_at = rng.randrange(n)
    if exit_at is not None and good:
        text[exit_at] = 43 + rng.choice(good)
    s = state(seed, rdi=TEXT, rsi=TEXT + n, rdx=TABLE)
    return with_memory(with_memory(s, TEXT, bytes(text)), TABLE, table)


@pytest.mark.parametrize("bound", ["rsi - rdi", 41])
@pytest.mark.parametrize("known", [True, False])
def test_table_loop_computes_what_the_original_computes(
        program: Image, sandbox: Sandbox, bound: int | str, known: bool) -> None:
    check = _hardened(program, sandbox, bound)
    states = [(f"tab:{i}", _state(f"tab:{i}")) for i in range(150)]
    with check, _bounds(sandbox.uc, check, known):
        report = check.compare(states)
        results = {check.outcome(False, s).gprs[REG["rdi"]] for _, s in states}
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared == len(states)
    assert len(results) >= 10


def test_random_registers_and_memory(program: Image, sandbox: Sandbox) -> None:
    """Wild states: random text, random table pointer (bounds then unknown) and ends."""
    check = _hardened(program, sandbox, "rsi - rdi")
    states = []
    for i in range(150):
        seed = f"tab-wild:{i}"
        rng = random.Random(seed)
        text = bytes(rng.randrange(256) for _ in range(256))
        s = state(seed, rdi=TEXT, rsi=TEXT + rng.randrange(0, 120),
                  rdx=rng.choice([TABLE, TABLE + rng.randrange(-40, 40), SCRATCH + 0x3000]))
        states.append((seed, with_memory(s, TEXT, text)))
    with check, _bounds(sandbox.uc, check, True):
        report = check.compare(states)
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared >= 140


def _reads_near_table(check: RegionCheck, uc: Uc, s: State) -> list[int]:
    reads: list[int] = []

    def on_read(uc_: Any, access: int, address: int, size: int, value: int, _: Any) -> None:
        if TABLE - 0x400 <= address < TABLE + 0x400:
            reads.append(address)

    hook = uc.hook_add(UC_HOOK_MEM_READ, on_read)
    try:
        with check, _bounds(uc, check, True):
            check.outcome(True, s)
    finally:
        uc.hook_del(hook)
    return reads


def test_masked_iterations_read_only_the_tables_lines(program: Image, sandbox: Sandbox
                                                      ) -> None:
    """Characters far outside the table's range after the exit: the masked iterations'
    indexes point anywhere, but the copy reads only lines that hold the table."""
    check = _hardened(program, sandbox, "rsi - rdi")
    s = _state("masked", exit_at=0, n=30)
    s = with_memory(s, TEXT + 1, bytes([0x2A, 0xFF, 0x00, 0x80] * 7))
    reads = _reads_near_table(check, sandbox.uc, s)
    lines = {a >> 6 for a in reads}
    assert reads and lines == {a >> 6 for a in range(TABLE, TABLE + SIZE)}


def test_same_lines_and_instructions_whatever_the_exit(program: Image, sandbox: Sandbox
                                                       ) -> None:
    check = _hardened(program, sandbox, "rsi - rdi")
    states = [_state("same", exit_at=k, n=20) for k in (0, 3, 11, 19)]
    with _bounds(sandbox.uc, check, True):
        orig = [trace(check, s, copy=False) for s in states]
        copy = [trace(check, s, copy=True) for s in states]
    assert len({o[0] for o in orig}) == len(states)
    assert len({c[0] for c in copy}) == 1
    assert len({c[1] for c in copy}) == 1


def test_other_computed_addresses_are_still_refused() -> None:
    """A store, or a load whose base the loop computes, at a computed address: refused."""
    store = ["top:", "cmp rdi, rsi", "je 0x13000", "movzx eax, byte ptr [rdi]", "add rdi, 1",
             "mov byte ptr [rdx + rax], 1", "jmp top"]
    chase = ["top:", "cmp rdi, rsi", "je 0x13000", "mov rdx, qword ptr [rdx + rax]",
             "add rdi, 1", "jmp top"]
    for lines, reg in ((store, "rax"), (chase, "rdx")):
        result = harden(PASS, view_from_asm(lines, "loop", "loop", {"bound": "rsi - rdi"}))
        assert isinstance(result, Refusal), result
        assert f"its address depends on {reg}, which the loop computes" in result.reason
