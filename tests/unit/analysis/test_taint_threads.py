"""Register taint per guest thread (leakdbt.analysis.taint.TaintTracker): threads share
memory, not registers; at a switch (Machine.thread_listeners) the outgoing thread's register,
flag and known-zero state is kept and the incoming one's put back; a thread made by clone
or clone3 with CLONE_THREAD starts with its creator's register taint (rax clean)."""

from __future__ import annotations

import struct

from leakdbt.analysis.rules import REGISTERS
from leakdbt.analysis.taint import CLONE_THREAD, TaintTracker
from leakdbt.machine.machine import Machine

PTHREAD = 0x3D0F00  # glibc's pthread_create flags (CLONE_THREAD among them)
SIGCHLD = 17


def _switch(machine: Machine, index: int) -> None:
    for listener in machine.thread_listeners:
        listener(index)


def _tracker(result: int = 1001) -> tuple[Machine, TaintTracker]:
    machine = Machine()

    def kernel(m: Machine) -> None:
        m.set_reg("rax", result)  # the new thread's id, in the creator

    machine.syscall_handler = kernel
    return machine, TaintTracker(machine)


def _clone(machine: Machine, flags: int) -> None:
    machine.set_reg("rax", 56)
    machine.set_reg("rdi", flags)
    assert machine.syscall_handler is not None
    machine.syscall_handler(machine)


def test_each_thread_keeps_its_own_register_taint() -> None:
    machine, t = _tracker()
    sh = t.shadow
    t.taint_memory(0x5000, 4, 8)
    t.taint_register("r12", 1)
    sh.flags = 1
    rbx = REGISTERS["rbx"]
    sh.add_zero(rbx, 0xFF00)
    _clone(machine, PTHREAD)  # thread 1, made by thread 0 with r12 tainted
    _switch(machine, 1)
    assert sh.reg_named("r12") == [1] * 8 and sh.reg_named("rax") == [0] * 8
    assert sh.flags == 1 and sh.zero_bits(rbx) == 0xFF00
    sh.set_reg_named("r12", [0] * 8)  # thread 1 puts public data in r12 and rbx
    sh.set_reg_named("rbx", [0] * 8)
    t.taint_register("rsi", 2)
    sh.flags = 0
    _switch(machine, 0)
    assert sh.reg_named("r12") == [1] * 8 and sh.reg_named("rsi") == [0] * 8
    assert sh.flags == 1 and sh.zero_bits(rbx) == 0xFF00
    assert sh.load(0x5000, 4) == [8] * 4  # memory is everyone's
    _switch(machine, 1)
    assert sh.reg_named("r12") == [0] * 8 and sh.reg_named("rsi") == [2] * 8
    assert sh.flags == 0 and sh.zero_bits(rbx) == 0


def test_only_a_new_thread_gets_a_copy_and_an_unknown_one_starts_clean() -> None:
    machine, t = _tracker()
    t.taint_register("r13", 4)
    _clone(machine, SIGCHLD)  # a fork: no thread of this process
    _clone(machine, PTHREAD)  # thread 1
    machine.set_reg("rax", 435)  # clone3, its flags in memory
    machine.mem.map(0x7000, 0x1000, 3)
    machine.mem.write(0x7000, struct.pack("<Q", PTHREAD & ~CLONE_THREAD))
    machine.set_reg("rdi", 0x7000)
    assert machine.syscall_handler is not None
    machine.syscall_handler(machine)  # not a thread
    machine.mem.write(0x7000, struct.pack("<Q", PTHREAD))
    t.taint_register("r13", 16)
    machine.set_reg("rax", 435)
    machine.syscall_handler(machine)  # thread 2
    _switch(machine, 2)
    assert t.shadow.reg_named("r13") == [16] * 8
    _switch(machine, 1)
    assert t.shadow.reg_named("r13") == [4] * 8
    _switch(machine, 3)  # never made while the tracker watched: clean
    assert t.shadow.reg_named("r13") == [0] * 8


def test_a_failed_clone_makes_no_thread() -> None:
    machine, t = _tracker(result=(1 << 64) - 11)  # -EAGAIN
    t.taint_register("r14", 1)
    _clone(machine, PTHREAD)
    _switch(machine, 1)
    assert t.shadow.reg_named("r14") == [0] * 8
