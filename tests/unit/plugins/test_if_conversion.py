"""plugins.if_conversion: hardened branch regions of small C functions compute what the
originals compute (differential runs on random states that take both paths), run the same
instructions and touch the same cache lines whatever the secret, and every refusal is
reported with its reason."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leakdbt.dbt.relocate import Translation
from leakdbt.loader.elf import load_image
from leakdbt.loader.image import Image
from leakdbt.plugin_api import Refusal, Rewrite
from plugins import if_conversion
from plugins.ct_division import PASS as CT_DIVISION
from plugins.if_conversion import PASS
from plugins.support.predication import analyse, topological
from tests.unit.dbt.harness import (
    ARITH_FLAGS,
    FLAGS_MASK,
    SCRATCH,
    RegionCheck,
    Sandbox,
    State,
    compile_program,
)
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
)

SOURCE = r"""
long gbuf[8];
unsigned char cbuf[16];
unsigned short sbuf[8];
unsigned int ibuf[8];

__attribute__((noinline)) long diamond(long x, long r, long b) {
    if (x & 1) r = r * b; else r = r + 3;
    return r ^ x;
}
__attribute__((noinline)) long triangle(long x, long r) {
    if (x > 10) r = r * 7 + x;
    return r - 1;
}
__attribute__((noinline)) long nested(long x, long y, long r) {
    if (x & 1) { if (y & 2) r += y; else r -= 5; } else { r *= 3; }
    return r + x;
}
__attribute__((noinline)) long stores(long x, long *p, long v) {
    volatile long buf[4] = {1, 2, 3, 4};
    if (x & 1) { buf[1] = v; gbuf[2] = v; p[0] = v; p[1] = x; }
    else { buf[2] = v + 1; gbuf[3] = x; p[0] = x; }
    return buf[1] + buf[2] + p[1];
}
__attribute__((noinline)) void narrow(long x, long v) {
    if (x & 2) { cbuf[3] = v; sbuf[1] = v; ibuf[2] = v; }
    else { cbuf[5] = x; ibuf[2] = x; sbuf[3] = x; }
}
__attribute__((noinline)) unsigned long divarm(unsigned long x, unsigned long a,
                                               unsigned long d) {
    if (x & 1) a = a / d; else a = a + x;
    return a;
}
__attribute__((noinline)) long retjoin(long c, long a, long b) {
    if (c) return a * 3;
    return b + 2;
}
__attribute__((noinline)) double fparm(long x, double d, double e) {
    if (x & 1) d = d * e; else d = d + 1.5;
    return d;
}
__attribute__((noinline)) long joined(long x, long r) {
    if (x & 4) r = r * 5;
    else r = r - x;
    __asm__ volatile("" : "+r"(r));  /* keep a join block after the arms */
    r = r * 3 + 1;
    if (r & 1) r = r << 1;
    return r;
}
__attribute__((noinline)) long unsafe(long x, long *p) {
    long r = 0;
    if (x & 1) r = *p;
    return r;
}
int main(void) { return 0; }
"""


def _bit(reg: str, mask: int) -> Callable[[State], bool]:
    return lambda s: bool(s.gprs[REG[reg]] & mask)


def _pointer(rng) -> int:  # type: ignore[no-untyped-def]
    return SCRATCH + 0x1000 + 8 * rng.randrange(0x200)


def _divisor(rng) -> int:  # type: ignore[no-untyped-def]
    return rng.choice((1, 3, 7, rng.getrandbits(64) | 1, rng.getrandbits(20) + 1))


# function -> (which path a state takes, register choosers)
CASES: dict[str, tuple[Callable[[State], bool], dict]] = {
    "diamond": (_bit("rdi", 1), {}),
    "triangle": (lambda s: 10 < s.gprs[REG["rdi"]] < 1 << 63,
                 {"rdi": lambda rng: rng.randrange(-30, 30)}),
    "nested": (_bit("rdi", 1), {}),
    "stores": (_bit("rdi", 1), {"rsi": _pointer}),
    "narrow": (_bit("rdi", 2), {}),
    "divarm": (_bit("rdi", 1), {"rdx": _divisor}),
    "retjoin": (lambda s: s.gprs[REG["rdi"]] != 0,
                {"rdi": lambda rng: rng.choice((0, rng.getrandbits(64)))}),
    "fparm": (_bit("rdi", 1), {}),
    "joined": (_bit("rdi", 4), {}),
}
STATES = 200


@pytest.fixture(scope="module", params=["static", "static-pie"])
def program(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Image:
    return build(tmp_path_factory.mktemp("ifc"), "ifc", SOURCE, request.param)


@pytest.fixture(scope="module")
def sandbox(program: Image) -> Sandbox:
    return sandbox_for(program)


def _hardened(program: Image, sandbox: Sandbox, function: str, composed: bool = False,
              scheme: str = "any") -> tuple[RegionCheck, Rewrite]:
    """The hardened region; ``scheme`` ``general`` forces the per-block predicated engine
    on a tree-shaped region (which otherwise takes the fork scheme)."""
    region = region_of(program, function)
    view = view_of(region, sandbox.bias, "branch")
    if scheme == "general":
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(if_conversion, "_is_tree", lambda order, infos: False)
            rewrite = harden(PASS, view)
    else:
        rewrite = harden(PASS, view)
    assert isinstance(rewrite, Rewrite), rewrite
    assert rewrite.code is not None and not rewrite.replace
    replace = None
    if composed:
        ct = CT_DIVISION.harden(view, None, None)  # type: ignore[arg-type]
        assert isinstance(ct, Rewrite) and ct.replace
        replace = ct.replace
    t: Translation = translate(sandbox, region, rewrite, replace)
    flags = FLAGS_MASK & ~ARITH_FLAGS if composed else FLAGS_MASK  # div leaves them undefined
    return RegionCheck(sandbox, region, t, scratch_below_red_zone=True, flags=flags), rewrite


@pytest.mark.parametrize("scheme", ["any", "general"])
@pytest.mark.parametrize("function", sorted(CASES))
def test_hardened_branch_computes_what_the_original_computes(
        program: Image, sandbox: Sandbox, function: str, scheme: str) -> None:
    path, choose = CASES[function]
    check, rewrite = _hardened(program, sandbox, function, scheme=scheme)
    assert not any(line.startswith("j") and "@" not in line for line in rewrite.code or ())
    seeds = [f"ifc:{function}:{i}" for i in range(STATES)]
    with check:
        report = check.check(seeds, choose)
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared == STATES
    taken = sum(path(state(s, choose)) for s in seeds)
    assert 20 <= taken <= STATES - 20, taken  # both paths were exercised


@pytest.mark.parametrize("scheme", ["any", "general"])
def test_division_arm_composes_with_ct_division(program: Image, sandbox: Sandbox,
                                                scheme: str) -> None:
    """The div of the arm is replaced by ct-division's sequence inside the if-converted code;
    a zero divisor on the path not taken does not fault."""
    check, _ = _hardened(program, sandbox, "divarm", composed=True, scheme=scheme)
    choose = {"rdx": _divisor}
    seeds = [f"ifc:ct:{i}" for i in range(120)]
    with check:
        report = check.check(seeds, choose)
        zero = [(f"zero:{i}", state(f"zero:{i}", rdi=2 * i, rdx=0)) for i in range(10)]
        report0 = check.compare(zero)
    assert not report.mismatches, report.mismatches[:3]
    assert not report0.mismatches and report0.compared == 10
    assert report0.stops == {"exit": 10}  # 0 divisor, arm not taken: no fault


# -- leakage -------------------------------------------------------------------------------

LEAK_CASES = {  # function -> (secret register, values that take different paths)
    "diamond": ("rdi", (0x10, 0x11)),
    "nested": ("rdi", (0x20, 0x21)),
    "stores": ("rdi", (2, 3)),
    "narrow": ("rdi", (1, 2)),
    "retjoin": ("rdi", (0, 5)),
    "divarm": ("rdi", (4, 5)),
    "joined": ("rdi", (0, 4)),
}


@pytest.mark.parametrize("scheme", ["any", "general"])
@pytest.mark.parametrize("function", sorted(LEAK_CASES))
def test_hardened_branch_runs_and_touches_the_same_whatever_the_secret(
        program: Image, sandbox: Sandbox, function: str, scheme: str) -> None:
    reg, values = LEAK_CASES[function]
    composed = function == "divarm"
    check, _ = _hardened(program, sandbox, function, composed, scheme)
    base = {"rsi": SCRATCH + 0x1800, "rdx": 7}
    with check:
        for n in range(3):
            states = [state(f"leak:{function}:{n}", **base, **{reg: v}) for v in values]
            orig = [trace(check, s, copy=False) for s in states]
            copy = [trace(check, s, copy=True) for s in states]
            assert orig[0] != orig[1]  # the original's path shows
            assert copy[0][0] == copy[1][0]  # same instructions, in the same order
            assert copy[0][1] == copy[1][1]  # same cache lines, read/write, same order
            assert copy[0][0]  # the trace is not empty


# -- cost ----------------------------------------------------------------------------------

TINY_BOUND = 7  # executed instructions per call of the hardened tiny_region (original: 5, 6)


def test_tiny_region_costs_at_most_a_few_instructions(tmp_path: Path) -> None:
    """test_binaries/region_loop.c's tiny_region (``mov rax, rdi; shr rax, 1; test dil, 1;
    jne A; ret; A: lea rax, [rdi + rdi*2 + 1]; ret``) hardened: the instructions one call
    runs, counted in raw Unicorn, on both paths."""
    source = (Path(__file__).resolve().parents[3] / "test_binaries" / "region_loop.c")
    image = load_image(str(compile_program(tmp_path, "region_loop",
                                           {"region_loop.c": source.read_text()}, "static")))
    sb = sandbox_for(image)
    region = region_of(image, "tiny_region")
    rewrite = harden(PASS, view_of(region, sb.bias, "branch"))
    assert isinstance(rewrite, Rewrite) and rewrite.code is not None
    check = RegionCheck(sb, region, translate(sb, region, rewrite), scratch_below_red_zone=True)
    counts = []
    with check:
        for x in (0x1234, 0x1235):
            s = state(f"tiny:{x}", rdi=x)
            original, copy = trace(check, s, copy=False)[0], trace(check, s, copy=True)[0]
            counts.append(len(copy))
            assert len(copy) <= 2 * len(original)
        assert not check.check([f"tiny:{i}" for i in range(50)], {}).mismatches
    assert counts[0] == counts[1] <= TINY_BOUND, counts


# -- property-based ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nested_check(program: Image, sandbox: Sandbox) -> RegionCheck:
    check, _ = _hardened(program, sandbox, "nested")
    return check


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=st.integers(0, 2**64 - 1), y=st.integers(0, 2**64 - 1), r=st.integers(0, 2**64 - 1),
       flags=st.integers(0, 0xFFF))
def test_nested_branches_agree_on_any_inputs(nested_check: RegionCheck, x: int, y: int,
                                             r: int, flags: int) -> None:
    s = state("hyp", rdi=x, rsi=y, rdx=r)
    import dataclasses

    s = dataclasses.replace(s, rflags=0x2 | (flags & 0x8D5))
    with nested_check:
        report = nested_check.compare([("hyp", s)])
    assert not report.mismatches, report.mismatches


# -- refusals ------------------------------------------------------------------------------

def _arm(*body: str) -> list[str]:
    """if (rdi & 1) { body } ; join: ret."""
    return ["test dil, 1", "je join", *body, "join:", "ret"]


REFUSALS = {
    "call": (_arm("call 0x12000"), "calls 0x12000, which is not a function the translator "
             "can decode"),
    "syscall": (_arm("syscall"), "system call"),
    "indirect": (_arm("jmp rax"), "indirect jump"),
    "rsp": (_arm("mov rsp, rbp"), "'mov rsp, rbp' at 0x10006 writes rsp (conditional code "
            "may only move it by a fixed amount"),
    "string": (_arm("rep stosb byte ptr [rdi], al"), "string instruction"),
    "loop": (["test dil, 1", "je join", "top:", "dec rsi", "jne top", "join:", "ret"],
             "contains a loop (a cycle through its blocks): 'jne 0x10006' at 0x10009 jumps "
             "back to 0x10006, the loop's head; its counter rsi is set on no path into the "
             "loop"),
    # conditional code may move RSP by fixed amounts only where every path agrees
    "rsp-push-join": (_arm("push rbx"), "rsp differs between the paths into 0x10007 (0 and 8 "
                      "bytes below the region's)"),
    "rsp-join": (_arm("add rsp, 8"), "rsp differs between the paths into 0x1000a (0 and -8 "
                 "bytes below the region's)"),
    "rsp-returns": (["test dil, 1", "je other", "add rsp, 8", "ret", "other:", "ret"],
                    "rsp differs between the region's returns ('ret' at 0x1000b)"),
    "rsp-exit": (["test dil, 1", "je 0x10100", "add rsp, 8", "jmp 0x10100"],
                 "rsp differs between the paths that leave the region for 0x10100"),
    "rsp-call": (_arm("add rsp, 8", "call 0x12000", "sub rsp, 8"),
                 "'call 0x12000' at 0x1000a is made with rsp 8 bytes above the region's (a "
                 "clone runs below the region's scratch frame)"),
    # accesses the rule does not accept run guarded (test_guarded_access.py); these
    # cannot be: the rule's reason, then the guard's
    "unsafe": (_arm("movups xmm0, xmmword ptr [rsi]"),
               "not every path of the original accesses, and it accesses 16 bytes (a guard "
               "redirects at most 8)"),
    "computed": (["mov rax, qword ptr [rsi]", "test dil, 1", "je join",
                  "add rsi, 8", "mov rax, qword ptr [rsi + rsi]", "join:", "ret"],
                 "depends on rsi, which the conditional code computes, and its base "
                 "register is also its index"),
    "segment": (["mov rax, qword ptr fs:[rsi]", "test dil, 1", "je join",
                 "mov qword ptr fs:[rsi], rdx", "join:", "ret"], "segment stores"),
    "avx": (_arm("vpxor ymm0, ymm0, ymm0"), "AVX"),
    "x87": (_arm("fld1"), "x87"),
    "memdiv": (_arm("div qword ptr [rsp + 8]"), "memory divisor"),
    "raxdiv": (_arm("div rax"), "dividend's registers"),
    "jrcxz": (["test dil, 1", "je join", "jrcxz join", "inc rax", "join:", "ret"],
              "loop/jrcxz"),
    "addr32": (["mov eax, dword ptr [esi]", "test dil, 1", "je join",
                "mov eax, dword ptr [esi]", "join:", "ret"], "32-bit addressing"),
    "mxcsr": (_arm("ldmxcsr dword ptr [rsp + 8]"), "writes mxcsr"),
    "exits": (["test dil, 1", "je out1", "jmp 0x14000", "out1:", "jmp 0x13000"],
              "more than one exit"),
    "retexit": (["test dil, 1", "je out1", "ret", "out1:", "jmp 0x13000"],
                "both returns and leaves"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_say_why(case: str) -> None:
    lines, message = REFUSALS[case]
    result = harden(PASS, view_from_asm(lines))
    assert isinstance(result, Refusal), result
    assert message in result.reason, result.reason


def test_unsafe_load_in_a_compiled_arm_runs_guarded(program: Image, sandbox: Sandbox
                                                    ) -> None:
    """``if (x & 1) r = *p``: the load the other path never makes runs guarded (its base
    register redirected to the safe slot when the arm is off), so a bad ``p`` on that path
    does not fault the copy (more in test_guarded_access.py)."""
    check, rewrite = _hardened(program, sandbox, "unsafe")
    code = rewrite.code or ()
    assert any(line.startswith("cmov") and line.split()[1] == "rsi," for line in code), code
    states = [state(f"unsafe:{i}", rsi=0 if i % 2 else 8, rdi=2 * i) for i in range(50)]
    with check:
        report = check.compare((f"unsafe:{i}", s) for i, s in enumerate(states))
    assert not report.mismatches and report.stops == {"exit": 50}, report


def test_only_branch_regions() -> None:
    view = view_from_asm(_arm("inc rax"), shape="loop")
    refusal = PASS.applies(view, None, None)  # type: ignore[arg-type]
    assert isinstance(refusal, Refusal) and "not a branch region" in refusal.reason
    assert PASS.applies(view_from_asm(_arm("inc rax"), kind="divide"), None, None) is False  # type: ignore[arg-type]
    assert PASS.applies(view_from_asm(_arm("inc rax"), kind=None), None, None) is True  # type: ignore[arg-type]


def test_return_joined_region_in_a_pie(tmp_path: Path) -> None:
    """Position-independent module (bias): a return-joined region, no exit jump."""
    image = build(tmp_path, "ifcpie", SOURCE, "static-pie")
    sb = sandbox_for(image)
    check, _ = _hardened(image, sb, "retjoin")
    with check:
        report = check.check([f"pie:{i}" for i in range(100)], CASES["retjoin"][1])
    assert not report.mismatches and report.compared == 100


# -- shared tails: the fork scheme duplicates them, within limits ---------------------------

def _dag(*tail: str) -> list[str]:
    """if (rdi & 1) rax = rsi; else rax = rdx; then a tail both arms share; ret."""
    return ["mov r9, qword ptr [rsi]", "test dil, 1", "je other", "mov rax, rsi", "jmp tail",
            "other:", "mov rax, rdx", "tail:", *tail, "ret"]


def _triangles(n: int) -> list[str]:
    """n triangles in a row: each join is reached on twice as many paths as the last."""
    lines = []
    for k in range(n):
        lines += [f"test edi, {1 << k:#x}", f"je j{k}", "inc rax", f"j{k}:"]
    return lines + ["ret"]


SCHEMES = {  # case -> (lines, does the fork scheme run it (its tail duplicated))
    "dag": (_dag("imul rax, rax, 3"), True),
    "dag-div": (_dag("div rcx"), False),  # ct-division replaces divisions
    "dag-load": (_dag("add rax, qword ptr [rsi]"), False),  # oblivious-table, loads
    "dag-frame": (_dag("add rax, qword ptr [rsp + 8]"), True),
    "dag-store": (_dag("mov qword ptr [rsp - 8], rax"), False),  # stores: predicated
    "triangles-4": (_triangles(4), True),  # 46 nodes once duplicated
    "triangles-5": (_triangles(5), False),  # 94 nodes: more than MAX_FORK_BLOCKS
}


@pytest.mark.parametrize("case", sorted(SCHEMES))
def test_the_fork_scheme_takes_a_dag_when_duplicating_its_tails_is_safe(case: str) -> None:
    lines, fork = SCHEMES[case]
    view = view_from_asm(lines)
    order = topological(view.entry, view.blocks, lambda a, b: False)
    assert order is not None
    infos = {i.address: analyse(i) for i in view.instructions()}
    assert if_conversion._is_tree(order, infos) is fork
    tree = if_conversion._fork_tree(order, infos)
    if tree is not None:  # every block once per path from the entry
        assert len(tree.views) <= if_conversion.MAX_FORK_BLOCKS
        assert len(tree.views) > len(order)
    result = harden(PASS, view)
    assert isinstance(result, Rewrite), result
