"""plugins.bounded_loop with a *run-time* bound (``bound = "rsi - rdi"``): a scan whose
public exit compares a stepped pointer with a fixed end runs ``(end - p) / step`` masked
iterations and the header once more, computed when the loop is entered; it computes what
the original computes (differential runs on random states), reads nothing the original
would not read when the secret exit is never taken (the end of the buffer is the end of
a mapping in one test), runs the same instructions whatever the secret exit point, and
each refusal says why."""

from __future__ import annotations

import random

import pytest

from leakdbt.contract.bound import RunTimeBound, parse_bound
from leakdbt.loader.image import Image
from leakdbt.plugin_api import Refusal, Rewrite
from plugins.bounded_loop import PASS
from tests.unit.dbt.harness import SCRATCH, RegionCheck, Sandbox, State
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
__attribute__((noinline)) long skip(const unsigned char *p, const unsigned char *end) {
    while (p != end) { unsigned char c = *p++; if (c == 0x2a) return end - p; }
    return -1;
}
__attribute__((noinline, optimize("no-tree-ch")))  /* the header tests p != end */
long sum8(const long *p, const long *end) {
    long s = 0;
    for (; p != end; p++) { if (*p < 0) break; s += *p; }
    return s;
}
/* counted down to zero: the test ends the block of the step (the latch), not the header */
__attribute__((noinline)) long lastdiff(const long *a, const long *b, unsigned long n) {
    while (n > 0) { if (a[n - 1] != b[n - 1]) return (long)n; n--; }
    return 0;
}
/* the header's own step is its test: sub rdx, 1; jns */
__attribute__((noinline)) int mpncmp(const long *a, const long *b, long n) {
    while (--n >= 0) { if (a[n] != b[n]) return a[n] > b[n] ? 1 : -1; }
    return 0;
}
int main(void) { return 0; }
"""
BOUNDS = {"skip": "rsi - rdi", "sum8": "(rsi - rdi) / 8", "lastdiff": "rdx", "mpncmp": "rdx"}
A, B = SCRATCH + 0x1000, SCRATCH + 0x1800


@pytest.fixture(scope="module", params=["static", "static-pie"])
def program(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Image:
    return build(tmp_path_factory.mktemp("rtloop"), "rtloop", SOURCE, request.param)


@pytest.fixture(scope="module")
def sandbox(program: Image) -> Sandbox:
    return sandbox_for(program)


def _hardened(program: Image, sandbox: Sandbox, function: str) -> RegionCheck:
    region = region_of(program, function, loop=True)
    rewrite = harden(PASS, view_of(region, sandbox.bias, "loop", {"bound": BOUNDS[function]}))
    assert isinstance(rewrite, Rewrite), rewrite
    return RegionCheck(sandbox, region, translate(sandbox, region, rewrite),
                       scratch_below_red_zone=True)


def _limbs(seed: str) -> State:
    """Limbs at A and B, equal but (mostly) at one index; RDX: how many (1 to 40)."""
    rng = random.Random(seed)
    n = rng.randrange(1, 41)
    a = bytearray(rng.randrange(256) for _ in range(8 * 48))
    b = bytearray(a)
    if rng.random() < 0.7:
        b[8 * rng.randrange(n) + rng.randrange(8)] ^= 1 + rng.randrange(255)
    s = state(seed, rdi=A, rsi=B, rdx=n)
    return with_memory(with_memory(s, A, bytes(a)), B, bytes(b))


def _state(function: str, seed: str) -> State:
    """A buffer at A of random length (0 to 40 elements) whose secret exit, if any, is at
    a random element; the loop registers as the function's header sees them."""
    if function in ("lastdiff", "mpncmp"):
        return _limbs(seed)
    rng = random.Random(seed)
    size = 1 if function == "skip" else 8
    n = rng.randrange(41)
    if function == "skip":
        data = bytearray(rng.choice([c for c in range(256) if c != 0x2a]) for _ in range(64))
        if n and rng.random() < 0.7:
            data[rng.randrange(n)] = 0x2a
    else:
        data = bytearray()
        for _ in range(48):
            data += rng.randrange(1 << 62).to_bytes(8, "little")
        if n and rng.random() < 0.7:
            k = rng.randrange(n)
            data[8 * k + 7] |= 0x80
    s = state(seed, rdi=A, rsi=A + n * size)
    if function == "sum8":
        s = state(seed, rdi=A, rsi=A + n * size, rdx=0, rax=rng.randrange(1 << 40))
    return with_memory(s, A, bytes(data))


