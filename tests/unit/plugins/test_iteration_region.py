"""Iteration regions (plugins/if_conversion.py, ``_iteration``): a secret branch inside a
public loop whose paths meet only by leaving the function (an error return inside the loop
body, libtomcrypt's ``_base64_decode_internal``) forms a branch region that holds the
loop's back edge to its own start.  if-conversion runs it one iteration at a time: the loop
body as seen from the region's start, predicated, ending with a jump to the exit the
original takes (back to the start, after the loop, or an error return).

Differential runs in raw Unicorn (tests/unit/dbt/harness.py): the copy, whose jumps back to
the region's start are sent to the copy's own start (what the dispatcher does with a jump
to a region's start), against the original, over whole runs of the loop on hundreds of
random states (inputs full of the values the secret branches test, random lengths, strict
or not, output buffers too small); the instruction trace of one iteration is the same
whatever the secret.  And the refusals of the iteration shape.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from leakdbt.dbt.region import CodeRegion, form_region
from leakdbt.loader.image import Image
from leakdbt.plugin_api import Refusal, Rewrite
from plugins.if_conversion import PASS as IF_CONVERSION
from tests.unit.dbt.harness import (
    PIE_BIAS,
    SCRATCH,
    SCRATCH_SIZE,
    RegionCheck,
    State,
    random_state,
)
from tests.unit.plugins.ifc_support import (
    REG,
    build,
    cfg_of,
    harden,
    iteration_check,
    sandbox_for,
    view_from_asm,
    view_of,
)

STATES = 300

SOURCE = r"""
/* 254: padding, 255: invalid, else a 6-bit value (map_base64's shape, denser) */
const unsigned char decode_map[256] = {
#define R(i) ((i) % 7 == 3 ? 254 : (i) % 5 == 1 ? 255 : (i) & 63)
#define R8(i) R(i), R(i + 1), R(i + 2), R(i + 3), R(i + 4), R(i + 5), R(i + 6), R(i + 7)
#define R64(i) R8(i), R8(i + 8), R8(i + 16), R8(i + 24), R8(i + 32), R8(i + 40), \
    R8(i + 48), R8(i + 56)
    R64(0), R64(64), R64(128), R64(192)
};

/* libtomcrypt 1.18's _base64_decode_internal */
__attribute__((noipa)) int decode(const unsigned char *in, unsigned long inlen,
                                  unsigned char *out, unsigned long *outlen,
                                  const unsigned char *m, int is_strict)
{
    unsigned long t, x, y, z;
    unsigned char c;
    int g = 0;
    for (x = y = z = t = 0; x < inlen; x++) {
        c = m[in[x] & 0xFF];
        if (c == 254) {
            g++;
            continue;
        } else if (is_strict && g > 0) {
            return 7;
        }
        if (c == 255) {
            if (is_strict)
                return 7;
            else
                continue;
        }
        t = (t << 6) | c;
        if (++y == 4) {
            if (z + 3 > *outlen)
                return 6;
            out[z++] = (unsigned char)((t >> 16) & 255);
            out[z++] = (unsigned char)((t >> 8) & 255);
            out[z++] = (unsigned char)(t & 255);
            y = t = 0;
        }
    }
    *outlen = z;
    return (int)(g + y);
}

