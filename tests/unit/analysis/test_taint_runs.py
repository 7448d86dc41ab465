"""Taint tracking on real test programs: argv[1] (the secret) tainted, findings checked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from keystone import KS_ARCH_X86, KS_MODE_64, Ks

from leakdbt.analysis.analyze import analyze
from leakdbt.analysis.taint import LINE, WITHIN_LINE, TaintedUse, TaintTracker
from leakdbt.contract import load
from leakdbt.contract.profiles import get_profile
from leakdbt.leakage.findings import LeakKind
from leakdbt.machine.machine import Machine
from leakdbt.run.session import ExecOptions, execute
from tests.unit.dbt.harness import compile_program

STATIC = Path(__file__).resolve().parents[3] / "test_binaries" / "build" / "static"
pytestmark = pytest.mark.usefixtures("built")  # the test programs, built if needed


def track(name: str, *args: str, implicit: bool = True,
          exe: Path | None = None) -> tuple[TaintTracker, int]:
    exe = exe or STATIC / name
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
    assert found(t, "modexp+") == {(LeakKind.CONTROL_FLOW, "modexp+0x2f"),
                                   (LeakKind.VARIABLE_LATENCY, "modexp+0x28"),
                                   (LeakKind.VARIABLE_LATENCY, "modexp+0x3a")}
    by = {(f.kind, f.where): f for f in t.findings()}
    assert by[(LeakKind.CONTROL_FLOW, "modexp+0x2f")].count == 8 * 64
    assert by[(LeakKind.CONTROL_FLOW, "modexp+0x2f")].labels == 1
    assert t.instructions > 10_000 and t.speed() > 0


def test_ct_modexp_without_implicit_flows_sees_only_the_branch() -> None:
    t, _ = track("ct_modexp", "0123456789abcdef", implicit=False)
    assert found(t, "modexp+") == {(LeakKind.CONTROL_FLOW, "modexp+0x2f")}


def test_sbox_round_secret_index() -> None:
    t, status = track("sbox_round", "000102030405060708090a0b0c0d0e0f")
    assert status == 0
    assert found(t, "sub_bytes_key+") == {(LeakKind.MEMORY_ACCESS, "sub_bytes_key+0x1a")}


def test_secret_div_divisions() -> None:
    t, status = track("secret_div", "0123456789abcdef")
    assert status == 0
    divs = {w for k, w in found(t, "divmod_") if k == LeakKind.VARIABLE_LATENCY}
    assert {w.split("+")[0] for w in divs} == {"divmod_u32", "divmod_s32", "divmod_u64",
                                               "divmod_s64"}
    # the stores of the remainder through a public pointer are not memory-access findings
    assert all(k == LeakKind.VARIABLE_LATENCY for k, _ in found(t, "divmod_"))


def test_fp_secret_float_arithmetic() -> None:
    t, status = track("fp_secret", "1234")
    assert status == 0
    assert {k for k, _ in found(t, "fp_dot+")} == {LeakKind.VARIABLE_LATENCY}


def test_no_findings_without_secrets() -> None:
    t, status = track("ct_modexp", "0123456789abcdef")
    assert status == 0
    u, _ = _untainted("ct_modexp", "0123456789abcdef")
    assert u == []
    assert t.findings()


def _untainted(name: str, *args: str) -> tuple[list[TaintedUse], int]:
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


# -- address-to-value taint and cache-line reach, on raw code -----------------------------------

CODE, DATA = 0x10000, 0x20000
_ks = Ks(KS_ARCH_X86, KS_MODE_64)


def run_code(text: str, regs: dict[str, int], tainted: dict[str, int],
             data: bytes = b"") -> TaintTracker:
    """Run ``text`` (instructions separated by ';') at CODE with a data page at DATA (which
    starts with ``data``), the registers set and the ``tainted`` ones tainted (register ->
    labels)."""
    code = bytes(_ks.asm(text, CODE)[0])
    machine = Machine()
    machine.mem.map(CODE, 0x1000, 5)
    machine.mem.map(DATA, 0x1000, 3)
    machine.mem.write(CODE, code)
    machine.mem.write(DATA, data)
    for name, value in regs.items():
        machine.set_reg(name, value)
    t = TaintTracker(machine)
    for name, labels in tainted.items():
        t.taint_register(name, labels)
    machine.uc.emu_start(CODE, CODE + len(code))
    return t


def test_a_load_through_a_tainted_address_carries_the_address_labels() -> None:
    t = run_code("movzx eax, byte ptr [rsi + rcx]; mov byte ptr [rdi], al; "
                 "mov rdx, qword ptr [rsi + rcx*8]; lea r8, [rsi + rcx]; "
                 "prefetcht0 byte ptr [rsi + rcx]; cmp byte ptr [rsi + rcx + 4], 0",
                 {"rsi": DATA, "rdi": DATA + 0x800, "rcx": 3}, {"rcx": 1})
    sh = t.shadow
    assert sh.reg_named("rax") == [1] + [0] * 7  # the loaded byte; movzx's zeros stay clean
    assert sh.load(DATA + 0x800, 1) == [1]  # ... and on through a plain store
    assert sh.reg_named("rdx") == [1] * 8
    assert sh.flags == 1  # a compare of a value read at a secret index
    assert sh.load(DATA, 0x40) == [0] * 0x40  # the table itself stays clean
    accesses = [f for f in t.findings() if f.kind == LeakKind.MEMORY_ACCESS]
    assert [f.address - CODE for f in accesses] == [0, 6, 18]  # lea and prefetch: none


def test_a_store_through_a_tainted_address_is_a_finding_not_taint() -> None:
    t = run_code("mov byte ptr [rsi + rcx], bl; add dword ptr [rsi + rcx*4 + 0x40], ebx",
                 {"rsi": DATA, "rcx": 3, "rbx": 7}, {"rcx": 2})
    sh = t.shadow
    assert sh.load(DATA + 3, 1) == [0]  # stored: where depends on the secret, not what
    assert sh.load(DATA + 0x4C, 4) == [2] * 4  # read-modify-write: the sum read it there
    assert {(f.kind, f.address - CODE) for f in t.findings()} == {(LeakKind.MEMORY_ACCESS, 0),
                                                                  (LeakKind.MEMORY_ACCESS, 3)}


def test_a_pointer_from_a_secret_slot_makes_its_accesses_findings() -> None:
    t = run_code("mov rdx, qword ptr [rsi + rcx*8]; mov eax, dword ptr [rdx]",
                 {"rsi": DATA, "rcx": 1}, {"rcx": 4}, bytes(8) + DATA.to_bytes(8, "little"))
    assert [(f.kind, f.address - CODE, f.labels) for f in t.findings()] == [
        (LeakKind.MEMORY_ACCESS, 0, 4), (LeakKind.MEMORY_ACCESS, 4, 4)]


@pytest.mark.parametrize(("text", "base", "reach"), [
    ("and ecx, 15; movzx eax, byte ptr [rsi + rcx]", DATA, WITHIN_LINE),  # 16 bytes, aligned
    ("and ecx, 15; movzx eax, byte ptr [rsi + rcx]", DATA + 56, LINE),  # ... straddling
    ("and ecx, 63; mov eax, dword ptr [rsi + rcx*4]", DATA, LINE),  # 256 bytes
    ("and ecx, 7; mov rax, qword ptr [rsi + rcx*8]", DATA + 64, WITHIN_LINE),
    ("and ecx, 7; mov rax, qword ptr [rsi + rcx*8 + 8]", DATA + 64, LINE),
    ("shr ecx, 28; movzx eax, byte ptr [rsi + rcx*2]", DATA, WITHIN_LINE),  # 4 bits left
    ("movzx ecx, cl; movzx eax, byte ptr [rsi + rcx]", DATA, LINE),  # a whole byte
    ("and ecx, 15; add ecx, 1; movzx eax, byte ptr [rsi + rcx]", DATA, LINE),  # forgotten
    ("and ecx, 3; mov edx, ecx; mov eax, dword ptr [rsi + rdx*4]", DATA, WITHIN_LINE),
])
def test_cache_line_reach_of_a_tainted_index(text: str, base: int, reach: str) -> None:
    t = run_code(text, {"rsi": base, "rcx": 0x1234_5678}, {"rcx": 1})
    (f,) = [f for f in t.findings() if f.kind == LeakKind.MEMORY_ACCESS]
    assert f.reach == reach


def test_a_finding_crosses_lines_if_any_execution_does() -> None:
    t = run_code("and ecx, 15; movzx eax, byte ptr [rsi + rcx]; add rsi, 56; "
                 "sub rdi, 1; jnz 0x10000",
                 {"rsi": DATA, "rcx": 5, "rdi": 2}, {"rcx": 1})
    (f,) = [f for f in t.findings() if f.kind == LeakKind.MEMORY_ACCESS]
    assert (f.count, f.reach) == (2, LINE)  # within its line the first time, not the second


# -- on a compiled program: masks, S-box outputs, pointers from secret slots ---------------------

LINES_SOURCE = (Path(__file__).parent / "lines.c").read_text()


def _lines_program(tmp_path: Path) -> Path:
    return compile_program(tmp_path, "lines", {"lines.c": LINES_SOURCE}, "static")


def test_masked_indices_and_values_loaded_at_secret_indices(tmp_path: Path) -> None:
    t, status = track("lines", "0123", exe=_lines_program(tmp_path))
    assert status == 0
    got = {(f.kind, f.where.split("+")[0], f.reach) for f in t.findings()
           if f.where.split("+")[0] in ("nibble", "wide", "odd", "chase")}
    assert got == {
        (LeakKind.MEMORY_ACCESS, "nibble", WITHIN_LINE),  # NIBBLE[s & 15]: 16 bytes, 64-aligned
        (LeakKind.MEMORY_ACCESS, "wide", LINE),  # WIDE[s & 63]: 256 bytes
        (LeakKind.MEMORY_ACCESS, "odd", WITHIN_LINE),
        (LeakKind.CONTROL_FLOW, "odd", ""),  # a branch on the value loaded at the secret index
        (LeakKind.MEMORY_ACCESS, "chase", WITHIN_LINE),  # PTRS[s & 1]: 16 bytes, aligned
        (LeakKind.MEMORY_ACCESS, "chase", LINE),  # through the pointer loaded there: anywhere
    }


def _lines_contract(tmp_path: Path, adversary: str) -> Path:
    path = tmp_path / f"lines-{adversary}.toml"
    path.write_text('version = 1\n[[secret]]\nname = "s"\nargv = 1\nlength = 4\n'
                    f'[protect]\nadversary = "{adversary}"\n'
                    'functions = ["nibble", "wide", "odd", "chase"]\n'
                    '[check]\nargs = ["0123"]\n')
    return path


@pytest.mark.parametrize(("adversary", "cpu", "within"), [
    ("same-core", "intel-skylake", 0),  # sees offsets within a line: all kept
    ("same-core", "intel-gracemont", 3),  # no SMT sibling to see them from
    ("co-resident", "intel-skylake", 3),
    ("remote", "amd-zen3", 3),
])
def test_analyze_keeps_within_line_accesses_only_for_who_sees_them(
        tmp_path: Path, adversary: str, cpu: str, within: int) -> None:
    exe = _lines_program(tmp_path)
    contract = load(_lines_contract(tmp_path, adversary), binary=str(exe))
    report = analyze(str(exe), contract, profile=get_profile(cpu))
    assert report.within_line == within
    kinds = sorted((f.kind.value, f.location.split("+")[0]) for f in report.findings)
    always = [("control-flow", "odd"), ("memory-access", "chase"), ("memory-access", "wide")]
    assert kinds == (always if within else sorted(always + [
        ("memory-access", "chase"), ("memory-access", "nibble"), ("memory-access", "odd")]))


def test_the_command_counts_within_line_accesses(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from leakdbt.analysis.commands import analyze as command

    exe = str(_lines_program(tmp_path))
    contract = str(_lines_contract(tmp_path, "co-resident"))
    text = CliRunner().invoke(command, ["--contract", contract, "--cpu", "intel-skylake", exe])
    assert text.exit_code == 0, text.output
    assert "3 memory access(es) the secrets move only within a 64-byte cache line: not " \
           "findings against a co-resident adversary on intel-skylake" in text.output
    out = CliRunner().invoke(command, ["--contract", contract, "--cpu", "intel-skylake",
                                       "--format", "json", exe])
    assert json.loads(out.output)["within_line"] == 3
