"""Shared helpers of the if-conversion and bounded-loop tests: build small C programs, form
and harden a region, lay it out, compare it with the original, and trace what it touches."""

from __future__ import annotations

import dataclasses
import random
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE
from unicorn import x86_const as x

from leakdbt.dbt.cfg import FunctionCFG, function_cfg
from leakdbt.dbt.harden import Callees, region_view
from leakdbt.dbt.region import CodeRegion, form_region
from leakdbt.dbt.relocate import Translation, relocate
from leakdbt.loader.elf import load_image
from leakdbt.loader.image import Image
from leakdbt.plugin_api import BlockView, Refusal, RegionView, Rewrite
from leakdbt.x86.asm import assemble_block
from leakdbt.x86.insn import Flow, Insn, decode_all
from plugins.if_conversion import PASS as IF_CONVERSION
from tests.conftest import TEST_BINARIES, binary
from tests.unit.dbt.harness import (
    GPRS,
    PIE_BIAS,
    Chooser,
    RegionCheck,
    Sandbox,
    State,
    compile_program,
    random_state,
)

# Keep gcc from turning the test branches into cmov/setcc or loops into library calls.
CFLAGS = ("-fno-if-conversion", "-fno-if-conversion2", "-fno-tree-loop-distribute-patterns",
          "-fno-builtin", "-fno-tree-vectorize")
REG = {name: i for i, (name, _) in enumerate(GPRS)}


def build(directory: Path, name: str, source: str, kind: str = "static") -> Image:
    """Compile ``source`` (with :data:`CFLAGS`) and load the program."""
    path = compile_program(directory, name, {f"{name}.c": source}, kind, CFLAGS)
    return load_image(str(path))


def cfg_of(image: Image, function: str) -> FunctionCFG:
    sym = image.symbol(function)
    assert sym is not None, function
    return function_cfg(image, sym)


def loop_header(cfg: FunctionCFG) -> int:
    """The first block some block it dominates jumps back to."""
    for start in sorted(cfg.blocks):
        if any(cfg.dominates(start, p) for p in cfg.blocks[start].preds):
            return start
    raise AssertionError(f"{cfg.name} has no loop")


def region_of(image: Image, function: str, loop: bool = False) -> CodeRegion:
    """The branch region at the function's entry, or its (first) loop."""
    cfg = cfg_of(image, function)
    if loop:
        return form_region(cfg, loop_header(cfg), f"{function}-loop", loop=True)
    return form_region(cfg, cfg.entry, function, branch=True)


def view_of(region: CodeRegion, bias: int, kind: str | None = None,
            params: dict[str, int | str | bool] | None = None) -> RegionView:
    return region_view(region, kind, bias, params)


def harden(pass_obj: Any, view: RegionView) -> Rewrite | Refusal:
    applies = pass_obj.applies(view, None, None)
    if isinstance(applies, Refusal):
        return applies
    assert applies is True
    return pass_obj.harden(view, None, None)


def clone_check(image: Image, function: str, dead_below: int = 0,
                params: dict[str, int | str | bool] | None = None
                ) -> tuple[RegionCheck, Rewrite]:
    """if-conversion of the branch region at ``function``'s entry with its calls cloned
    (the image's own functions as callees), laid out with the clones' instructions;
    ``dead_below``: stack bytes below RSP compared (RegionCheck); ``params``: the
    contract's mapping for the region (``public``, ...)."""
    sb = sandbox_for(image)
    region = region_of(image, function)
    callees = Callees(image)
    view = region_view(region, "branch", sb.bias, params or {}, None, image, callees)
    rewrite = harden(IF_CONVERSION, view)
    assert isinstance(rewrite, Rewrite), rewrite
    t = relocate(region, sb.bias, sb.place, {}, rewrite.code, callees.instructions())
    return RegionCheck(sb, region, t, scratch_below_red_zone=True, dead_below=dead_below), \
        rewrite


def run_hooked(check: RegionCheck, s: State, copy: bool, kind: int,
               callback: Callable[..., None]) -> None:
    """One region entry from ``s`` (the copy's or the original's) with a Unicorn hook of
    ``kind`` calling ``callback`` meanwhile (translations flushed before and after)."""
    uc = check.sandbox.uc
    hook = uc.hook_add(kind, callback)
    uc.ctl_flush_tb()
    try:
        check.outcome(copy, s)
    finally:
        uc.hook_del(hook)
        uc.ctl_flush_tb()


