"""The block counter behind --max-insns and --count-insns (leakdbt/machine/blockcount.py):
its count equals the engine's own — a code hook on every instruction, which counts what the
engine's ``count`` counts — for loops, system calls, faults the guest survives, code that
changes under the same block size, and every limit (blocks stopped mid-way included); the
native counter calls Python once per distinct block, not once per block executed; without
the native object leakdbt counts with the Python hook, exactly the same."""

from __future__ import annotations

import importlib.machinery
import signal
from pathlib import Path

import pytest
from keystone import KS_ARCH_X86, KS_MODE_64, Ks

from leakdbt.errors import GuestFault, LimitExceeded
from leakdbt.machine import blockcount, extension
from leakdbt.machine.blockcount import NativeBlockCounter, PythonBlockCounter
from leakdbt.machine.machine import Machine
from leakdbt.machine.memory import PROT_EXEC, PROT_READ, PROT_WRITE

CODE, DATA, STACK = 0x10000, 0x20000, 0x30000
SYS_EXIT, SYS_GETPID = 60, 39

# Each program ends with exit; the guest survives the faults (the handler skips the
# faulting instruction).  Faults sit mid-block so that a whole-block count would be wrong.
PROGRAMS = {
    "loop": """
        mov ecx, 300
    l:  add rax, rcx; imul rdx, rax, 3; xor rdx, rax; dec ecx; jnz l""",
    "nested calls": """
        mov r12d, 40
    o:  mov ecx, 5
    i:  call f; dec ecx; jnz i; dec r12d; jnz o; jmp done
    f:  lea rax, [rax + rcx*2]; ret
    done: nop""",
    "system calls": """
        mov r12d, 50
    l:  mov eax, 39; syscall; add rbx, rax; dec r12d; jnz l""",
    "faults": f"""
        mov r12d, 30; xor ebx, ebx
    l:  inc rbx; mov rdx, qword ptr [0x8]; add rbx, 2; xor ecx, ecx
        mov eax, 7; cdq; div ecx; add rbx, 3; dec r12d; jnz l
        mov qword ptr [{DATA}], rbx""",
}
# How far the handler moves rip past each faulting instruction (keystone's encodings).
FAULT_SKIP = {signal.SIGSEGV: 8, signal.SIGFPE: 2}


def asm(text: str, address: int = CODE) -> bytes:
    code, _ = Ks(KS_ARCH_X86, KS_MODE_64).asm(text, address)
    return bytes(code)


def machine_with(text: str, *, native: bool, prot: int = PROT_READ | PROT_EXEC
                 ) -> tuple[Machine, list[int]]:
    """A machine holding ``text`` (then an exit) at CODE, a data page at DATA, a stack, a handler
    that skips faulting loads and divisions, and a code hook counting every instruction
    (the ground truth: the engine counts an instruction as it begins, like this hook)."""
    m = Machine()
    m.native_counting = native
    m.mem.map(CODE, 0x1000, prot)
    m.mem.map(DATA, 0x1000, PROT_READ | PROT_WRITE)
    m.mem.map(STACK, 0x1000, PROT_READ | PROT_WRITE)
    m.set_reg("rsp", STACK + 0x800)
    m.mem.write(CODE, asm(f"{text}; mov eax, 60; syscall"))

    def syscall(machine: Machine) -> None:
        if machine.reg("rax") == SYS_EXIT:
            machine.exited = True
            machine.stop()
        else:
            machine.set_reg("rax", 1234)

    def on_fault(fault: GuestFault) -> bool:
        m.set_reg("rip", fault.address + FAULT_SKIP[signal.Signals(fault.signo)])
        return True

    m.syscall_handler = syscall
    m.on_fault = on_fault
    truth = [0]

    def count(_address: int, _size: int) -> None:
        truth[0] += 1

    m.hooks.on_code(count)
    return m, truth


def counted_run(text: str, *, native: bool, max_insns: int = 0,
                prot: int = PROT_READ | PROT_EXEC) -> tuple[Machine, int, bool]:
    """(machine, ground truth, whether the limit stopped it) of one run."""
    m, truth = machine_with(text, native=native, prot=prot)
    try:
        m.run(CODE, max_insns=max_insns, count_insns=True)
    except LimitExceeded:
        return m, truth[0], True
    return m, truth[0], False


