"""Machine hooks: callbacks see (address, size) or (is_write, address, size) for exactly the
events in their range, their exceptions stop the guest and come out of Machine.run, and
registers are read and written by name at their architectural width."""

from __future__ import annotations

import pytest
from keystone import KS_ARCH_X86, KS_MODE_64, Ks

from leakdbt.machine.machine import Machine
from leakdbt.machine.memory import PROT_EXEC, PROT_READ, PROT_WRITE

CODE, DATA = 0x10000, 0x20000


def asm(text: str, address: int = CODE) -> bytes:
    code, _ = Ks(KS_ARCH_X86, KS_MODE_64).asm(text, address)
    return bytes(code)


def machine_with(text: str) -> tuple[Machine, bytes]:
    """A machine holding ``text`` (then an exit) at CODE and a data page at DATA."""
    m = Machine()
    code = asm(f"{text}; mov eax, 60; syscall")
    m.mem.map(CODE, 0x1000, PROT_READ | PROT_EXEC)
    m.mem.map(DATA, 0x1000, PROT_READ | PROT_WRITE)
    m.mem.write(CODE, code)

    def exit_(machine: Machine) -> None:
        machine.exited = True
        machine.stop()

    m.syscall_handler = exit_
    return m, code


def test_code_hooks_see_the_instructions_of_their_range_in_order() -> None:
    m, _ = machine_with("nop; mov rax, 1; inc rax; nop")
    seen: list[tuple[int, int]] = []
    m.hooks.on_code(lambda address, size: seen.append((address, size)), CODE + 1, CODE + 11)
    m.run(CODE)
    assert seen == [(CODE + 1, 7), (CODE + 8, 3)]  # mov rax, 1 (7 bytes); inc rax (3)


def test_an_address_hook_runs_each_time_and_can_steer_the_guest() -> None:
    m, code = machine_with("mov ecx, 3; l: dec ecx; jnz l; mov r8, 1")
    skip = CODE + len(asm("mov ecx, 3; l: dec ecx; jnz l"))
    loop = CODE + len(asm("mov ecx, 3"))
    hits: list[int] = []
    m.hooks.at(loop, lambda address, size: hits.append(address))
    m.hooks.at(skip, lambda address, size: m.set_reg("rip", skip + len(asm("mov r8, 1"))))
    m.run(CODE)
    assert hits == [loop] * 3
    assert m.reg("r8") == 0  # the hook moved RIP past the instruction


def test_block_hooks_see_each_block_start() -> None:
    m, _ = machine_with("mov ecx, 2; l: dec ecx; jnz l")
    loop = CODE + len(asm("mov ecx, 2"))
    blocks: list[int] = []
    m.hooks.on_block(lambda address, size: blocks.append(address), CODE, loop + 1)
    m.run(CODE)
    assert blocks == [CODE, loop]  # the first block runs into the loop; then a jump to it


def test_memory_hooks_see_reads_and_writes() -> None:
    m, _ = machine_with("mov rax, qword ptr [rsi]; mov dword ptr [rsi + 8], eax")
    m.set_reg("rsi", DATA)
    seen: list[tuple[bool, int, int]] = []
    hook = m.hooks.on_memory(lambda w, address, size: seen.append((w, address, size)))
    m.run(CODE)
    assert seen == [(False, DATA, 8), (True, DATA + 8, 4)]
    m.hooks.remove(hook)
    seen.clear()
    m.exited = False
    m.run(CODE)
    assert seen == []


def test_an_exception_in_a_hook_stops_the_guest_and_is_reraised() -> None:
    m, _ = machine_with("nop; mov r8, 5")

    def fail(address: int, size: int) -> None:
        raise KeyError("from the hook")

    m.hooks.at(CODE, fail)
    with pytest.raises(KeyError, match="from the hook"):
        m.run(CODE)
    assert m.reg("r8") == 0


def test_registers_by_name_at_their_width() -> None:
    m = Machine()
    m.set_reg("xmm3", (1 << 100) | 5)
    assert m.reg("xmm3") == (1 << 100) | 5
    m.set_reg("rax", -1)
    assert m.reg("rax") == (1 << 64) - 1
    m.set_reg("eax", 0x1_2345_6789)  # truncated to 32 bits; the rest of rax is kept
    assert m.reg("eax") == 0x2345_6789
    assert m.reg("rax") == 0xFFFF_FFFF_2345_6789
    read_ah = m.reg_reader("ah")
    assert read_ah() == 0x67
    m.set_reg("mxcsr", 0x1FA0)
    assert m.reg_reader("mxcsr")() == 0x1FA0


def test_translate_block_and_the_code_view() -> None:
    m, code = machine_with("nop; nop; jmp 0x10000")
    assert m.translate_block(CODE) == len(asm("nop; nop; jmp 0x10000"))
    m.mem.enable_shadows()
    m.mem.write_code_view(CODE, b"\xcc")
    assert m.mem.read_code_view(CODE, 3) == b"\xcc" + code[1:3]
    assert m.mem.read(CODE, 3) == code[:3]  # data reads keep the original bytes


@pytest.mark.parametrize("timeout", [0.0, 30.0])
def test_an_unexplained_engine_stop_resumes_the_guest(timeout: float) -> None:
    """The engine's timer thread stopped runs early now and then (fuzzing found it): a stop
    with no exit, limit or deferred work resumes at RIP, and the guest ends as it would."""
    m, _ = machine_with("mov ecx, 5; l: inc r9; dec ecx; jnz l")
    loop = CODE + len(asm("mov ecx, 5"))
    calls: list[int] = []

    def stop_every_other_time(address: int, size: int) -> None:
        calls.append(address)  # a block hook's stop comes before the block: it hooks again
        if len(calls) % 2:
            m.uc.emu_stop()

    m.hooks.on_block(stop_every_other_time, loop, loop + 1)
    m.run(CODE, timeout=timeout)
    assert m.exited and m.reg("r9") == 5
    # The first iteration runs in the block that starts at CODE; the other four start at
    # the loop: four stops, each resumed.
    assert len(calls) == 8


def test_an_engine_that_keeps_stopping_is_reported() -> None:
    """More unexplained stops than MAX_SPURIOUS_STOPS are leakdbt's own error, not a hang."""
    from leakdbt.errors import EmulatorError
    from leakdbt.machine.machine import MAX_SPURIOUS_STOPS

    m, _ = machine_with(f"mov ecx, {MAX_SPURIOUS_STOPS + 5}; l: inc r9; dec ecx; jnz l")
    loop = CODE + len(asm("mov ecx, 1"))
    m.hooks.on_block(lambda address, size: m.uc.emu_stop(), loop, loop + 1)
    with pytest.raises(EmulatorError, match="stopped unexpectedly"):
        m.run(CODE)
