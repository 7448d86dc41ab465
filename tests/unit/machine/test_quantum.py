"""The scheduling quantum (Machine.set_quantum, used by leakdbt.linux.threads): the handler
runs between engine runs each time a quantum of instructions has run, at the same points in
every run, without disturbing the instruction count or an exact --max-insns."""

from __future__ import annotations

import pytest

from leakdbt.errors import LimitExceeded
from leakdbt.machine.machine import Machine
from tests.unit.machine.test_block_counter import CODE, machine_with

LOOP = """
        mov r12d, 3000
    l:  add rax, r12; imul rdx, rax, 3; xor rdx, rax; mov eax, 39; syscall
        dec r12d; jnz l"""
BIGGEST_BLOCK = 512  # the engine's largest translation block, in instructions


def preemption_points(native: bool, quantum: int, max_insns: int = 0
                      ) -> tuple[list[int], int, int | None, bool]:
    """(counter values at each handler call, ground truth, the machine's count, limit hit)."""
    m, truth = machine_with(LOOP, native=native)
    points: list[int] = []

    def handler() -> None:
        counter = m.instruction_counter()
        assert counter is not None
        points.append(counter.done)

    m.set_quantum(quantum, handler)
    stopped = False
    try:
        m.run(CODE, count_insns=True, max_insns=max_insns)
    except LimitExceeded:
        stopped = True
    return points, truth[0], m.instructions_executed(), stopped


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_the_handler_runs_every_quantum_at_the_same_points(native: bool) -> None:
    points, truth, counted, _ = preemption_points(native, 1000)
    assert counted == truth > 20_000
    assert truth // 1000 <= len(points) <= truth // (1000 - BIGGEST_BLOCK)
    assert 1000 - BIGGEST_BLOCK < points[0] <= 1000
    assert preemption_points(native, 1000)[0] == points


def test_each_quantum_starts_where_the_last_handler_left() -> None:
    points, _, _, _ = preemption_points(True, 2500)
    gaps = [b - a for a, b in zip(points, points[1:], strict=False)]
    assert all(2500 - BIGGEST_BLOCK < gap <= 2500 for gap in gaps)


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_max_insns_stays_exact_with_a_quantum(native: bool) -> None:
    points, truth, counted, stopped = preemption_points(native, 1000, max_insns=5500)
    assert stopped and truth == counted == 5500
    assert len(points) == 5


def test_no_quantum_no_handler_and_no_count() -> None:
    m = Machine()
    m.set_quantum(0, None)
    assert m.instruction_counter() is None


SCOPED = """
        mov r12d, 400
    o:  add rax, r12; imul rdx, rax, 3; dec r12d; jnz o
        call f
        mov r12d, 400
    p:  add rax, r12; imul rdx, rax, 3; dec r12d; jnz p
        jmp done
    f:  mov ecx, 1000
    i:  add rbx, rcx; xor rbx, rax; dec ecx; jnz i
        ret
    done: nop"""


def test_a_scoped_call_holds_the_quantum_until_it_returns() -> None:
    """The contract's function scope is per run, not per thread: no switch lands inside a
    scoped call; the held switch comes right after it returns (leakdbt.run.scope)."""
    from leakdbt.run.scope import FunctionScope
    from tests.unit.machine.test_block_counter import asm

    code = asm(SCOPED)
    f = CODE + code.index(asm("mov ecx, 1000", 0))
    ret = CODE + code.index(b"\xc3")
    m, truth = machine_with(SCOPED, native=True)
    scope = FunctionScope(m, [])
    scope.add_entry(f)
    m.hooks.on_block(lambda _a, _s: scope.active())
    stops: list[int] = []
    m.set_quantum(1000, lambda: stops.append(m.reg("rip")))
    m.run(CODE, count_insns=True)
    assert truth[0] == m.instructions_executed() > 4000
    assert stops and not any(f <= rip <= ret for rip in stops)
    assert len(stops) < truth[0] // 1000  # the quanta inside f were held, not run