@pytest.fixture(params=[True, False], ids=["native", "python"])
def native(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_the_native_counter_is_built() -> None:
    """`make install` builds it (setup.py): the fast path is what runs."""
    assert blockcount.native_library() is not None
    m, _ = machine_with("nop", native=True)
    m.run(CODE, count_insns=True)
    assert isinstance(m.instruction_counter(), NativeBlockCounter)


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_the_count_is_the_engines(native: bool, name: str) -> None:
    m, truth, stopped = counted_run(PROGRAMS[name], native=native)
    assert not stopped
    assert truth > 250
    assert m.instructions_executed() == truth
    counter = m.instruction_counter()
    assert counter is not None and counter.native is native


def test_faults_are_survived_and_counted_exactly(native: bool) -> None:
    """The 'faults' program takes 60 faults mid-block: a whole-block count would be ahead
    by the instructions after each faulting one."""
    m, truth, _ = counted_run(PROGRAMS["faults"], native=native)
    assert m.mem.read(DATA, 8) == (30 * 6).to_bytes(8, "little")  # every add ran once
    assert m.instructions_executed() == truth


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_every_limit_stops_at_exactly_that_many_instructions(native: bool, name: str) -> None:
    """Limits that land mid-block, on a system call, on and after a faulting instruction:
    the guest stops with exactly ``limit`` instructions run (the ground truth too)."""
    total = counted_run(PROGRAMS[name], native=native)[1]
    limits = sorted({1, 2, 3, 5, 8, 13, 21, 34, total // 3, total // 2, total - 7,
                     total - 1, *range(40, 80)})
    for limit in limits:
        m, truth, stopped = counted_run(PROGRAMS[name], native=native, max_insns=limit)
        assert stopped, limit
        assert (truth, m.instructions_executed()) == (limit, limit)
    m, truth, stopped = counted_run(PROGRAMS[name], native=native, max_insns=total)
    assert not stopped and truth == total == m.instructions_executed()


def test_the_limit_error_names_the_limit(native: bool) -> None:
    m, _ = machine_with(PROGRAMS["loop"], native=native)
    with pytest.raises(LimitExceeded, match=r"--max-insns 100 reached at 0x"):
        m.run(CODE, max_insns=100)


def test_python_is_called_per_distinct_block_not_per_execution() -> None:
    """300 iterations of a one-block loop: the native hook asks Python at most once per
    block (the engine's new-block reports answer most without asking)."""
    m, truth, _ = counted_run(PROGRAMS["loop"], native=True)
    counter = m.instruction_counter()
    assert counter is not None and counter.native
    assert truth > 1500
    assert counter.distinct_blocks <= 3


def test_code_rewritten_in_place_is_recounted(native: bool) -> None:
    """The guest rewrites a block it has run into one of the same size with fewer
    instructions (three nops -> `xchg ax, ax; nop`), then runs it again."""
    patch = int.from_bytes(asm("xchg ax, ax; nop; ret"), "little")  # 4 bytes, as before
    text = f"""
        mov r12d, 2
    l:  call b
        mov eax, {patch}; lea rdi, [rip + b]; mov dword ptr [rdi], eax
        dec r12d; jnz l; jmp done
    b:  nop; nop; nop; ret
    done: nop"""
    m, truth, _ = counted_run(text, native=native, prot=PROT_READ | PROT_WRITE | PROT_EXEC)
    assert m.instructions_executed() == truth
    b = CODE + asm(text).index(bytes.fromhex("909090c3"))
    assert m.mem.read(b, 4) == asm("xchg ax, ax; nop") + b"\xc3"  # the rewrite happened


def test_code_changed_by_the_host_is_recounted(native: bool) -> None:
    """Between runs, leakdbt changes code under a block of the same size (as a translated
    region's entry jump does) and invalidates it: the next run counts the new block."""
    m, truth = machine_with("nop; nop; nop", native=native)
    m.run(CODE, count_insns=True)
    first = m.instructions_executed()
    assert first == truth[0] == 5
    m.mem.write(CODE, asm("xchg ax, ax; nop"))  # same 3 bytes, 2 instructions
    m.invalidate_code(CODE, CODE + 3)
    m.exited = False
    m.run(CODE, count_insns=True)
    assert m.instructions_executed() == truth[0] == 9


def test_code_rewritten_through_the_code_view_is_recounted(native: bool) -> None:
    """An entry jump is written with write_code_view (instruction fetches only), with no
    invalidate_code: the engine retranslates the block and the counter takes the new
    translation's count (its edge hook), not the old block's."""
    m, truth = machine_with("nop; nop; nop", native=native)
    m.mem.enable_shadows()
    m.run(CODE, count_insns=True)
    assert m.instructions_executed() == truth[0] == 5
    m.mem.write_code_view(CODE, asm("xchg ax, ax; nop"))  # same 3 bytes, 2 instructions
    m.exited = False
    m.run(CODE, count_insns=True)
    assert m.instructions_executed() == truth[0] == 9


def test_without_the_native_object_the_python_counter_counts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No shared object (a machine without a C compiler at install): counting still works,
    with the Python hook, and exactly."""
    monkeypatch.setattr(extension.importlib.util, "find_spec", lambda name: None)
    blockcount.native_library.cache_clear()
    try:
        assert blockcount.native_library() is None
        m, truth, stopped = counted_run(PROGRAMS["faults"], native=True, max_insns=77)
        assert stopped and truth == m.instructions_executed() == 77
        assert isinstance(m.instruction_counter(), PythonBlockCounter)
    finally:
        monkeypatch.undo()
        blockcount.native_library.cache_clear()


def test_an_unloadable_native_object_falls_back(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    """A file that is not a loadable shared object (a broken build) is not used."""
    broken = tmp_path / "_blockcount.so"
    broken.write_bytes(b"not an ELF file")
    spec = importlib.machinery.ModuleSpec("leakdbt.machine._blockcount", None,
                                          origin=str(broken))
    def fake(_name: str) -> importlib.machinery.ModuleSpec:
        return spec

    monkeypatch.setattr(extension.importlib.util, "find_spec", fake)
    blockcount.native_library.cache_clear()
    try:
        assert blockcount.native_library() is None
        m, truth, _ = counted_run(PROGRAMS["loop"], native=True)
        assert isinstance(m.instruction_counter(), PythonBlockCounter)
        assert m.instructions_executed() == truth
    finally:
        monkeypatch.undo()
        blockcount.native_library.cache_clear()


def test_a_failing_block_count_stops_the_guest_with_its_error(
        native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception while counting a new block comes out of Machine.run (no silent
    miscount, no crash in the engine)."""
    def broken(*_args: object) -> int:
        raise RuntimeError("cannot count this block")

    monkeypatch.setattr(blockcount, "block_instructions", broken)
    m, _ = machine_with(PROGRAMS["loop"], native=native)
    counter_cls = NativeBlockCounter if native else PythonBlockCounter
    with pytest.raises(RuntimeError, match="cannot count this block"):
        m.run(CODE, count_insns=True)
    assert isinstance(m.instruction_counter(), counter_cls)
