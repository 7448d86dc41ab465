"""Tests of plugins.fp_ftz_daz: differential runs of float regions (original vs rewritten, in
the harness's raw Unicorn) — identical on normal inputs; on any input (subnormals included)
identical to the original run with FTZ/DAZ set by hand in MXCSR; MXCSR's control bits come
back as they were — plus the refusals."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from unicorn import x86_const as x

from leakdbt.dbt.cfg import function_cfg
from leakdbt.dbt.harden import region_view
from leakdbt.dbt.region import CodeRegion, form_region
from leakdbt.dbt.relocate import Translation, relocate
from leakdbt.loader.elf import load_image
from leakdbt.loader.image import Image
from leakdbt.plugin_api import BlockView, Refusal, RegionView, Rewrite
from leakdbt.x86.asm import assemble
from leakdbt.x86.insn import decode
from plugins.fp_ftz_daz import DAZ, FTZ, PASS, is_float_arithmetic
from tests.unit.dbt.harness import (
    PIE_BIAS,
    STACK,
    RegionCheck,
    Sandbox,
    State,
    compile_program,
    differences,
    nm_symbols,
    random_state,
)

KINDS = ("static", "static-pie")
DEFAULT = 0x1F80  # all exceptions masked, round to nearest, no FTZ/DAZ
STATES = 120

C_SOURCE = """
#define NI __attribute__((noipa))
NI double f(double a, double b) { return a * b + a / b; }
NI float fs(float a, float b) { return a * b - a / b; }
NI double ext(double r) { return r; }
NI double k(double a, double b) { double r = ext(a * b); return r / b; }
NI long double lmul(long double a, long double b) { return a * b; }
int main(void) { return (int)(f(1, 2) + fs(1, 2) + k(1, 2) + (double)lmul(1, 2)); }
"""

S_SOURCE = """
    .intel_syntax noprefix
    .text
    .globl fpmix
    .type fpmix, @function
fpmix:                      # a branch region whose arms return
    mulsd xmm0, xmm1
    ucomisd xmm0, xmm2
    ja fpmix_big
    addsd xmm0, xmm1
    ret
fpmix_big:
    subsd xmm0, xmm1
    ret
    .size fpmix, .-fpmix

    .globl fploop
    .type fploop, @function
fploop:                     # a loop region: the header is its own back edge's target
    test rdi, rdi
    je fploop_out
fploop_top:
    mulsd xmm0, xmm1
    addsd xmm0, xmm2
    dec rdi
    jne fploop_top
fploop_out:
    ret
    .size fploop, .-fploop

    .globl fpfall
    .type fpfall, @function
fpfall:                     # a block that falls through out of its region
    mulsd xmm0, xmm1
    divsd xmm0, xmm2
fpfall_join:
    dec rdi
    jg fpfall_more
    ret
fpfall_more:
    subsd xmm0, xmm1
    jmp fpfall_join
    .size fpfall, .-fpfall

    .globl fpwhile
    .type fpwhile, @function
fpwhile:                    # a loop left from its header, re-entered from its body
    dec rdi
    js fpwhile_out
    mulsd xmm0, xmm1
    addsd xmm0, xmm2
    jmp fpwhile
fpwhile_out:
    ret
    .size fpwhile, .-fpwhile

    .globl fpbr
    .type fpbr, @function
fpbr:                       # a branch region whose second block is a lone jcc
    mulsd xmm0, xmm1
    ucomisd xmm0, xmm2
    jp fpbr_join
    je fpbr_join
fpbr_join:
    addsd xmm0, xmm1
    ret
    .size fpbr, .-fpbr
    .section .note.GNU-stack,"",@progbits
