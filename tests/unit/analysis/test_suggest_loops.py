"""Loop suggestions of analyze: which loop a secret branch leaves, and the bound a run with the
secret exit suppressed shows (mac_verify: an early-exit comparison of 16 bytes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from keystone import KS_ARCH_X86, KS_MODE_64, Ks
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as ux

from leakdbt.analysis.loops import LoopCounter, exit_loop, is_jcc, taken
from leakdbt.dbt.cfg import FunctionCFG, function_cfg
from leakdbt.dbt.dispatch import Dispatcher
from leakdbt.loader.elf import load_image
from leakdbt.machine.machine import Machine
from leakdbt.run.session import ExecOptions, execute
from tests.conftest import binary

RIGHT_TAG = "bb72509640bec05a5283b4422cda9c97"


def _cfg(program: str, function: str) -> tuple[FunctionCFG, int]:
    image = load_image(binary("static", program))
    sym = image.symbol(function)
    assert sym is not None
    return function_cfg(image, sym), sym.value


def test_the_early_exit_leaves_the_comparison_loop(built: Path) -> None:
    cfg, verify = _cfg("mac_verify", "verify")
    loop = exit_loop(cfg, verify + 0xF, "verify")  # jne verify+0x28: a[i] != b[i]
    assert loop is not None and loop.entry == verify + 0x8 and loop.kind == "loop"
    assert exit_loop(cfg, verify + 0x19, "verify") == loop  # the counter's exit: same loop
    assert exit_loop(cfg, verify + 0x8, "verify") is None  # not a branch


def test_a_branch_inside_a_loop_that_stays_in_it_leaves_nothing(built: Path) -> None:
    """ct_modexp's secret bit test selects the multiply inside the loop: both ways stay."""
    cfg, modexp = _cfg("ct_modexp", "modexp")
    assert exit_loop(cfg, modexp + 0x2F, "modexp") is None


def _trips(tag: str) -> tuple[int, ...]:
    exe = binary("static", "mac_verify")
    cfg, verify = _cfg("mac_verify", "verify")
    loop = exit_loop(cfg, verify + 0xF, "verify")
    assert loop is not None
    box: dict[str, LoopCounter] = {}

    def on_start(machine: Machine, _d: Dispatcher | None) -> None:
        box["counter"] = counter = LoopCounter(machine)
        counter.watch("verify+0x8", loop, verify + 0xF, 0)

    with open(os.devnull, "w") as null:
        execute(exe, ExecOptions(argv=[exe, tag], env=[], on_start=on_start,
                                 stdio=(0, null.fileno(), null.fileno())))
    assert box["counter"].trips("elsewhere") == ()
    return box["counter"].trips("verify+0x8")


def test_the_bound_is_the_trip_count_with_the_secret_exit_suppressed(built: Path) -> None:
    """Whether the tag is right, wrong at the last byte or at the first, the comparison is
    made to run to its public end: 16."""
    for tag in (RIGHT_TAG, RIGHT_TAG[:-2] + "00", "0" * 32):
        assert _trips(tag) == (16,), tag


CONDITIONS = ["jo", "jno", "jb", "jae", "je", "jne", "jbe", "ja", "js", "jns", "jp", "jnp",
              "jl", "jge", "jle", "jg"]


@pytest.mark.parametrize("jcc", CONDITIONS)
def test_jump_conditions_agree_with_the_engine(jcc: str) -> None:
    """taken() against the engine for every combination of CF, PF, ZF, SF and OF."""
    code = bytes(Ks(KS_ARCH_X86, KS_MODE_64).asm(f"{jcc} 0x1010", 0x1000)[0])
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, code)
    for bits in range(32):
        flags = 0x2 | sum(1 << b for i, b in enumerate((0, 2, 6, 7, 11)) if bits >> i & 1)
        uc.reg_write(ux.UC_X86_REG_EFLAGS, flags)
        uc.emu_start(0x1000, 0, count=1)
        assert (uc.reg_read(ux.UC_X86_REG_RIP) == 0x1010) == taken(jcc, flags), (jcc, bin(flags))
    assert is_jcc(jcc) and not is_jcc("jrcxz") and not is_jcc("jmp")
