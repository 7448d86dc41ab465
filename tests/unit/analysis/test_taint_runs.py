"""Taint tracking on real test programs: argv[1] (the secret) tainted, findings checked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from leakdbt.analysis.taint import (
    CONTROL_FLOW,
    MEMORY_ACCESS,
    VARIABLE_LATENCY,
    Finding,
    TaintTracker,
)
from leakdbt.linux.launch import ExecOptions, execute
from leakdbt.machine.machine import Machine

STATIC = Path(__file__).resolve().parents[3] / "test_binaries" / "build" / "static"
pytestmark = pytest.mark.usefixtures("built")  # the test programs, built if needed


def track(name: str, *args: str, implicit: bool = True) -> tuple[TaintTracker, int]:
    exe = STATIC / name
    box: dict[str, TaintTracker] = {}

    def start(machine: Machine, _translator: object) -> None:
        t = box["t"] = TaintTracker(machine, implicit=implicit)
        t.taint_argv(1, 1)

    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        r = execute(str(exe), ExecOptions(argv=[name, *args], env=[], on_start=start,
                                          stdio=(devnull, devnull, devnull)))
    finally:
        os.close(devnull)
    return box["t"], r.exit_status


def found(t: TaintTracker, prefix: str) -> set[tuple[str, str]]:
    return {(f.kind, f.where) for f in t.findings() if f.where.startswith(prefix)}


def test_ct_modexp_branch_and_divisions() -> None:
    t, status = track("ct_modexp", "0123456789abcdef")
    assert status == 0
    # exactly the secret-dependent branch and the two divisions whose operands depend on it
    # (through the implicit flow of the `if`), not the loop counter or the first `1 % m`
    assert found(t, "modexp+") == {(CONTROL_FLOW, "modexp+0x2f"),
                                   (VARIABLE_LATENCY, "modexp+0x28"),
                                   (VARIABLE_LATENCY, "modexp+0x3a")}
    by = {(f.kind, f.where): f for f in t.findings()}
    assert by[(CONTROL_FLOW, "modexp+0x2f")].count == 8 * 64
    assert by[(CONTROL_FLOW, "modexp+0x2f")].labels == 1
    assert t.instructions > 10_000 and t.speed() > 0


def test_ct_modexp_without_implicit_flows_sees_only_the_branch() -> None:
    t, _ = track("ct_modexp", "0123456789abcdef", implicit=False)
    assert found(t, "modexp+") == {(CONTROL_FLOW, "modexp+0x2f")}


def test_sbox_round_secret_index() -> None:
    t, status = track("sbox_round", "000102030405060708090a0b0c0d0e0f")
    assert status == 0
    assert found(t, "sub_bytes_key+") == {(MEMORY_ACCESS, "sub_bytes_key+0x1a")}


def test_secret_div_divisions() -> None:
    t, status = track("secret_div", "0123456789abcdef")
    assert status == 0
    divs = {w for k, w in found(t, "divmod_") if k == VARIABLE_LATENCY}
    assert {w.split("+")[0] for w in divs} == {"divmod_u32", "divmod_s32", "divmod_u64",
                                               "divmod_s64"}
    # the stores of the remainder through a public pointer are not memory-access findings
    assert all(k == VARIABLE_LATENCY for k, _ in found(t, "divmod_"))


def test_fp_secret_float_arithmetic() -> None:
    t, status = track("fp_secret", "1234")
    assert status == 0
    assert {k for k, _ in found(t, "fp_dot+")} == {VARIABLE_LATENCY}


def test_no_findings_without_secrets() -> None:
    t, status = track("ct_modexp", "0123456789abcdef")
    assert status == 0
    u, _ = _untainted("ct_modexp", "0123456789abcdef")
    assert u == []
    assert t.findings()


def _untainted(name: str, *args: str) -> tuple[list[Finding], int]:
    box: dict[str, TaintTracker] = {}

    def start(machine: Machine, _translator: object) -> None:
        box["t"] = TaintTracker(machine)

    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        r = execute(str(STATIC / name), ExecOptions(argv=[name, *args], env=[], on_start=start,
                                                    stdio=(devnull, devnull, devnull)))
    finally:
        os.close(devnull)
    return box["t"].findings(), r.exit_status


def test_read_clears_taint() -> None:
    """Bytes a read() returns come from outside: clean, whatever the buffer held; the
    registers the kernel writes are clean too."""
    machine = Machine()

    def kernel(m: Machine) -> None:
        m.set_reg("rax", 6)  # read 6 of the 16 bytes asked for

    machine.syscall_handler = kernel
    t = TaintTracker(machine)
    t.taint_memory(0x1000, 16, 1)
    t.taint_register("rax", 2)
    machine.set_reg("rax", 0)  # read(fd, 0x1000, 16)
    machine.set_reg("rsi", 0x1000)
    machine.set_reg("rdx", 16)
    assert machine.syscall_handler is not None
    machine.syscall_handler(machine)
    assert t.shadow.load(0x1000, 16) == [0] * 6 + [1] * 10
    assert t.shadow.reg_named("rax") == [0] * 8