int main(void)
{
    unsigned char o[8];
    unsigned long n = sizeof o;
    return decode((const unsigned char *)"abcd", 4, o, &n, decode_map, 0);
}
"""


@pytest.fixture(scope="module", params=["static", "static-pie"])
def program(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Image:
    directory: Path = tmp_path_factory.mktemp(f"iteration-{request.param}")
    return build(directory, "iteration", SOURCE, request.param)


def secret_branch_region(image: Image) -> CodeRegion:
    """The branch region analyze writes: at the block whose branch tests ``c == 254``."""
    cfg = cfg_of(image, "decode")
    for start in sorted(cfg.blocks):
        b = cfg.blocks[start]
        if len(b.insns) > 1 and b.insns[-2].mnemonic == "cmp" \
                and b.insns[-2].op_str.endswith("0xfe") and b.last.mnemonic in ("je", "jne"):
            return form_region(cfg, start, "decode-c", branch=True)
    raise AssertionError("no block branches on c == 254")


def _check(program: Image) -> tuple[RegionCheck, Rewrite, CodeRegion]:
    sandbox = sandbox_for(program)
    region = secret_branch_region(program)
    # the shape this is about: the region holds an edge back to its own start
    assert any(region.entry in region.cfg.blocks[b].inside_succs() for b in region.blocks)
    rewrite = harden(IF_CONVERSION, view_of(region, sandbox.bias, "branch"))
    assert isinstance(rewrite, Rewrite), rewrite
    check = iteration_check(sandbox, region, rewrite)
    return check, rewrite, region


def _state(seed: str, program: Image, region: CodeRegion, length: int | None = None
           ) -> State:
    """Arguments at the secret branch's block: the loop's registers are gcc's, so the
    state is made by running the function's start from a random state (both sides start
    from what the original has at the region's start)."""
    rng = random.Random(seed)
    s = random_state(rng)
    gprs = list(s.gprs)
    base = SCRATCH + SCRATCH_SIZE // 4
    n = rng.randrange(1, 30) if length is None else length  # under the entry cap
    sym = program.symbol("decode_map")
    assert sym is not None
    bias = PIE_BIAS if program.is_pie else 0
    gprs[REG["rdi"]] = base  # in
    gprs[REG["rsi"]] = n
    gprs[REG["rdx"]] = base + 0x400  # out
    gprs[REG["rcx"]] = base + 0x800  # outlen
    gprs[REG["r8"]] = sym.value + bias  # map
    gprs[REG["r9"]] = rng.randrange(2)  # is_strict
    scratch = bytearray(s.scratch)
    off = base - SCRATCH
    # the input: values mostly, padding (254) and invalid (255) characters often
    pad, bad = rng.random() * 0.3, rng.random() * 0.3
    scratch[off:off + n] = bytes(rng.choice((3, 10, 17)) if (r := rng.random()) < pad
                                 else rng.choice((1, 6, 11)) if r < pad + bad
                                 else rng.choice((0, 2, 4, 5, 7, 8, 9)) for _ in range(n))
    scratch[off + 0x800:off + 0x808] = rng.choice((rng.randrange(0, 40), 1 << 20)) \
        .to_bytes(8, "little")
    return dataclasses.replace(s, gprs=tuple(gprs), scratch=bytes(scratch))


def _at_region(check: RegionCheck, program: Image, s: State) -> State | None:
    """The state when the original first reaches the region's start from the function's
    entry with ``s`` (None: it does not, e.g. the length is 0)."""
    from unicorn import UC_HOOK_CODE
    from unicorn import x86_const as x

    from tests.unit.dbt.harness import GPRS, STACK, STACK_SIZE

    sandbox = check.sandbox
    uc = sandbox.uc
    entry = check.region.entry + sandbox.bias
    func = program.symbol("decode")
    assert func is not None
    got: list[State] = []

    def stop(uc_: object, address: int, size: int, _: object) -> None:
        regs = uc.reg_read_batch([r for _, r in GPRS] + [x.UC_X86_REG_RFLAGS])
        got.append(dataclasses.replace(
            s, gprs=tuple(regs[:16]), rflags=regs[16],
            stack=bytes(uc.mem_read(STACK, STACK_SIZE)),
            scratch=bytes(uc.mem_read(SCRATCH, SCRATCH_SIZE))))
        uc.emu_stop()

    sandbox.load(s)
    hook = uc.hook_add(UC_HOOK_CODE, stop, None, entry, entry)
    uc.ctl_flush_tb()
    try:
        uc.emu_start(func.value + sandbox.bias, 0, count=10_000)
    except Exception:  # noqa: BLE001 - a fault before the region: no state
        return None
    finally:
        uc.hook_del(hook)
        uc.ctl_flush_tb()
    return got[0] if got else None


def test_an_iteration_region_computes_what_the_loop_computes(program: Image) -> None:
    check, _, region = _check(program)
    states: list[tuple[str, State]] = []
    with check:
        for i in range(STATES * 2):
            seed = f"iteration:{i}"
            at = _at_region(check, program, _state(seed, program, region))
            if at is not None:
                states.append((seed, at))
            if len(states) == STATES:
                break
        report = check.compare(states)
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared == STATES, report
    # whole loops ran: many block entries per state, and every way out was taken
    assert report.stops.get("exit", 0) == STATES, report.stops
    results = {check.outcome(False, s).gprs[REG["rax"]] for _, s in states[:60]}
    assert {6, 7} <= results and len(results) > 4, results