"""


class MxcsrSandbox(Sandbox):
    """A sandbox whose runs start with ``mxcsr`` (the harness's default otherwise)."""

    mxcsr = DEFAULT

    def load(self, state: State) -> None:
        super().load(state)
        self.uc.reg_write(x.UC_X86_REG_MXCSR, self.mxcsr)


@dataclass
class Program:
    image: Image
    symbols: dict[str, int]

    @property
    def bias(self) -> int:
        return PIE_BIAS if self.image.is_pie else 0

    def region(self, function: str, label: str | None = None, **shape: bool) -> CodeRegion:
        func = self.image.symbol(function)
        assert func is not None
        cfg = function_cfg(self.image, func)
        at = self.symbols[label or function]
        return form_region(cfg, at, label or function, **shape)


@pytest.fixture(scope="module", params=KINDS)
def program(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Program:
    directory = tmp_path_factory.mktemp(f"float-{request.param}")
    path = compile_program(directory, "floats", {"floats.c": C_SOURCE, "fpasm.S": S_SOURCE},
                           request.param)
    return Program(load_image(str(path)), nm_symbols(Path(path)))


def _view(program: Program, region: CodeRegion, kind: str | None = "float",
          **params: bool) -> RegionView:
    return region_view(region, kind, program.bias, {"ftz": True, "daz": True, **params},
                       None, program.image)


def _harden(program: Program, region: CodeRegion, sandbox: Sandbox, kind: str | None = "float",
            **params: bool) -> tuple[Rewrite, Translation]:
    rewrite = PASS.harden(_view(program, region, kind, **params), None, None)  # type: ignore[arg-type]
    assert isinstance(rewrite, Rewrite), rewrite
    return rewrite, relocate(region, sandbox.bias, sandbox.place, rewrite.replace)


# -- inputs ------------------------------------------------------------------------------------


def _double(rng: random.Random, kind: str) -> int:
    """The bits of a double: ``normal`` (exponent within +-20), ``subnormal``, ``tiny`` (a
    normal whose products underflow), or ``special`` (zeros, infinities, NaN, 1)."""
    sign = rng.getrandbits(1) << 63
    if kind == "normal":
        return sign | (1023 + rng.randrange(-20, 21)) << 52 | rng.getrandbits(52)
    if kind == "subnormal":
        return sign | rng.randrange(1, 1 << 52)
    if kind == "tiny":
        return sign | rng.randrange(1, 40) << 52 | rng.getrandbits(52)
    return sign | rng.choice([0, 0x7FF << 52, 0x7FF8 << 48, 1023 << 52])


def _single(rng: random.Random, kind: str) -> int:
    bits = _double(rng, kind)
    value = struct.unpack("<d", bits.to_bytes(8, "little"))[0]
    if kind == "subnormal":
        return (bits >> 63) << 31 | rng.randrange(1, 1 << 23)
    if kind == "tiny":
        return (bits >> 63) << 31 | rng.randrange(1, 20) << 23 | rng.getrandbits(23)
    return int.from_bytes(struct.pack("<f", value), "little")


def _states(name: str, kinds: list[str], single: bool, n: int,
            choose: dict[str, Callable[[random.Random], int]] | None = None) -> list[State]:
    """Random states whose xmm0-2 low lanes hold doubles (floats) of the given kinds."""
    out = []
    for i in range(n):
        rng = random.Random(f"{name}:{i}")
        state = random_state(rng, choose)
        lanes = []
        for reg in range(3):
            value = _single(rng, rng.choice(kinds)) if single else _double(rng, rng.choice(kinds))
            width = 32 if single else 64
            lanes.append(state.xmm[reg] >> width << width | value)
        out.append(replace(state, xmm=(*lanes, *state.xmm[3:])))
    return out


def _compare(sandbox: MxcsrSandbox, region: CodeRegion, t: Translation, states: list[State],
             original_mxcsr: int, copy_mxcsr: int) -> list[str]:
    """Run the original from ``original_mxcsr`` and the copy from ``copy_mxcsr``: what
    differs, beyond the two MXCSRs differing as they did at the start."""
    problems = []
    with RegionCheck(sandbox, region, t, scratch_below_red_zone=True) as check:
        for i, state in enumerate(states):
            sandbox.mxcsr = original_mxcsr
            orig = check.outcome(False, state)
            sandbox.mxcsr = copy_mxcsr
            copy = check.outcome(True, state)
            assert orig.conclusive and copy.conclusive
            # The sequences' scratch lies below the red zone of the RSP they run at; the
            # region may move RSP down afterwards (k: mulsd, then sub rsp), so what is left
            # to compare is the stack from the entry's red zone up.
            low = state.gprs[7] - 128 - STACK
            for side in (orig, copy):
                stack = side.memory["stack"]
                side.memory["stack"] = bytes(low) + stack[low:]
            orig.mxcsr ^= original_mxcsr ^ copy_mxcsr
            found = differences(orig, copy, check.return_map)
            if found:
                problems.append(f"state {i}: " + "; ".join(found[:4]))
    return problems


# (function, start label, form_region shape, single precision, registers chosen)
REGIONS: list[tuple[str, str | None, dict[str, bool], bool,
                    dict[str, Callable[[random.Random], int]]]] = [
    ("f", None, {"branch": False}, False, {}),
    ("fs", None, {"branch": False}, True, {}),
    ("k", None, {"branch": False}, False, {}),  # a call: instruction mode
    ("fpmix", None, {"branch": True}, False, {}),
    ("fploop", "fploop_top", {"loop": True}, False,
     {"rdi": lambda rng: rng.randrange(1, 12)}),
    ("fpfall", None, {"branch": False}, False, {}),
    ("fpwhile", None, {"loop": True}, False, {"rdi": lambda rng: rng.randrange(0, 12)}),
    ("fpbr", None, {"branch": True}, False, {}),
]
IDS = [r[1] or r[0] for r in REGIONS]


@pytest.mark.parametrize(("function", "label", "shape", "single", "choose"), REGIONS, ids=IDS)
def test_normal_inputs_unchanged(program: Program, function: str, label: str | None,
                                 shape: dict[str, bool], single: bool,
                                 choose: dict[str, Callable[[random.Random], int]]) -> None:
    """Without subnormals (and without underflow) the rewrite computes what the original
    computes, MXCSR included."""
    region = program.region(function, label, **shape)
    sandbox = MxcsrSandbox(program.image, program.bias)
    _, t = _harden(program, region, sandbox)
    states = _states(f"normal:{function}", ["normal", "normal", "special"], single, STATES,
                     choose)
    assert not _compare(sandbox, region, t, states, DEFAULT, DEFAULT)


# float: region mode (where RSP stays put); loop (a kind whose plan may replace the whole
# region): instruction mode
@pytest.mark.parametrize("kind", ["float", "loop"])
@pytest.mark.parametrize(("function", "label", "shape", "single", "choose"), REGIONS, ids=IDS)
def test_results_are_the_ftz_daz_results(program: Program, function: str, label: str | None,
                                         shape: dict[str, bool], single: bool,
                                         choose: dict[str, Callable[[random.Random], int]],
                                         kind: str | None) -> None:
    """On any input the rewrite (run with the default MXCSR) computes what the original
    computes with FTZ and DAZ set by hand — and that differs from the original's own
    results on subnormal inputs, so the flush really happens."""
    region = program.region(function, label, **shape)
    sandbox = MxcsrSandbox(program.image, program.bias)
    _, t = _harden(program, region, sandbox, kind)
    states = _states(f"any:{function}", ["normal", "subnormal", "tiny", "special"], single,
                     STATES, choose)
    assert not _compare(sandbox, region, t, states, DEFAULT | FTZ | DAZ, DEFAULT)
    assert len(_compare(sandbox, region, t, states, DEFAULT, DEFAULT)) > STATES // 10


@pytest.mark.parametrize("flag", ["ftz", "daz"])
def test_one_bit_only(program: Program, flag: str) -> None:
    region = program.region("f", branch=False)
    sandbox = MxcsrSandbox(program.image, program.bias)
    _, t = _harden(program, region, sandbox, ftz=flag == "ftz", daz=flag == "daz")
    states = _states(f"{flag}:f", ["normal", "subnormal", "tiny"], False, 80)
    assert not _compare(sandbox, region, t, states, DEFAULT | (FTZ if flag == "ftz" else DAZ),
                        DEFAULT)


@pytest.mark.parametrize("kind", ["float", "loop"])
@pytest.mark.parametrize("start", [
    0x3F80 | 0x2000,  # round down
    DEFAULT | 0x3F,  # every status flag already set: they stay
    DEFAULT | FTZ,  # FTZ already on: stays on, DAZ goes back off
    0x1F80 & ~0x0800 | 0x6000,  # underflow exceptions unmasked, round toward zero
])
def test_mxcsr_control_bits_restored(program: Program, start: int, kind: str | None) -> None:
    """The program's own MXCSR (rounding, masks, flags, FTZ) comes back after the region,
    and inside it only FTZ and DAZ were added."""
    for function, label, shape, single, choose in REGIONS:
        region = program.region(function, label, **shape)
        sandbox = MxcsrSandbox(program.image, program.bias)
        _, t = _harden(program, region, sandbox, kind)
        states = _states(f"mxcsr:{function}", ["normal"], single, 40, choose)
        assert not _compare(sandbox, region, t, states, start | FTZ | DAZ, start)
        assert not _compare(sandbox, region, t, states, start, start)


def test_modes(program: Program) -> None:
    """Region mode where RSP never moves (entry saves, exits restore); instruction mode
    around each floating-point instruction when the region calls out."""
    for kind in ("float", None):
        view = _view(program, program.region("f", branch=False), kind)
        rewrite = PASS.harden(view, None, None)  # type: ignore[arg-type]
        assert isinstance(rewrite, Rewrite)
        insns = view.instructions()
        assert sorted(rewrite.replace) == [insns[0].address, insns[-1].address]  # entry, ret
    entry, ret = rewrite.replace[insns[0].address], rewrite.replace[insns[-1].address]
    assert "stmxcsr dword ptr [rsp - 0x1f8]" in entry and entry[-1].startswith(".insn")
    assert "or eax, dword ptr [rsp - 0x1f8]" in ret and ret[-1] == f".insn {insns[-1].address:#x}"
    assert "and eax, 0x3f" in ret

    view = _view(program, program.region("k", branch=False))
    rewrite = PASS.harden(view, None, None)  # type: ignore[arg-type]
    assert isinstance(rewrite, Rewrite)
    floats = [i.address for i in view.instructions() if is_float_arithmetic(i)]
    assert floats and sorted(rewrite.replace) == floats
    for lines in rewrite.replace.values():
        assert lines.count("ldmxcsr dword ptr [rsp - 8]") == 2

    for kind in ("loop", "branch"):  # other passes may rewrite the whole region
        view = _view(program, program.region("f", branch=False), kind)
        rewrite = PASS.harden(view, None, None)  # type: ignore[arg-type]
        assert isinstance(rewrite, Rewrite)
        assert sorted(rewrite.replace) == [i.address for i in view.instructions()
                                           if is_float_arithmetic(i)]

    loop = program.region("fploop", "fploop_top", loop=True)
    view = _view(program, loop)  # kind float: region mode in a loop
    rewrite = PASS.harden(view, None, None)  # type: ignore[arg-type]
    assert isinstance(rewrite, Rewrite)
    insns = view.instructions()
    dec = next(i for i in insns if i.mnemonic == "dec")
    assert sorted(rewrite.replace) == [loop.entry, dec.address]  # restore before the back edge
    assert rewrite.replace[dec.address][0] == f".insn {dec.address:#x}"


# -- refusals and applicability ----------------------------------------------------------------

AT = 0x40_1000


def _region(*texts: str, kind: str | None = "float", **params: bool) -> RegionView:
    insns = []
    at = AT
    for text in texts:
        raw = assemble(text, at)
        insn = decode(raw, at)
        assert insn is not None
        insns.append(insn)
        at += len(raw)
    return RegionView("r", kind, "block", AT, (BlockView(AT, tuple(insns), ()),), 0, None,
                      {"ftz": True, "daz": True, **params})


def _reason(view: RegionView) -> str:
    result = PASS.harden(view, None, None)  # type: ignore[arg-type]
    assert isinstance(result, Refusal), result
    return result.reason


def test_x87_refused(program: Program) -> None:
    reason = _reason(_view(program, program.region("lmul", branch=False)))
    assert "x87 floating point: FTZ and DAZ are MXCSR (SSE/AVX) controls and do not apply " \
           "to the x87 FPU" in reason
    assert reason.startswith("'f")
    assert "x87" in _reason(_region("addsd xmm0, xmm1", "fmul st(1)"))


@pytest.mark.parametrize(("texts", "why"), [
    (["vaddpd zmm0, zmm1, zmm2"], "AVX-512 is not supported"),
    (["addsd xmm0, xmm1", "ldmxcsr dword ptr [rsp - 8]"], "reads or writes MXCSR itself"),
    (["stmxcsr dword ptr [rsp - 8]", "addsd xmm0, xmm1"], "reads or writes MXCSR itself"),
    (["add eax, ebx", "movapd xmm0, xmm1"], "no SSE/AVX floating-point arithmetic in r"),
])
def test_refused(texts: list[str], why: str) -> None:
    reason = _reason(_region(*texts))
    assert why in reason
    assert reason.startswith("no SSE") or f"at {AT:#x}" in reason or "at 0x" in reason


def test_applies() -> None:
    def applies(view: RegionView) -> bool | Refusal:
        return PASS.applies(view, None, None)  # type: ignore[arg-type]

    assert applies(_region("add eax, ebx")) is True  # kind float: harden says why not
    assert applies(_region("mulsd xmm0, xmm1", kind=None)) is True
    assert applies(_region("vfmadd231pd ymm0, ymm1, ymm2", kind=None)) is True
    assert applies(_region("add eax, ebx", kind=None)) is False
    assert applies(_region("mulsd xmm0, xmm1", kind="table")) is False
    assert applies(_region("mulsd xmm0, xmm1", ftz=False, daz=False)) is False
    x87 = applies(_region("fmul st(1)", kind=None))
    assert isinstance(x87, Refusal) and "x87" in x87.reason
    assert PASS.name == "fp-ftz-daz"


def test_through_the_hardener(program: Program) -> None:
    """The pass as the translator runs it, for a ``float`` region."""
    from leakdbt.contract import loads
    from leakdbt.contract.mapping import PassStep
    from leakdbt.contract.profiles import get_profile
    from leakdbt.dbt.harden import Hardener, RegionNeeds
    from leakdbt.dbt.passes import LoadedPass

    region = program.region("f", branch=False)
    sandbox = MxcsrSandbox(program.image, program.bias)
    contract = loads('version = 1\n[[secret]]\nname = "k"\nargv = 1\nlength = 4\n'
                     '[protect]\nadversary = "remote"\n')
    hardener = Hardener([LoadedPass(PASS, "test")], contract, get_profile("intel-skylake"))
    step = PassStep("fp-ftz-daz", (("ftz", True), ("daz", True)))
    t = hardener.translate(region, RegionNeeds("float", (step,)), sandbox.bias, sandbox.place,
                           program.image)
    assert hardener.report() == {region.name: {"passes": ["fp-ftz-daz"]}}
    states = _states("hardener:f", ["normal", "subnormal", "special"], False, 50)
    assert not _compare(sandbox, region, t, states, DEFAULT | FTZ | DAZ, DEFAULT)
