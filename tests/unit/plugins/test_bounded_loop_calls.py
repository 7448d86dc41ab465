"""bounded-loop with calls in the loop body: each call runs as an inline predicated clone of
its callee (plugins/support/clone.py) in every one of the ``bound`` iterations, under the
block's predicate.  Differential: original vs hardened loop in raw Unicorn on hundreds of
random states, the secret exit taken before, at and after the iteration that calls; a call
in an inner loop; a callee's table load (loop_table's anchored loads); every new refusal."""

from __future__ import annotations

import dataclasses
import random
import struct
from pathlib import Path

import pytest

from leakdbt.dbt.calls import Linker
from leakdbt.dbt.harden import Callees, region_view
from leakdbt.dbt.region import CodeRegion, form_region
from leakdbt.dbt.relocate import relocate
from leakdbt.loader.image import Image
from leakdbt.plugin_api import Refusal, Rewrite
from plugins.bounded_loop import PASS
from plugins.support.loop_table import anchored_loads
from tests.unit.dbt.harness import PIE_BIAS, SCRATCH, STACK, RegionCheck, Sandbox, State
from tests.unit.plugins.ifc_support import (
    REG,
    blocks_from_asm,
    build,
    cfg_of,
    harden,
    load_plt_call,
    loop_header,
    sandbox_for,
    state,
    trace,
    view_from_asm,
    with_memory,
)
from tests.unit.plugins.test_plt_clone import _modules as plt_modules
from tests.unit.plugins.test_plt_clone import _sandbox as plt_sandbox

SOURCE = r"""
long g_count;
static const signed char table[80] = {
    62, -1, -1, -1, 63, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, -1, -1, -1, -2, -1, -1, -1,
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
    25, -1, -1, -1, -1, -1, -1, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
    41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51};

__attribute__((noinline)) long leaf(long x) {
    if (x & 1) { g_count += x; return x * 3; }
    return x >> 1;
}
__attribute__((noinline)) int value(char c) {
    unsigned char v = (unsigned char)(c - 43);
    if (v > 79) return -1;
    return table[v];
}
/* the call after the secret exit's test */
__attribute__((noinline)) long find(const long *a, long key) {
    long acc = 0;
    for (long i = 0; i < 16; i++) {
        if (a[i] == key) return acc;
        acc += leaf(a[i]);
    }
    return acc;
}
/* one iteration calls: the exit comes before, at or after it */
__attribute__((noinline)) long once(const long *a, long key, long when) {
    long acc = 0;
    for (long i = 0; i < 16; i++) {
        long x = a[i];
        if (i == when) acc += leaf(x + i);
        if (x == key) return acc;
        acc ^= x;
    }
    return acc;
}
/* a call in an inner loop */
__attribute__((noinline)) long nested(const long *a, long key, long m) {
    long acc = 0;
    for (long i = 0; i < 4; i++) {
        const long *row = a + 4 * i;
        long j = 0;
        do {
            if (row[j] == key) return acc;
            acc += leaf(row[j]);
        } while (++j < m);
    }
    return acc;
}
/* libb64's decoding loop: the table lookup in the callee */
__attribute__((noinline)) long decode(const char *p, const char *end) {
    long acc = 0;
    while (p != end) {
        int v = value(*p++);
        if (v >= 0) acc = (acc << 6) ^ v ^ (acc >> 58);
        else if (v == -2) break;
    }
    return acc;
}
int main(void) { return 0; }
"""
A = SCRATCH + 0x1000
PARAMS: dict[str, dict[str, int | str | bool]] = {
    "find": {"bound": 16}, "once": {"bound": 16}, "decode": {"bound": 48},
    "nested": {"bound": 4}}
# The registers at each loop's header, as gcc -O2 compiles SOURCE (the tests check it):
# find: rdx walks A to r8, rcx sums; once: r10 = A, rcx = i, r9 sums, rdx = when; nested:
# r9 walks the rows to r10, rdx = m, r8 sums; decode: rdx walks to rsi, rcx = acc.
ENTRY = {"find": "mov rdi, qword ptr [rdx]", "once": "mov r8, qword ptr [r10 + rcx*8]",
         "nested": "xor ecx, ecx", "decode": "movsx edi, byte ptr [rdx]"}


