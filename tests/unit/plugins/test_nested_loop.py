"""plugins.bounded_loop on nested loops: a public outer loop around an inner loop whose trip
count is secret (a leading-zero scan), an inner loop with a secret early exit that leaves
both loops (row comparison) or only itself (first difference per row).  Differential runs
against the original in raw Unicorn, the same instructions and lines whatever the secret,
and the refusals of nests the pass cannot run."""

from __future__ import annotations

import random
from typing import Any

import pytest
from unicorn import UC_HOOK_MEM_READ

from leakdbt.loader.image import Image
from leakdbt.plugin_api import Refusal, Rewrite
from plugins.bounded_loop import INNER_KEY, PASS
from plugins.support.loop_nest import nest
from tests.unit.dbt.harness import SCRATCH, RegionCheck, Sandbox, State
from tests.unit.plugins.ifc_support import (
    REG,
    build,
    harden,
    region_of,
    run_hooked,
    sandbox_for,
    state,
    trace,
    translate,
    view_from_asm,
    view_of,
    with_memory,
)

SOURCE = r"""
/* leading '0' digits of each 8-digit limb, summed: public outer loop, secret inner count */
__attribute__((noinline)) unsigned long lz(const unsigned char *s, unsigned long n) {
    unsigned long total = 0;
    for (unsigned long i = 0; i < n; i++) {
        unsigned long j = 0;
        while (j < 8 && s[8 * i + j] == '0') j++;
        total += j;
    }
    return total;
}
/* rows equal?  A secret early exit from the inner loop leaves both loops. */
__attribute__((noinline)) int rows(const unsigned char *a, const unsigned char *b,
                                   unsigned long n) {
    for (unsigned long i = 0; i < n; i++)
        for (unsigned long j = 0; j < 8; j++)
            if (a[8 * i + j] != b[8 * i + j]) return 0;
    return 1;
}
/* the first difference of each row: a secret break out of the inner loop only */
__attribute__((noinline)) unsigned long firstdiff(const unsigned char *a,
                                                  const unsigned char *b, unsigned long n) {
    unsigned long t = 0;
    for (unsigned long i = 0; i < n; i++) {
        unsigned long j;
        for (j = 0; j < 8; j++)
            if (a[8 * i + j] != b[8 * i + j]) break;
        t = t * 9 + j;
    }
    return t;
}
/* significant digits of each 16-digit limb: gcc duplicates the outer latch (two
   `add rdi, 16`, one after each exit of the inner loop) */
__attribute__((noinline)) unsigned long significant(const char *hex, unsigned long limbs) {
    unsigned long total = 0;
    for (unsigned long i = 0; i < limbs; i++) {
        const char *p = hex + 16 * i;
        unsigned long j = 0;
        while (j < 16 && p[j] == '0') j++;
        total += 16 - j;
    }
    return total;
}
int main(void) { return 0; }
"""
A, B = SCRATCH + 0x1000, SCRATCH + 0x1100
ROWS = 4  # the outer bound: at most 4 rows of 8 bytes
INNER = 8