def count_instructions(check: RegionCheck, s: State, copy: bool) -> int:
    """Guest instructions of one region entry (callees included), from ``s``: the copy's
    (``copy``) or the original's."""
    n = [0]

    def on_code(uc_: Any, address: int, size: int, _: Any) -> None:
        n[0] += 1

    run_hooked(check, s, copy, UC_HOOK_CODE, on_code)
    return n[0]


def check_entry_cost(check: RegionCheck, seed: str, bit: int, label: str,
                     show: Any) -> None:
    """Instructions of one entry from the state ``seed`` with rdi's secret ``bit`` clear
    and set: the hardened count is the same for both and above the original's; printed
    for the record (``show``: pytest's ``capsys``; run with ``-s``)."""
    with check:
        states = [state(seed, rdi=v) for v in (0x100, 0x100 | bit)]
        orig = [count_instructions(check, s, False) for s in states]
        copy = [count_instructions(check, s, True) for s in states]
    assert copy[0] == copy[1] and copy[0] > max(orig)
    with show.disabled():
        print(f"\ncost {label}: original {orig[0]} (off) / {orig[1]} (on), hardened {copy[0]}")


def load_plt_call() -> tuple[Image, Image]:
    """build/dynamic/plt_call (made if missing) and the libmulmod.so next to it."""
    exe = Path(binary("dynamic", "plt_call"))
    if not exe.exists():
        subprocess.run(["make", "-s", "-C", str(TEST_BINARIES), "build/dynamic/plt_call"],
                       check=True)
    return load_image(str(exe)), load_image(str(exe.parent / "libmulmod.so"))


def check_secret_bit(check: RegionCheck, prefix: str, function: str, bit: int,
                     states: int) -> None:
    """Original vs hardened agree on ``states`` random states (seeds ``prefix:function:i``)
    and on 100 whose rdi has the secret ``bit`` set in every other one."""
    with check:
        report = check.check(f"{prefix}:{function}:{i}" for i in range(states))
        chosen = check.compare((f"{prefix}-bit:{function}:{i}",
                                state(f"{prefix}-bit:{function}:{i}",
                                      rdi=(i * 0x9E37) & ~bit | (bit if i & 1 else 0)))
                               for i in range(100))
    assert not report.mismatches, report.mismatches[:3]
    assert not chosen.mismatches, chosen.mismatches[:3]
    assert report.compared == states and chosen.compared == 100


def check_path_hidden(check: RegionCheck, seed: str, bit: int) -> None:
    """From the state ``seed`` with rdi's secret ``bit`` clear and set: the original's path
    shows the bit, the copy runs the same instructions and touches the same lines."""
    with check:
        states = [state(seed, rdi=v, rsi=0x1234567) for v in (0x100, 0x100 | bit)]
        orig = [trace(check, s, copy=False) for s in states]
        copy = [trace(check, s, copy=True) for s in states]
    assert orig[0][0] != orig[1][0]  # the original's path shows
    assert copy[0] == copy[1] and copy[0][0]


def sandbox_for(image: Image) -> Sandbox:
    return Sandbox(image, PIE_BIAS if image.is_pie else 0)


def translate(sandbox: Sandbox, region: CodeRegion, rewrite: Rewrite,
              replace: Mapping[int, Sequence[str]] | None = None) -> Translation:
    """Lay out ``rewrite`` (plus other passes' per-instruction ``replace``)."""
    merged = {**rewrite.replace, **(replace or {})}
    return relocate(region, sandbox.bias, sandbox.place, merged, rewrite.code)


def iteration_check(sandbox: Sandbox, region: CodeRegion, rewrite: Rewrite) -> RegionCheck:
    """A check of an iteration region's copy (plugins/if_conversion.py, ``_iteration``) over
    whole runs of its loop: the copy's jumps back to the region's start go to the copy's own
    start (what the dispatcher does with a jump to a region's start), and its other exits,
    into the region's original code (after the loop, an early return), run on there (copy,
    then original = original)."""
    top = f"@{region.entry:#x}"
    code = ["ic_top:", *(line.replace(top, "ic_top") if line.startswith("j") else line
                         for line in rewrite.code or ())]
    assert code != ["ic_top:", *(rewrite.code or ())]  # some exit goes back to the start
    t = translate(sandbox, region, dataclasses.replace(rewrite, code=tuple(code)))
    check = RegionCheck(sandbox, region, t, scratch_below_red_zone=True)
    copy_only, orig = check.copy_inside, check.original_inside
    check.allow_reentry = True
    check.copy_inside = lambda a: copy_only(a) or orig(a)
    return check