@pytest.mark.parametrize("function", sorted(BOUNDS))
def test_run_time_bound_computes_what_the_original_computes(
        program: Image, sandbox: Sandbox, function: str) -> None:
    states = [(f"rt:{function}:{i}", _state(function, f"rt:{function}:{i}"))
              for i in range(200)]
    check = _hardened(program, sandbox, function)
    with check:
        report = check.compare(states)
        results = {check.outcome(False, s).gprs[REG["rax"]] for _, s in states}
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared == len(states)
    assert len(results) >= (3 if function == "mpncmp" else 10)  # exits, lengths


@pytest.mark.parametrize("function", ["skip", "sum8"])
def test_random_states_too(program: Image, sandbox: Sandbox, function: str) -> None:
    """Random registers (a wild start and end: the bound out of range runs the header,
    then the original), random memory: still what the original computes."""
    states = []
    for i in range(150):
        seed = f"rt-wild:{function}:{i}"
        rng = random.Random(seed)
        end = A + rng.randrange(-64, 200)
        stop = bytearray(rng.randrange(256) for _ in range(8 * 48))  # ends the wild runs
        stop[rng.randrange(100)] = 0x2a
        stop[8 * rng.randrange(12) + 7] |= 0x80
        states.append((seed, with_memory(state(seed, rdi=A, rsi=end, rdx=0), A, bytes(stop))))
    check = _hardened(program, sandbox, function)
    # Out of range, the copy runs the header and jumps into the original loop, which goes
    # on (equivalence: copy prefix + original rest = original, as for a jump table's).
    copy_only, orig = check.copy_inside, check.original_inside
    check.allow_reentry = True
    check.copy_inside = lambda a: copy_only(a) or orig(a)
    with check:
        report = check.compare(states)
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared >= 100
    assert report.reentries > 0  # some ran out of range (the end before the start)


def test_the_same_instructions_and_lines_whatever_the_exit_point(
        program: Image, sandbox: Sandbox) -> None:
    check = _hardened(program, sandbox, "skip")
    states = []
    for where in (0, 7, 19, None):
        data = bytearray(b"a" * 32)
        if where is not None:
            data[where] = 0x2a
        states.append(with_memory(state("same", rdi=A, rsi=A + 24), A, bytes(data)))
    with check:
        orig = [trace(check, s, copy=False) for s in states]
        copy = [trace(check, s, copy=True) for s in states]
    assert len({o[0] for o in orig}) == len(states)  # the original's exit point shows
    assert len({c[0] for c in copy}) == 1
    assert len({c[1] for c in copy}) == 1
    # and a different public length is a different (public) run
    with check:
        longer = trace(check, with_memory(state("same", rdi=A, rsi=A + 25), A, b"a" * 32),
                       copy=True)
    assert longer[0] != copy[0][0]


def test_reads_end_where_the_buffer_ends(program: Image, sandbox: Sandbox) -> None:
    """No secret exit: the copy reads exactly the bytes the original reads, none past the
    end (the iterations are (end - p) full ones and the header of one more)."""
    check = _hardened(program, sandbox, "skip")
    s = with_memory(state("end", rdi=A, rsi=A + 10), A, b"b" * 64)
    with check:
        orig = trace(check, s, copy=False)
        copy = trace(check, s, copy=True)
    assert {line for line in orig[1]} >= {line for line in copy[1] if line[1] == A >> 6}
    reads: list[int] = []
    uc = check.sandbox.uc
    from unicorn import UC_HOOK_MEM_READ

    def on_read(uc_: object, access: int, address: int, size: int, value: int, _: object
                ) -> None:
        if A - 64 <= address < A + 64:
            reads.append(address)

    hook = uc.hook_add(UC_HOOK_MEM_READ, on_read)
    try:
        with check:
            out = check.outcome(True, s)
    finally:
        uc.hook_del(hook)
    assert out.kind == "exit" and out.gprs[REG["rdi"]] == A + 10
    assert reads and max(reads) == A + 9 and min(reads) == A


# -- the bound's text and refusals ---------------------------------------------------------