def test_one_iteration_runs_the_same_instructions_whatever_the_input(program: Image) -> None:
    """Inputs that take the padding, invalid and value paths in the first iteration: the
    copy runs the same instructions up to its first exit; the original does not."""
    from tests.unit.plugins.ifc_support import trace

    check, _, region = _check(program)
    sym = program.symbol("decode_map")
    assert sym is not None
    table = None  # the values follow R() of the source
    chars = {254: None, 255: None, 5: None}
    for i in range(256):
        v = i % 7 == 3 and 254 or (i % 5 == 1 and 255) or (i & 63)
        if v in chars and chars[v] is None:
            chars[v] = i
    assert table is None or all(table[c] == v for v, c in chars.items() if c is not None)
    traces = []
    with check:
        for v, c in chars.items():
            s = _state(f"one:{v}", program, region, length=1)
            off = SCRATCH_SIZE // 4
            scratch = bytearray(s.scratch)
            assert c is not None
            scratch[off] = c
            at = _at_region(check, program, dataclasses.replace(s, scratch=bytes(scratch)))
            assert at is not None
            traces.append((trace(check, at, copy=False)[0], trace(check, at, copy=True)[0]))
    assert len({t[0] for t in traces}) == 3
    assert len({t[1] for t in traces}) == 1 and traces[0][1]


# -- refusals ---------------------------------------------------------------------------------

def test_refused_an_inner_loop_in_an_iteration() -> None:
    view = view_from_asm(["top:", "test edi, edi", "je skip", "inner:", "sub ecx, 1",
                          "jne inner", "skip:", "sub esi, 1", "jne top", "ret"])
    result = harden(IF_CONVERSION, view)
    assert isinstance(result, Refusal), result
    assert result.reason == ("the region contains a loop (a cycle through its blocks): the "
                             "loop iteration from 0x10000 holds another loop (an iteration "
                             "region runs no inner loop)"), result.reason


def test_refused_a_branch_that_leaves_the_loop() -> None:
    """An early exit on the secret (a MAC check's ``if (a[i] != b[i]) return 0``): the
    exit would be the leak, which bounded-loop's loop region removes."""
    view = view_from_asm(["top:", "mov al, byte ptr [rdi + rcx]", "cmp al, byte ptr [rsi + rcx]",
                          "jne out", "add rcx, 1", "cmp rcx, rdx", "jne top", "mov eax, 1",
                          "ret", "out:", "xor eax, eax", "ret"])
    result = harden(IF_CONVERSION, view)
    assert isinstance(result, Refusal), result
    out = next(b.start for b in view.blocks if b.insns[0].mnemonic == "xor")
    jne = view.blocks[0].last.address
    assert result.reason == (
        "the region contains a loop (a cycle through its blocks): its branch "
        f"'jne {out:#x}' at {jne:#x} leaves the loop for {out:#x} (a secret exit: the "
        "enclosing loop is bounded-loop's region, kind = \"loop\")"), result.reason


def test_refused_a_move_of_rsp_at_the_start_of_an_iteration() -> None:
    view = view_from_asm(["top:", "sub rsp, 8", "add rsp, 8", "test edi, edi", "je skip",
                          "add eax, 1", "skip:", "sub esi, 1", "jne top", "ret"])
    result = harden(IF_CONVERSION, view)
    assert isinstance(result, Refusal), result
    assert result.reason == ("'sub rsp, 8' at 0x10000 moves rsp at the start of a loop "
                             "iteration (the iteration's copy starts where the entry leaves "
                             "rsp)"), result.reason


def test_refused_a_call_in_an_iteration() -> None:
    view = view_from_asm(["top:", "test edi, edi", "je skip", "call 0x20000", "skip:",
                          "sub esi, 1", "jne top", "ret"], callees={0x20000: ["ret"]})
    result = harden(IF_CONVERSION, view)
    assert isinstance(result, Refusal), result
    assert result.reason.startswith("'call 0x20000' at 0x"), result.reason
    assert result.reason.endswith("is a call in a loop iteration (an iteration region does "
                                  "not clone its calls)"), result.reason


def test_an_iteration_of_asm_has_one_exit_per_way_out() -> None:
    """The code ends with a test per exit but the last: back to the start, the loop's exit,
    the early return (which leaves the iteration for the original ``ret``)."""
    view = view_from_asm(["top:", "test edi, 1", "je skip", "cmp edx, 3", "je bad",
                          "add eax, 1", "skip:", "sub esi, 1", "jne top", "ret", "bad:",
                          "mov eax, 7", "ret"])
    result = harden(IF_CONVERSION, view)
    assert isinstance(result, Rewrite), result
    code = result.code or ()
    jumps = [line for line in code if line.startswith("j")]
    targets = {line.split()[1] for line in jumps if "@" in line}
    assert targets == {"@0x10000", *(f"@{b.start:#x}" for b in view.blocks
                                     if b.last.mnemonic == "ret")}, jumps
    assert sum(1 for line in jumps if "ic_exit" in line) == len(targets) - 1, jumps
