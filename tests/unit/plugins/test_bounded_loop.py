"""plugins.bounded_loop: early-exit loops of small C functions run a fixed number of
iterations and still compute what the originals compute (differential runs), with the same
instructions and cache lines whatever the exit point, and each refusal says why."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leakdbt.dbt.region import CodeRegion
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
__attribute__((noinline)) int mcmp(const unsigned char *a, const unsigned char *b) {
    for (int i = 0; i < 16; i++) if (a[i] != b[i]) return 0;
    return 1;
}
__attribute__((noinline)) int macv(const unsigned char *a, const unsigned char *b,
                                   unsigned long n) {
    for (unsigned long i = 0; i < n; i++) if (a[i] != b[i]) return 0;
    return 1;
}
__attribute__((noinline)) unsigned long slen(const char *s) {
    unsigned long n = 0; while (s[n]) n++; return n;
}
int main(void) { return 0; }
"""
A, B = SCRATCH + 0x1000, SCRATCH + 0x1100  # the buffers (the loop starts with rax = 0)
BOUNDS = {"mcmp": 16, "macv": 32, "slen": 64}


@pytest.fixture(scope="module", params=["static", "static-pie"])
def program(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Image:
    return build(tmp_path_factory.mktemp("loop"), "loop", SOURCE, request.param)


@pytest.fixture(scope="module")
def sandbox(program: Image) -> Sandbox:
    return sandbox_for(program)


def _hardened(program: Image, sandbox: Sandbox, function: str) -> RegionCheck:
    region = region_of(program, function, loop=True)
    rewrite = harden(PASS, view_of(region, sandbox.bias, "loop", {"bound": BOUNDS[function]}))
    assert isinstance(rewrite, Rewrite), rewrite
    t = translate(sandbox, region, rewrite)
    return RegionCheck(sandbox, region, t, scratch_below_red_zone=True)


def _compare_state(seed: str, mismatch: int | None, n: int = 16) -> State:
    """Buffers A and B equal except at ``mismatch``; rdx = n (macv's length)."""
    rng = random.Random(seed)
    data = bytes(rng.randrange(256) for _ in range(64))
    other = bytearray(data)
    if mismatch is not None:
        other[mismatch] ^= 1 + rng.randrange(255)
    s = state(seed, rdi=A, rsi=B, rdx=n, rax=0)
    return with_memory(with_memory(s, A, data), B, bytes(other))


def _string_state(seed: str, length: int) -> State:
    """A string at A whose zero byte is at ``length`` (>= 1: the loop starts at s[1])."""
    rng = random.Random(seed)
    text = bytes(rng.randrange(1, 256) for _ in range(80))
    return with_memory(state(seed, rdi=A, rax=0), A, text[:length] + b"\0" + text[length + 1:])


def _states(function: str, count: int) -> list[tuple[str, State]]:
    out = []
    for i in range(count):
        seed = f"loop:{function}:{i}"
        rng = random.Random(seed)
        if function == "slen":
            out.append((seed, _string_state(seed, rng.randrange(1, BOUNDS["slen"] + 1))))
        else:
            n = 16 if function == "mcmp" else rng.randrange(1, 33)
            where = rng.randrange(n + n // 2) if rng.random() < 0.7 else None
            out.append((seed, _compare_state(seed, where if where is None or where < n
                                             else None, n)))
    return out


@pytest.mark.parametrize("function", sorted(BOUNDS))
def test_bounded_loop_computes_what_the_original_computes(
        program: Image, sandbox: Sandbox, function: str) -> None:
    states = _states(function, 150)
    check = _hardened(program, sandbox, function)
    with check:
        report = check.compare(states)
        results = {check.outcome(False, s).gprs[REG["rax"]] for _, s in states}
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared == len(states)
    assert len(results) >= 2  # both exits (or many lengths) were exercised


def test_wrong_bound_continues_in_the_original_loop(program: Image, sandbox: Sandbox) -> None:
    """A string longer than the bound: after `bound` masked iterations the copy goes on in
    the original header, in the state the original has there (correct, but it leaks)."""
    check = _hardened(program, sandbox, "slen")
    region: CodeRegion = check.region
    with check:
        out = check.outcome(True, _string_state("long", 70))
    assert out.kind == "exit" and out.address == region.entry + sandbox.bias
    assert out.gprs[REG["rax"]] == BOUNDS["slen"]


@pytest.mark.parametrize("function,secrets", [
    ("mcmp", [0, 5, 15]), ("macv", [1, 9, 30]), ("slen", [1, 20, 63])])
def test_bounded_loop_runs_and_touches_the_same_whatever_the_exit_point(
        program: Image, sandbox: Sandbox, function: str, secrets: list[int]) -> None:
    check = _hardened(program, sandbox, function)
    if function == "slen":
        states = [_string_state("leak", n) for n in secrets]
    else:
        states = [_compare_state("leak", n, 16 if function == "mcmp" else 32) for n in secrets]
    with check:
        orig = [trace(check, s, copy=False) for s in states]
        copy = [trace(check, s, copy=True) for s in states]
    assert len({o[0] for o in orig}) == len(states)  # the original's exit point shows
    assert len({c[0] for c in copy}) == 1  # same instructions in the same order
    assert len({c[1] for c in copy}) == 1  # same cache lines, read/write, same order


@pytest.fixture(scope="module")
def mcmp_check(program: Image, sandbox: Sandbox) -> RegionCheck:
    return _hardened(program, sandbox, "mcmp")


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=st.binary(min_size=16, max_size=16), b=st.binary(min_size=16, max_size=16),
       equal_prefix=st.integers(0, 16))
def test_memcmp_loop_agrees_on_any_buffers(mcmp_check: RegionCheck, a: bytes, b: bytes,
                                           equal_prefix: int) -> None:
    b = a[:equal_prefix] + b[equal_prefix:]
    s = with_memory(with_memory(state("hyp", rdi=A, rsi=B, rax=0), A, a), B, b)
    with mcmp_check:
        report = mcmp_check.compare([("hyp", s)])
    assert not report.mismatches, report.mismatches


# -- refusals ------------------------------------------------------------------------------

SCAN = ["top:", "mov al, byte ptr [rdi + rcx]", "test al, al", "je 0x13000", "inc rcx",
        "jmp top"]
REFUSALS = {
    "bound": (SCAN, {}, "needs the contract's `bound`"),
    "huge": (SCAN, {"bound": 1 << 40}, "too large"),
    "call": (["top:", "call 0x12000", "dec rdi", "je 0x13000", "jmp top"], {"bound": 4},
             "calls 0x12000, which is not a function the translator can decode"),
    "rsp": (["top:", "push rax", "pop rax", "dec rdi", "je 0x13000", "jmp top"],
            {"bound": 4}, "writes rsp"),
    "string": (["top:", "rep stosb byte ptr [rdi], al", "dec rsi", "je 0x13000", "jmp top"],
               {"bound": 4}, "string instruction"),
    "indirect": (["top:", "dec rdi", "je 0x13000", "jmp rax"], {"bound": 4}, "indirect jump"),
    "ret": (["top:", "dec rdi", "je out", "jmp top", "out:", "ret"], {"bound": 4},
            "returns from inside the loop"),
    "inner": (["top:", "inc rax", "inner:", "dec rsi", "jne inner", "dec rdi", "je 0x13000",
               "jmp top"], {"bound": 4}, "inner loop"),
    "computed": (["top:", "mov rdx, qword ptr [rdx]", "test rdx, rdx", "je 0x13000",
                  "jmp top"], {"bound": 4}, "depends on rdx, which the loop computes"),
    "uncovered": (["top:", "test al, al", "je skip", "mov rdx, qword ptr [rsi]", "skip:",
                   "inc rcx", "cmp rcx, rdi", "je 0x13000", "jmp top"], {"bound": 4},
                  "not every path through an iteration"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_say_why(case: str) -> None:
    lines, params, message = REFUSALS[case]
    result = harden(PASS, view_from_asm(lines, "loop", "loop", params))
    assert isinstance(result, Refusal), result
    assert message in result.reason, result.reason


def test_the_scan_itself_is_accepted() -> None:
    assert isinstance(harden(PASS, view_from_asm(SCAN, "loop", "loop", {"bound": 8})), Rewrite)


def test_only_loop_regions() -> None:
    view = view_from_asm(SCAN, "branch", "loop", {"bound": 8})
    refusal = PASS.applies(view, None, None)  # type: ignore[arg-type]
    assert isinstance(refusal, Refusal) and "not a loop region" in refusal.reason
    other = view_from_asm(SCAN, "loop", "branch", {"bound": 8})
    assert PASS.applies(other, None, None) is False  # type: ignore[arg-type]


def test_a_pie_bias_does_not_change_the_decision(tmp_path: Path) -> None:
    """The pass is a pure function of the view: a PIE's bias changes nothing it decides."""
    image = build(tmp_path, "looppie", SOURCE, "static-pie")
    region = region_of(image, "mcmp", loop=True)
    view = view_of(region, 0x5555_5555_4000, "loop", {"bound": 16})
    assert isinstance(harden(PASS, view), Rewrite)