def test_parse_bound() -> None:
    assert parse_bound("r8 - rdi") == RunTimeBound("r8", "rdi")
    assert parse_bound("(rsi - rdi) / 8 + 1") == RunTimeBound("rsi", "rdi", 3, 1)
    assert parse_bound("( rsi-rdi )/2 - 0x10") == RunTimeBound("rsi", "rdi", 1, -16)
    assert str(RunTimeBound("rsi", "rdi", 3, 1)) == "(rsi - rdi) / 8 + 1"
    for bad, why in (("rsi + rdi", "is not a run-time bound"), ("rsp - rdi", "not a run"),
                     ("rdi - rdi", "must differ"), ("(rsi - rdi) / 3", "power of two"),
                     ("rsi - rdi + 4294967296", "too large"), ("eax - edi", "not a run")):
        result = parse_bound(bad)
        assert isinstance(result, str) and why in result, (bad, result)


SCAN = ["top:", "cmp rdi, rsi", "je 0x13000", "movzx eax, byte ptr [rdi]", "add rdi, 1",
        "cmp al, 0x2a", "je 0x13100", "jmp top"]
REFUSALS = {
    "text": (SCAN, "rsi + rdi", "is not a run-time bound"),
    "untested": (["top:", "movzx eax, byte ptr [rdi]", "add rdi, 1", "cmp al, 0x2a",
                  "je skip", "nop", "skip:", "cmp rdi, rsi", "jne top"], "rsi - rdi",
                  "needs the loop to test it where it leaves: neither the header"),
    "other-cmp": (["top:", "cmp rdi, rdx", "je 0x13000", "movzx eax, byte ptr [rdi]",
                   "add rdi, 1", "cmp al, 0x2a", "je 0x13100", "jmp top"], "rsi - rdi",
                  "ends with a branch out of the loop on cmp rsi, rdi"),
    "no-iv": (["top:", "cmp rdi, rsi", "je 0x13000", "movzx eax, byte ptr [rdx]",
               "add rdi, rax", "cmp al, 0x2a", "je 0x13100", "jmp top"], "rsi - rdi",
              "neither is an induction variable"),
    "limit": (["top:", "cmp rdi, rsi", "je 0x13000", "movzx eax, byte ptr [rdi]", "add rdi, 1",
               "sub rsi, 1", "cmp al, 0x2a", "je 0x13100", "jmp top"], "rsi - rdi",
              "rsi is written in the loop"),
    "step": (SCAN, "(rsi - rdi) / 2", "steps rdi by 2, but 'add rdi, 1' does not"),
    "count-not-iv": (SCAN, "rcx", "the run-time bound's rcx: not an induction variable"),
    "count-up": (SCAN, "rdi", "the run-time bound steps rdi by -1, but 'add rdi, 1' does not"),
    "count-untested": (["top:", "mov rax, qword ptr [rsi + rdx*8]", "sub rdx, 1",
                        "cmp rax, 5", "je 0x13000", "jmp top"], "rdx",
                       "on rdx (test rdx, rdx, cmp rdx, 0 or its step)"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_run_time_refusals_say_why(case: str) -> None:
    lines, bound, message = REFUSALS[case]
    result = harden(PASS, view_from_asm(lines, "loop", "loop", {"bound": bound}))
    assert isinstance(result, Refusal), result
    assert message in result.reason, result.reason


@pytest.mark.parametrize("lines,bound", [
    (SCAN, "rsi - rdi"),
    (["top:", "test rdx, rdx", "je 0x13000", "mov rax, qword ptr [rsi + rdx*8 - 8]",
      "sub rdx, 1", "cmp rax, 5", "je 0x13100", "jmp top"], "rdx"),
    (["top:", "mov rax, qword ptr [rsi + rdx*8 - 8]", "cmp rax, 5", "je 0x13100",
      "dec rdx", "jne top"], "rdx")])
def test_the_tested_shapes_are_accepted(lines: list[str], bound: str) -> None:
    result = harden(PASS, view_from_asm(lines, "loop", "loop", {"bound": bound}))
    assert isinstance(result, Rewrite), result


def test_counts_out_of_range_run_the_header_then_the_original(program: Image,
                                                              sandbox: Sandbox) -> None:
    """mpncmp entered with n <= 0 (N = n out of range, or 0 full iterations): the header
    alone, then where the original goes; with n up to 45, past the buffers' equal part."""
    check = _hardened(program, sandbox, "mpncmp")
    copy_only, orig = check.copy_inside, check.original_inside
    check.allow_reentry = True
    check.copy_inside = lambda a: copy_only(a) or orig(a)
    states = []
    for i in range(120):
        seed = f"rt-count:{i}"
        rng = random.Random(seed)
        s = _limbs(seed)
        states.append((seed, state(seed, rdi=A, rsi=B, rdx=rng.randrange(-64, 46))
                       if rng.random() < 0.5 else s))
    with check:
        report = check.compare(states)
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared == len(states)