@pytest.fixture(scope="module", params=["static", "static-pie"])
def program(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Image:
    return build(tmp_path_factory.mktemp("loopcall"), "loopcall", SOURCE, request.param)


def _region(image: Image, function: str) -> CodeRegion:
    cfg = cfg_of(image, function)
    return form_region(cfg, loop_header(cfg), f"{function}-loop", loop=True)


def _view(image: Image, sandbox: Sandbox, region: CodeRegion, params: dict[str, int | str | bool],
          callees: Callees) -> object:
    return region_view(region, "loop", sandbox.bias, params, None, image, callees)


def _check(image: Image, function: str, params: dict[str, int | str | bool] | None = None
           ) -> tuple[RegionCheck, Rewrite]:
    sandbox = sandbox_for(image)
    region = _region(image, function)
    first = next(b for b in region.block_list() if b.start == region.entry).insns[0]
    assert f"{first.mnemonic} {first.op_str}" == ENTRY[function]  # the states below fit
    callees = Callees(image)
    params = dict(params or PARAMS[function])
    if function == "nested":  # the inner loop's header: its offset from the region's entry
        cfg = cfg_of(image, function)
        inner = max(a for a in cfg.blocks if a in region.blocks and a != region.entry
                    and any(cfg.dominates(a, p) for p in cfg.blocks[a].preds))
        params[f"inner_bound+{inner - region.entry:#x}"] = 4
    rewrite = harden(PASS, _view(image, sandbox, region, params, callees))  # type: ignore[arg-type]
    assert isinstance(rewrite, Rewrite), rewrite
    t = relocate(region, sandbox.bias, sandbox.place, dict(rewrite.replace), rewrite.code,
                 callees.instructions())
    return RegionCheck(sandbox, region, t, scratch_below_red_zone=True, dead_below=0), rewrite


def _longs(values: list[int]) -> bytes:
    return b"".join(struct.pack("<q", v) for v in values)


def _search_state(seed: str, at: int | None, **regs: int) -> State:
    """16 random longs at A (odd and even), the key rsi equal to a[at] (first occurrence)
    or to none of them; ``regs``: the loop's other registers."""
    rng = random.Random(seed)
    values = [rng.randrange(-1000, 1000) for _ in range(16)]
    key = values[at] if at is not None else 5000 + rng.randrange(100)
    if at is not None:
        values = [v if i >= at or v != key else v + 2001 for i, v in enumerate(values)]
    return with_memory(state(seed, rdi=A, rsi=key, **regs), A, _longs(values))


def _code_state(seed: str, length: int, stop: int | None) -> State:
    """``length`` base64-ish characters at A (some invalid, a '=' at ``stop``), rdx = A, rsi =
    A + length, rcx = 0."""
    rng = random.Random(seed)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/ \n*~"
    text = bytearray(rng.choice(alphabet) for _ in range(length))
    if stop is not None and stop < length:
        text[stop] = ord("=")
    return with_memory(state(seed, rdx=A, rsi=A + length, rcx=0), A, bytes(text))


def _once_state(seed: str, at: int | None, when: int) -> State:
    return _search_state(seed, at, r10=A, rcx=0, rdx=when)


def _states(function: str, count: int) -> list[tuple[str, State]]:
    out = []
    for i in range(count):
        seed = f"loopcall:{function}:{i}"
        rng = random.Random(seed)
        at = rng.randrange(16) if rng.random() < 0.8 else None
        if function == "once":
            s = _once_state(seed, at, rng.choice([at if at is not None else 3,
                                                  rng.randrange(16), 20]))
        elif function == "nested":
            s = _search_state(seed, at, r9=A, r10=A + 0x80, rdx=rng.randrange(1, 5))
        elif function == "decode":
            n = rng.randrange(1, 40)
            s = _code_state(seed, n, rng.randrange(n + 5) if rng.random() < 0.4 else None)
        else:
            s = _search_state(seed, at, rdx=A, r8=A + 0x80)
        out.append((seed, s))
    return out


@pytest.mark.parametrize("function", ["find", "once", "nested"])
def test_a_loop_with_a_call_computes_what_the_original_computes(program: Image,
                                                                function: str) -> None:
    check, rewrite = _check(program, function)
    assert rewrite.code is not None and not any(line.startswith("call")
                                                for line in rewrite.code)
    states = _states(function, 200)
    with check:
        report = check.compare(states)
        results = {check.outcome(False, s).gprs[REG["rax"]] for _, s in states[:40]}
    assert not report.mismatches, report.mismatches[:2]
    assert report.compared == len(states)
    assert len(results) >= 10


def test_the_exit_before_at_and_after_the_calling_iteration(program: Image) -> None:
    """once(): the iteration `when` calls; the key sits before, at or after it."""
    check, _ = _check(program, "once")
    states = [(f"when:{w}:{at}:{k}", _once_state(f"when:{w}:{at}:{k}", at, w))
              for w in (0, 5, 15) for at in (None, 0, 4, 5, 6, 15) for k in range(3)]
    with check:
        report = check.compare(states)
    assert not report.mismatches, report.mismatches[:2]
    assert report.compared == len(states)


def test_random_flags_and_registers_too(program: Image) -> None:
    """Fully random states (rdx walking A to r8, everything else random: flags, rsi, rcx)."""
    check, _ = _check(program, "find")
    with check:
        report = check.compare((f"rnd:{i}", with_memory(state(
            f"rnd:{i}", rdx=A, r8=A + 0x80, rsi=random.Random(i).randrange(-3, 3)), A, _longs(
            [random.Random(i).randrange(-3, 3) for _ in range(16)]))) for i in range(150))
    assert not report.mismatches, report.mismatches[:2]
    assert report.compared == 150


def test_the_clone_runs_the_same_whatever_the_exit_point(program: Image) -> None:
    check, _ = _check(program, "find")
    states = [_search_state("leak", at, rdx=A, r8=A + 0x80) for at in (0, 7, 15, None)]
    with check:
        orig = [trace(check, s, copy=False) for s in states]
        copy = [trace(check, s, copy=True) for s in states]
    assert len({o[0] for o in orig}) == len(states)  # the original's exit point shows
    assert len({c[0] for c in copy}) == 1  # the same instructions, the clone's included
    assert len({c[1] for c in copy}) == 1  # the same cache lines, in the same order


@pytest.fixture(scope="module")
def pie(tmp_path_factory: pytest.TempPathFactory) -> Image:
    return build(tmp_path_factory.mktemp("loopcallpie"), "loopcall", SOURCE, "static-pie")


def test_a_table_load_in_the_callee_is_scanned(pie: Image) -> None:
    """decode() calls value(), which reads `table` at `lea rax, [rip + X]` + a bounded
    index: an anchored load, scanned over the table's span in every iteration."""
    check, rewrite = _check(pie, "decode")
    assert rewrite.code is not None and any(line.startswith("lt_scan") for line in rewrite.code)
    states = _states("decode", 150)
    with check:
        report = check.compare(states)
        ns = {check.outcome(False, s).gprs[REG["rax"]] for _, s in states}
    assert not report.mismatches, report.mismatches[:2]
    assert report.compared == len(states) and len(ns) >= 10


def test_the_table_scan_touches_the_same_lines_whatever_the_characters(pie: Image) -> None:
    check, _ = _check(pie, "decode")
    states = [_code_state(f"lines:{k}", 24, stop) for k, stop in enumerate((None, 3, 20))]
    with check:
        copy = [trace(check, s, copy=True) for s in states]
        orig = [trace(check, s, copy=False) for s in states]
    assert len({o[1] for o in orig}) > 1  # the original's table lines depend on the text
    assert len({c[0] for c in copy}) == 1 and len({c[1] for c in copy}) == 1


# -- the anchored-load recogniser ----------------------------------------------------------

def test_anchored_loads_need_a_rip_base_and_a_bounded_index() -> None:
    ok = blocks_from_asm(["movzx edi, dil", "lea rax, [rip + 0x100]",
                          "movsx eax, byte ptr [rax + rdi]", "ret"], 0x10000)[0]
    load = ok.insns[2]
    assert ok.insns[1].rip_target is not None
    assert anchored_loads(ok) == {load.address: (ok.insns[1].rip_target, 256)}
    unbounded = blocks_from_asm(["lea rax, [rip + 0x100]", "movsx eax, byte ptr [rax + rdi]",
                                 "ret"], 0x10000)[0]
    assert anchored_loads(unbounded) == {}
    rewritten = blocks_from_asm(["movzx edi, dil", "lea rax, [rip + 0x100]", "add rax, rsi",
                                 "movsx eax, byte ptr [rax + rdi]", "ret"], 0x10000)[0]
    assert anchored_loads(rewritten) == {}


# -- refusals ------------------------------------------------------------------------------

CALLEE = 0x20000
LOOP = ["top:", "dec rdi", "je 0x13000", f"call {CALLEE:#x}", "jmp top"]
REFUSALS = {  # case -> (loop lines, callee lines or None, params, message)
    "undecodable": (LOOP, None, {"bound": 4},
                    "'call 0x20000' at 0x10009 calls 0x20000, which is not a function the "
                    "translator can decode"),
    "callee-loop": (LOOP, ["l:", "dec rsi", "jne l", "ret"], {"bound": 4},
                    "has a loop ('jne 0x20000' at 0x20003 jumps back to 0x20000): loops in "
                    "callees are not cloned"),
    "pointer": (LOOP, ["mov rax, qword ptr [rdi]", "ret"], {"bound": 4},
                "its address is neither the clone's own stack nor module data"),
    "budget": (LOOP, ["inc rax"] * 20 + ["ret"], {"bound": 4, "clone_insns": 10},
               "would run more than 10 instructions (clone_insns)"),
    "indirect": (["top:", "dec rdi", "je 0x13000", "call rax", "jmp top"], ["ret"],
                 {"bound": 4}, "is an indirect call (its callee is known only when it runs)"),
    "return-site": (["top:", "dec rdi", "je 0x13000", "jmp inner", "latch:",
                     f"call {CALLEE:#x}", "inner:", "dec rsi", "jne latch", "jmp top"], ["ret"],
                    {"bound": 4, "inner_bound+0x10": 4},
                    "'call 0x20000' at 0x1000b returns to 0x10010, which ends an iteration or "
                    "leaves its loop (a call must return into the same iteration)"),
    "run-time-header": (["top:", f"call {CALLEE:#x}", "cmp rdi, rsi", "je 0x13000",
                         "add rdi, 1", "jmp top"], ["ret"], {"bound": "rsi - rdi"},
                        "is a call in the header of a loop with a run-time bound"),
    "dead-end": (["top:", "dec rdi", "je 0x13000", "test rsi, rsi", "jne skip",
                  f"call {CALLEE:#x}", "skip:", "jmp top"], ["ud2"], {"bound": 4},
                 "is a call that does not return (a dead end in a bounded loop is not "
                 "supported)"),
    "callee-step": (["top:", "mov al, byte ptr [rdi]", "test al, al", "je 0x13000",
                     f"call {CALLEE:#x}", "jmp top"], ["inc rdi", "ret"], {"bound": 4},
                    "'mov al, byte ptr [rdi]' at 0x10000: its address depends on rdi, which "
                    "the loop computes (not an induction variable)"),
    "clone-writes-limit": (["top:", "cmp rdi, rsi", "je 0x13000", "add rdi, 1",
                            f"call {CALLEE:#x}", "jmp top"], ["mov esi, 1", "ret"],
                           {"bound": "rsi - rdi"},
                           "the run-time bound's rsi is written in the loop"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_call_refusals_say_why(case: str) -> None:
    lines, callee, params, message = REFUSALS[case]
    view = view_from_asm(lines, "loop", "loop", params,
                         {} if callee is None else {CALLEE: callee})
    if case == "dead-end":  # the translator gives a call that never returns no successor
        blocks = tuple(dataclasses.replace(b, successors=()) if b.last.mnemonic == "call"
                       else b for b in view.blocks)
        view = dataclasses.replace(view, blocks=blocks)
    result = harden(PASS, view)
    assert isinstance(result, Refusal), result
    assert message in result.reason, result.reason


def test_the_same_step_in_the_loop_itself_is_an_induction_variable() -> None:
    """The callee-step refusal's loop with `inc rdi` in the body instead of the callee."""
    lines = ["top:", "mov al, byte ptr [rdi]", "test al, al", "je 0x13000", "inc rdi",
             f"call {CALLEE:#x}", "jmp top"]
    view = view_from_asm(lines, "loop", "loop", {"bound": 4}, {CALLEE: ["inc rsi", "ret"]})
    assert isinstance(harden(PASS, view), Rewrite)


def test_a_callee_within_the_rules_is_cloned_in_the_loop() -> None:
    view = view_from_asm(LOOP, "loop", "loop", {"bound": 4},
                         {CALLEE: ["push rbx", "inc rbx", "pop rbx", "ret"]})
    result = harden(PASS, view)
    assert isinstance(result, Rewrite) and result.code is not None
    code = list(result.code)
    assert ".insn 0x20001" in code and not any(line.startswith("call") for line in code)
    enter = code.index("lea rsp, [rsp - 0x1288]")  # below the loop's whole scratch frame
    assert "lea rsp, [rsp + 0x1288]" in code[enter:]


# -- a call through the PLT, into another module ---------------------------------------------

@pytest.fixture(scope="module")
def plt_call(built: Path) -> tuple[Image, Image]:
    """build/dynamic/plt_call and its libmulmod.so (see tests/unit/plugins/test_plt_clone.py)."""
    return load_plt_call()


def _plt_loop_check(exe: Image, lib: Image) -> RegionCheck:
    """modexp_plt's loop over the exponent's bits (an inner loop: sqrmod's 128 steps; a
    secret `if` that calls mulmod@plt, whose GOT slot is bound to libmulmod's mulmod, which
    calls __umodti3), hardened with bound 4 and inner bound 128."""
    sb = plt_sandbox(exe, lib)
    modules, loaded = plt_modules(exe, lib)

    def read(address: int, size: int) -> bytes | None:
        for a, d in sb.writable:  # the GOT as the sandbox writes it before each run
            if a <= address < a + len(d):
                return d[address - a:address - a + size]
        try:
            return bytes(sb.uc.mem_read(address, size))
        except Exception:  # noqa: BLE001 - unmapped: nothing to read
            return None

    callees = Callees(exe, Linker(modules, loaded[0], read, lambda: loaded, True))
    region = _region(exe, "modexp_plt")
    first = next(b for b in region.block_list() if b.start == region.entry).insns[0]
    assert first.op_str == "rax, r8"  # r8 = r, r14 = bit index, r15 = e, rbx = m, rbp = 0
    cfg = cfg_of(exe, "modexp_plt")
    inner = next(a for a in sorted(cfg.blocks) if a in region.blocks and a != region.entry
                 and any(cfg.dominates(a, p) for p in cfg.blocks[a].preds))
    view = region_view(region, "loop", PIE_BIAS, {"bound": 4,
                                                  f"inner_bound+{inner - region.entry:#x}": 128},
                       None, exe, callees)
    rewrite = harden(PASS, view)
    assert isinstance(rewrite, Rewrite), rewrite
    assert rewrite.code is not None and not any(line.startswith("call") for line in rewrite.code)
    t = relocate(region, PIE_BIAS, sb.place, dict(rewrite.replace), rewrite.code,
                 callees.instructions())
    return RegionCheck(sb, region, t, scratch_below_red_zone=True, dead_below=0)


def test_a_plt_call_in_the_loop_computes_what_the_original_computes(
        plt_call: tuple[Image, Image]) -> None:
    """Bits 0 and 1 of the exponent (at most 2 of the 4 iterations: the 128-step inner loop
    keeps the original under the harness's cap of region entries), each bit set or not:
    the clone of mulmod (and __umodti3) runs active or inactive in every iteration."""
    check = _plt_loop_check(*plt_call)
    states = []
    for i in range(120):
        seed = f"plt-loop:{i}"
        rng = random.Random(seed)
        s = state(seed, r8=rng.randrange(1 << 64), r14=rng.randrange(2),
                  r15=rng.randrange(1 << 64), rbx=2**64 - 59 - rng.randrange(1000), rbp=0)
        at = s.gprs[REG["rsp"]] - STACK + 8
        base = rng.randrange(1 << 64).to_bytes(8, "little")
        states.append((seed, dataclasses.replace(s, stack=s.stack[:at] + base
                                                 + s.stack[at + 8:])))
    with check:
        report = check.compare(states)
    assert not report.mismatches, report.mismatches[:2]
    assert report.compared == len(states)