def state(seed: str, choose: dict[str, Chooser] | None = None, **fixed: int) -> State:
    """A random state with some registers fixed (by name)."""
    s = random_state(random.Random(seed), choose)
    gprs = list(s.gprs)
    for name, value in fixed.items():
        gprs[REG[name]] = value & ((1 << 64) - 1)
    return dataclasses.replace(s, gprs=tuple(gprs))


def with_memory(s: State, address: int, data: bytes) -> State:
    """``s`` with ``data`` at ``address`` in the scratch area."""
    from tests.unit.dbt.harness import SCRATCH

    off = address - SCRATCH
    scratch = bytearray(s.scratch)
    scratch[off:off + len(data)] = data
    return dataclasses.replace(s, scratch=bytes(scratch))


def trace(check: RegionCheck, s: State, copy: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The instruction addresses run inside the copy (or the original region) from ``s``,
    and the 64-byte lines of the memory accesses made meanwhile (reads and writes)."""
    uc = check.sandbox.uc
    bias = check.sandbox.bias
    if copy:
        ranges = [(check.t.base, check.t.end)]
    else:
        ranges = [(lo + bias, hi + bias) for lo, hi in check.region.byte_ranges]
    insns: list[int] = []
    lines: list[int] = []

    def inside(address: int) -> bool:
        return any(lo <= address < hi for lo, hi in ranges)

    def on_code(uc_: Any, address: int, size: int, _: Any) -> None:
        insns.append(address)

    def on_mem(uc_: Any, access: int, address: int, size: int, value: int, _: Any) -> None:
        if inside(uc_.reg_read(x.UC_X86_REG_RIP)):
            lines.append((access, address >> 6))  # type: ignore[arg-type]

    hooks = [uc.hook_add(UC_HOOK_CODE, on_code, None, lo, hi - 1) for lo, hi in ranges]
    hooks.append(uc.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, on_mem))
    uc.ctl_flush_tb()
    try:
        check.outcome(copy, s)
    finally:
        for h in hooks:
            uc.hook_del(h)
        uc.ctl_flush_tb()
    return tuple(insns), tuple(lines)


BASE = 0x10000


def view_from_asm(lines: list[str], shape: str = "branch", kind: str | None = "branch",
                  params: dict[str, int | str | bool] | None = None,
                  callees: Mapping[int, list[str]] | None = None) -> RegionView:
    """A region made of ``lines`` (assembled at BASE; blocks split at branches and their
    targets; the region is every block, entered at the first); ``callees``: functions it
    may call, by address -> their lines (assembled there)."""
    functions = {a: blocks_from_asm(f, a) for a, f in (callees or {}).items()}
    return RegionView("r", kind, shape, BASE, blocks_from_asm(lines, BASE), params=params or {},
                      callee=functions.get)


def blocks_from_asm(lines: list[str], base: int) -> tuple[BlockView, ...]:
    """``lines`` assembled at ``base``, split into blocks at branches, calls and targets."""
    code = assemble_block(lines, base)
    insns = decode_all(code, base)
    leaders = {base}
    for i in insns:
        if i.flow in (Flow.BRANCH, Flow.JUMP) and i.target is not None:
            leaders.add(i.target)
        if i.flow is not Flow.NEXT:
            leaders.add(i.next)
    blocks: list[list[Insn]] = []
    for i in insns:
        if i.address in leaders or not blocks:
            blocks.append([])
        blocks[-1].append(i)
    views = []
    for b in blocks:
        last = b[-1]
        succ: list[int] = []
        if last.flow is Flow.BRANCH:
            assert last.target is not None
            succ = [last.target, last.next]
        elif last.flow is Flow.JUMP:
            assert last.target is not None
            succ = [last.target]
        elif last.flow in (Flow.NEXT, Flow.CALL):
            succ = [last.next]
        views.append(BlockView(b[0].address, tuple(b), tuple(succ)))
    return tuple(views)
