"""RunObserver scoped to code ranges: it sees the blocks that start in the ranges, the data
accesses and divisions of the instructions there, and counts exactly the instructions run
there — also those of a block that runs into a range."""

from __future__ import annotations

from keystone import KS_ARCH_X86, KS_MODE_64, Ks

from leakdbt.leakage.observe import OBSERVERS, RunObserver
from leakdbt.machine.machine import Machine
from leakdbt.machine.memory import PROT_EXEC, PROT_READ, PROT_WRITE

CODE, DATA = 0x10000, 0x20000
BEFORE = "mov rax, qword ptr [rsi]"  # outside the range
INSIDE = ("b: mov rax, qword ptr [rsi + 64]; mov qword ptr [rdi], rax; mov eax, 100; "
          "xor edx, edx; mov ebx, 7; div rbx; dec rcx; jnz b")  # 8 instructions
AFTER = "mov rax, qword ptr [rsi + 128]; mov eax, 60; syscall"  # outside


def asm(text: str, address: int = CODE) -> bytes:
    code, _ = Ks(KS_ARCH_X86, KS_MODE_64).asm(text, address)
    return bytes(code)


def test_a_range_scope_observes_only_the_code_in_the_range() -> None:
    code = asm(f"{BEFORE}; {INSIDE}; {AFTER}")
    start = CODE + len(asm(BEFORE))
    end = CODE + len(asm(f"{BEFORE}; {INSIDE}"))
    division = CODE + len(asm(f"{BEFORE}; {INSIDE.split('; div')[0]}"))
    m = Machine()
    m.mem.map(CODE, 0x1000, PROT_READ | PROT_EXEC)
    m.mem.map(DATA, 0x1000, PROT_READ | PROT_WRITE)
    m.mem.write(CODE, code)
    for name, value in (("rsi", DATA), ("rdi", DATA + 0x800), ("rcx", 2)):
        m.set_reg(name, value)

    def exit_(machine: Machine) -> None:
        machine.exited = True
        machine.stop()

    m.syscall_handler = exit_
    observer = RunObserver(m, OBSERVERS, 64, ["int-div"], None, full=True,
                           ranges=[(start, end)])
    m.run(CODE)
    t = observer.trace
    # The first pass runs into the range from BEFORE's block; the second jumps to it.
    assert [address for address, _, _ in t.blocks] == [start]
    assert t.instructions == 2 * 8
    inside = [("r", (DATA + 64) // 64), ("w", (DATA + 0x800) // 64)]
    assert [(kind, line) for _, _, kind, line in t.memory] == inside * 2
    assert [pc for _, pc, _ in t.latency] == [division] * 2
    assert t.operands == [(100, 0, 7)] * 2