@pytest.fixture(scope="module", params=["static", "static-pie"])
def program(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Image:
    return build(tmp_path_factory.mktemp("nest"), "nest", SOURCE, request.param)


@pytest.fixture(scope="module")
def sandbox(program: Image) -> Sandbox:
    return sandbox_for(program)


def _inner_bound(function: str) -> int:
    return 16 if function == "significant" else INNER


def _params(program: Image, function: str, inner: int | None = None
            ) -> dict[str, int | str | bool]:
    """bound = ROWS and the inner loop's bound, keyed by its offset from the header."""
    region = region_of(program, function, loop=True)
    shape = nest(region.entry, view_of(region, 0, "loop").blocks, 0)
    assert len(shape.inners) == 1
    delta = shape.inners[0].header - region.entry
    key = f"{INNER_KEY}+{delta:#x}" if delta >= 0 else f"{INNER_KEY}-{-delta:#x}"
    return {"bound": ROWS, key: inner or _inner_bound(function)}


def _hardened(program: Image, sandbox: Sandbox, function: str, inner: int | None = None
              ) -> RegionCheck:
    region = region_of(program, function, loop=True)
    view = view_of(region, sandbox.bias, "loop", _params(program, function, inner))
    rewrite = harden(PASS, view)
    assert isinstance(rewrite, Rewrite), rewrite
    return RegionCheck(sandbox, region, translate(sandbox, region, rewrite),
                       scratch_below_red_zone=True)


def _digits(rng: random.Random) -> bytes:
    """ROWS limbs of 8 hex digits, each with a random run of leading '0's."""
    out = b""
    for _ in range(ROWS):
        zeros = rng.choice([0, 0, 1, 2, 3, 5, 7, 8, 8])
        out += b"0" * zeros + bytes(rng.choice(b"0123456789abcdef") for _ in range(8 - zeros))
    return out


def _lz_state(seed: str) -> State:
    """At lz's outer header: rdi = s, rcx = s + 8 n (the end), rdx = the total so far."""
    rng = random.Random(seed)
    n = rng.randrange(1, ROWS + 1)
    s = state(seed, rdi=A, rcx=A + 8 * n, rdx=rng.randrange(1 << 20))
    return with_memory(s, A, _digits(rng))


def _pair(rng: random.Random) -> tuple[bytes, bytes]:
    """Two ROWS x 8 buffers, equal or differing at a few random bytes."""
    a = bytes(rng.randrange(256) for _ in range(8 * ROWS))
    b = bytearray(a)
    for _ in range(rng.choice([0, 0, 1, 1, 2, 4])):
        b[rng.randrange(8 * ROWS)] ^= 1 + rng.randrange(255)
    return a, bytes(b)


def _rows_state(seed: str) -> State:
    """At rows' outer header: rdi = a, rsi = b, rdx = n, rcx = i = 0."""
    rng = random.Random(seed)
    a, b = _pair(rng)
    s = state(seed, rdi=A, rsi=B, rdx=rng.randrange(1, ROWS + 1), rcx=0)
    return with_memory(with_memory(s, A, a), B, b)


def _firstdiff_state(seed: str) -> State:
    """At firstdiff's outer header: rdi = a, rsi = b, rcx = 8 i = 0, r8 = 8 n, rax = t."""
    rng = random.Random(seed)
    a, b = _pair(rng)
    s = state(seed, rdi=A, rsi=B, rcx=0, r8=8 * rng.randrange(1, ROWS + 1),
              rax=rng.randrange(1 << 20))
    return with_memory(with_memory(s, A, a), B, b)


def _significant_state(seed: str) -> State:
    """At significant's outer header: rdi = hex, rcx = hex + 16 limbs, rax = the total."""
    rng = random.Random(seed)
    limbs = rng.randrange(1, ROWS + 1)
    text = b""
    for _ in range(ROWS):
        zeros = rng.choice([0, 1, 3, 8, 15, 16, 16])
        text += b"0" * zeros + bytes(rng.choice(b"123456789abcdef") for _ in range(16 - zeros))
    s = state(seed, rdi=A, rcx=A + 16 * limbs, rax=rng.randrange(1 << 20))
    return with_memory(s, A, text)


STATES = {"lz": _lz_state, "rows": _rows_state, "firstdiff": _firstdiff_state,
          "significant": _significant_state}


@pytest.mark.parametrize("function", sorted(STATES))
def test_nested_loops_compute_what_the_original_computes(
        program: Image, sandbox: Sandbox, function: str) -> None:
    states = [(f"nest:{function}:{i}", STATES[function](f"nest:{function}:{i}"))
              for i in range(200)]
    check = _hardened(program, sandbox, function)
    with check:
        report = check.compare(states)
        results = {check.outcome(False, s).gprs[REG["rax"]] for _, s in states}
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared == len(states)
    assert len(results) >= 2  # different secrets gave different results


def test_secret_inner_trip_counts_run_and_touch_the_same(program: Image, sandbox: Sandbox
                                                          ) -> None:
    """Same public n = ROWS, limbs with 0, 3 and 8 leading zeros: the original's inner trip
    counts show, the copy's instructions and lines do not."""
    check = _hardened(program, sandbox, "lz")
    states = []
    for zeros in (0, 3, 8):
        limb = b"0" * zeros + b"9" * (8 - zeros)
        states.append(with_memory(state("same", rdi=A, rcx=A + 8 * ROWS, rdx=0), A,
                                  limb * ROWS))
    with check:
        orig = [trace(check, s, copy=False) for s in states]
        copy = [trace(check, s, copy=True) for s in states]
        totals = [check.outcome(True, s).gprs[REG["rdx"]] for s in states]  # the total
    assert totals == [0, 3 * ROWS, 8 * ROWS]
    assert len({o[0] for o in orig}) == len(states)
    assert len({c[0] for c in copy}) == 1  # same instructions in the same order
    assert len({c[1] for c in copy}) == 1  # same cache lines, read/write, same order


def test_a_secret_exit_from_the_inner_loop_shows_nowhere(program: Image, sandbox: Sandbox
                                                          ) -> None:
    """rows with the first difference in row 0, 2 or none: same instructions and lines."""
    check = _hardened(program, sandbox, "rows")
    a = bytes(range(8 * ROWS))
    states = []
    for at in (1, 19, None):
        b = bytearray(a)
        if at is not None:
            b[at] ^= 0xff
        s = state("exit", rdi=A, rsi=B, rdx=ROWS, rcx=0)
        states.append(with_memory(with_memory(s, A, a), B, bytes(b)))
    with check:
        copy = [trace(check, s, copy=True) for s in states]
        outs = [check.outcome(True, s) for s in states]
    # rax = j where the copy left: byte 1 of row 0, byte 3 of row 2, or 8 (all equal)
    assert [o.gprs[REG["rax"]] for o in outs] == [1, 3, 8]
    assert outs[0].address == outs[1].address != outs[2].address  # return 0 / return 1
    assert len({c[0] for c in copy}) == 1
    assert len({c[1] for c in copy}) == 1


def test_a_wrong_inner_bound_goes_on_in_the_original_inner_loop(
        program: Image, sandbox: Sandbox) -> None:
    """An inner bound below the trip count: the copy leaves for the original inner header,
    in the state the original has there (correct, but it leaks)."""
    check = _hardened(program, sandbox, "lz", inner=3)
    region = region_of(program, "lz", loop=True)
    shape = nest(region.entry, view_of(region, 0, "loop").blocks, 0)
    s = with_memory(state("wrong", rdi=A, rcx=A + 8, rdx=0), A, b"00000123")
    with check:
        out = check.outcome(True, s)
    assert out.kind == "exit" and out.address == shape.inners[0].header + sandbox.bias
    assert out.gprs[REG["rax"]] == 3  # three iterations of the scan ran


# -- refusals ------------------------------------------------------------------------------

NEST = ["top:", "xor eax, eax", "inner:", "cmp byte ptr [rdi + rax], 0x30", "jne done",
        "inc rax", "cmp rax, 8", "jne inner", "done:", "add rdi, 8", "cmp rdi, rcx",
        "jne top", "ret"]
# The inner header is 2 bytes (xor eax, eax) after the region's entry.
DEEP = ["top:", "xor eax, eax", "mid:", "xor edx, edx", "inner:", "inc rdx",
        "cmp rdx, 4", "jne inner", "inc rax", "cmp rax, 4", "jne mid", "dec rdi",
        "jne top", "jmp 0x13000"]
IRREDUCIBLE = ["top:", "test rsi, rsi", "je b", "a:", "inc rax", "b:", "inc rdx",
               "cmp rdx, 4", "jne a", "dec rdi", "jne top", "jmp 0x13000"]
REFUSALS = {
    "missing": (NEST[:-1] + ["jmp 0x13000"], {"bound": 4},
                "the inner loop at 0x10002 (the region's at +0x2) needs a bound: add it to "
                "the contract's `inner_bounds`"),
    "zero": (NEST[:-1] + ["jmp 0x13000"], {"bound": 4, "inner_bound+0x2": 0},
             "needs a bound"),
    "huge": (NEST[:-1] + ["jmp 0x13000"], {"bound": 4, "inner_bound+0x2": 1 << 40},
             "bound 1099511627776 is too large"),
    "not a header": (NEST[:-1] + ["jmp 0x13000"],
                     {"bound": 4, "inner_bound+0x2": 8, "inner_bound+0x6": 8},
                     "inner_bounds names the region's at +0x6, which is not the header of "
                     "an inner loop of this region (inner loops at: +0x2)"),
    "no inner loop": (["top:", "dec rdi", "jne top", "jmp 0x13000"],
                      {"bound": 4, "inner_bound+0x2": 8},
                      "(inner loops at: none)"),
    "irreducible": (IRREDUCIBLE, {"bound": 4}, "the loop's body is irreducible"),
    "inner iv from memory": (
        ["top:", "mov rax, qword ptr [rsi]", "inner:", "cmp byte ptr [rdi + rax], 0x30",
         "jne done", "inc rax", "cmp rax, 8", "jne inner", "done:", "add rdi, 8",
         "cmp rdi, rcx", "jne top", "jmp 0x13000"], {"bound": 4, "inner_bound+0x3": 8},
        "depends on rax, which the loop computes"),
    "inner index used after": (
        ["top:", "xor eax, eax", "inner:", "cmp byte ptr [rdi + rax], 0x30", "jne done",
         "inc rax", "cmp rax, 8", "jne inner", "done:", "mov dl, byte ptr [rdi + rax]",
         "add rdi, 8", "cmp rdi, rcx", "jne top", "jmp 0x13000"],
        {"bound": 4, "inner_bound+0x2": 8}, "depends on rax, which the loop computes"),
    # A pointer stepped in two blocks is an induction variable only when every iteration
    # runs exactly one step and no address uses it after one.
    "stepped twice": (
        ["top:", "test byte ptr [rdi], 1", "je skip", "add rdi, 1", "skip:", "add rdi, 1",
         "dec rcx", "jne top", "jmp 0x13000"], {"bound": 4},
        "depends on rdi, which the loop computes"),
    "addressed after its step": (
        ["top:", "test byte ptr [rdi], 1", "je other", "add rdi, 1",
         "mov dl, byte ptr [rdi]", "dec rcx", "jne top", "jmp 0x13000", "other:",
         "add rdi, 1", "dec rcx", "jne top", "jmp 0x13000"], {"bound": 4},
        "depends on rdi, which the loop computes"),
}
DUPLICATED_LATCH = ["top:", "test byte ptr [rdi], 1", "je other", "add rdi, 1", "dec rcx",
                    "jne top", "jmp 0x13000", "other:", "add rdi, 1", "dec rcx", "jne top",
                    "jmp 0x13000"]


def test_a_duplicated_latch_is_accepted() -> None:
    result = harden(PASS, view_from_asm(DUPLICATED_LATCH, "loop", "loop", {"bound": 4}))
    assert isinstance(result, Rewrite), result
    assert "lea rdi, [rdi + 0x1]" in result.code  # the one step per iteration


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_nest_refusals_say_why(case: str) -> None:
    lines, params, message = REFUSALS[case]
    result = harden(PASS, view_from_asm(lines, "loop", "loop", params))
    assert isinstance(result, Refusal), result
    assert message in result.reason, result.reason


def test_three_deep_with_every_bound_is_accepted() -> None:
    """Loops nested three deep (the region's, mid, inner) each run their own bound
    (tests/unit/plugins/test_deep_nest.py runs such nests)."""
    params = {"bound": 4, "inner_bound+0x2": 4, "inner_bound+0x4": 4}
    assert isinstance(harden(PASS, view_from_asm(DEEP, "loop", "loop", params)), Rewrite)
    del params["inner_bound+0x4"]
    result = harden(PASS, view_from_asm(DEEP, "loop", "loop", params))
    assert isinstance(result, Refusal)
    assert "the inner loop at 0x10004 (the region's at +0x4) needs a bound" in result.reason


def test_the_nest_with_its_bounds_is_accepted() -> None:
    lines = NEST[:-1] + ["jmp 0x13000"]
    view = view_from_asm(lines, "loop", "loop", {"bound": 4, "inner_bound+0x2": 8})
    assert isinstance(harden(PASS, view), Rewrite)


def test_a_duplicated_latch_steps_the_pointer_once_per_iteration(
        program: Image, sandbox: Sandbox) -> None:
    """significant: `add rdi, 16` in both copies of the outer latch.  The copy steps the
    pointer once per iteration whatever the path, so after the loop has left (2 limbs) its
    iterations walk the next limbs exactly as when it has not (4 limbs): same instructions,
    same lines, whatever the zeros."""
    check = _hardened(program, sandbox, "significant")
    states = []
    for limbs, zeros in ((2, 0), (2, 9), (4, 16), (4, 3)):
        limb = b"0" * zeros + b"7" * (16 - zeros)
        states.append(with_memory(state("spread", rdi=A, rcx=A + 16 * limbs, rax=0), A,
                                  limb * ROWS))
    with check:
        copy = [trace(check, s, copy=True) for s in states]
        reads = [_key_reads(check, s) for s in states]
        outs = [check.outcome(True, s) for s in states]
    assert [o.gprs[REG["rax"]] for o in outs] == [32, 14, 0, 52]
    assert [o.gprs[REG["rdi"]] for o in outs] == [A + 32, A + 32, A + 64, A + 64]
    assert len({c[0] for c in copy}) == 1
    assert len({c[1] for c in copy}) == 1
    # byte by byte: every limb's 16 digits, in order, in every run
    assert reads[0] == [A + 16 * i + j for i in range(ROWS) for j in range(16)]
    assert all(r == reads[0] for r in reads[1:])


def _key_reads(check: RegionCheck, s: State) -> list[int]:
    """The addresses of the copy's reads in the key (A .. A + 16 ROWS)."""
    seen: list[int] = []

    def on_read(uc_: Any, access: int, address: int, size: int, value: int, _: Any) -> None:
        if A <= address < A + 16 * ROWS:
            seen.append(address)

    run_hooked(check, s, True, UC_HOOK_MEM_READ, on_read)
    return seen
