"""The guest CPU advertises only what the engine emulates correctly, and VEX vector code is
found and stopped before it runs."""

from __future__ import annotations

import pytest
from keystone import KS_ARCH_X86, KS_MODE_64, Ks

from leakdbt.errors import UnsupportedInstruction
from leakdbt.machine import vex
from leakdbt.machine.cpu import guest_cpuid
from leakdbt.machine.machine import Machine


def asm(text: str, address: int = 0) -> bytes:
    code, _ = Ks(KS_ARCH_X86, KS_MODE_64).asm(text, address)
    return bytes(code)


def test_cpuid_hides_avx_xsave_and_friends() -> None:
    _, _, ecx, edx = guest_cpuid(1, 0)
    for bit, name in ((28, "AVX"), (27, "OSXSAVE"), (26, "XSAVE"), (12, "FMA"), (29, "F16C")):
        assert not ecx >> bit & 1, name
    assert edx >> 25 & 1 and edx >> 26 & 1  # SSE and SSE2 stay
    _, ebx, ecx7, edx7 = guest_cpuid(7, 0)
    assert not ebx >> 5 & 1  # AVX2
    assert not ebx >> 16 & 1  # AVX512F
    assert ecx7 == edx7 == 0
    assert guest_cpuid(0xD, 0) == (0, 0, 0, 0)
    assert guest_cpuid(0xD, 1) == (0, 0, 0, 0)


def test_guest_executing_cpuid_sees_the_masked_values() -> None:
    m = Machine()
    code = asm("mov eax, 1; cpuid; mov r8, rcx; mov eax, 7; xor ecx, ecx; cpuid; nop")
    m.mem.map(0x10000, 0x1000, 5)
    m.mem.write(0x10000, code)
    m.uc.emu_start(0x10000, 0x10000 + len(code) - 1)
    assert m.reg("r8") == guest_cpuid(1, 0)[2]
    assert m.reg("rbx") == guest_cpuid(7, 0)[1]


@pytest.mark.parametrize("text", ["vpxor xmm0, xmm1, xmm2", "vmovups ymm0, [rdi]",
                                  "vzeroupper", "vaddps ymm1, ymm2, ymm3",
                                  "vpbroadcastd xmm0, xmm1"])
def test_vector_vex_recognised(text: str) -> None:
    assert vex.vector_vex_at(asm(text) + b"\x90" * 8)


@pytest.mark.parametrize("text", ["andn eax, ebx, ecx", "shlx rax, rbx, rcx", "rorx eax, ebx, 3",
                                  "mulx rax, rbx, rcx", "pxor xmm0, xmm1", "add eax, 0xc5c4"])
def test_bmi_and_legacy_sse_are_not_vector_vex(text: str) -> None:
    assert not vex.vector_vex_at(asm(text) + b"\x90" * 8)


def test_sweep_finds_only_real_instruction_starts() -> None:
    code = asm("mov eax, 0xc5c5c5c5; vpxor xmm0, xmm1, xmm2; add eax, 1; vmovdqu xmm1, [rax]",
               0x1000)
    found = vex.vector_vex_instructions(code, 0x1000, 0x1000, 0x1000 + len(code))
    assert found == [0x1005, 0x100c]  # mov eax,imm32: 5 bytes; vpxor: 4; add eax,1: 3


def test_vex_instruction_stops_before_running() -> None:
    m = Machine()
    code = asm("mov eax, 1; vpxor xmm0, xmm1, xmm2; mov eax, 2; nop", 0x10000)
    m.mem.map(0x10000, 0x1000, 5)
    m.mem.write(0x10000, code)
    with pytest.raises(UnsupportedInstruction, match="at 0x10005"):
        m.run(0x10000)
    assert m.reg("rax") == 1  # the instruction before ran, the VEX one did not


def test_hook_left_on_replaced_code_does_not_fire() -> None:
    """A page with VEX code is vetted, unmapped and mapped again with other code: the stale
    hook must not report an instruction that is no longer there."""
    m = Machine()
    vex_code = asm("vpxor xmm0, xmm1, xmm2; nop", 0x10000)
    m.mem.map(0x10000, 0x1000, 5)
    m.mem.write(0x10000, vex_code)
    with pytest.raises(UnsupportedInstruction):
        m.run(0x10000)
    m.mem.unmap(0x10000, 0x1000)
    m.mem.map(0x10000, 0x1000, 5)
    plain = asm("mov eax, 7; mov ebx, 8; hlt", 0x10000)
    m.mem.write(0x10000, plain)
    m.invalidate_code(0x10000, 0x11000)
    m.uc.emu_start(0x10000, 0x10000 + len(plain) - 1)
    assert (m.reg("rax"), m.reg("rbx")) == (7, 8)


def test_sweep_cache_answers_like_the_sweep_and_survives_a_new_process(tmp_path) -> None:
    code = asm("mov eax, 0xc5c5c5c5; vpxor xmm0, xmm1, xmm2; add eax, 1; vmovdqu xmm1, [rax]")
    first = vex.SweepCache(str(tmp_path))
    assert first.vector_vex_instructions(code, 0x1000, 0x1000, 0x1000 + len(code)) == [
        0x1005, 0x100c]
    assert (first.hits, first.misses) == (0, 1)
    first.save()
    again = vex.SweepCache(str(tmp_path))  # what the next run loads
    # the same bytes elsewhere (PIE) hit, at the new addresses
    assert again.vector_vex_instructions(code, 0x7000, 0x7000, 0x7000 + len(code)) == [
        0x7005, 0x700c]
    assert (again.hits, again.misses) == (1, 0)
    # other bytes, or another part of the same bytes, are swept anew
    assert again.vector_vex_instructions(code, 0x7000, 0x7006, 0x7000 + len(code)) == [0x700c]
    assert again.misses == 1


def test_a_damaged_sweep_cache_is_an_empty_one(tmp_path) -> None:
    code = asm("vpxor xmm0, xmm1, xmm2")
    cache = vex.SweepCache(str(tmp_path))
    cache.vector_vex_instructions(code, 0, 0, len(code))
    cache.save()
    (path,) = tmp_path.iterdir()
    path.write_text('{"x": "not offsets"')
    assert vex.SweepCache(str(tmp_path)).vector_vex_instructions(code, 0, 0, len(code)) == [0]
    path.write_text('{"k": ["bad"]}')
    assert vex.SweepCache(str(tmp_path)).vector_vex_instructions(code, 0, 0, len(code)) == [0]


def test_a_machine_with_a_warm_cache_still_stops_vex_code(tmp_path) -> None:
    code = asm("mov eax, 1; vpxor xmm0, xmm1, xmm2; mov eax, 2; nop", 0x10000)
    for _ in range(2):  # cold, then from the cache
        m = Machine()
        m.vex_sweeps = vex.SweepCache(str(tmp_path))
        m.mem.map(0x10000, 0x1000, 5)
        m.mem.write(0x10000, code)
        with pytest.raises(UnsupportedInstruction, match="at 0x10005"):
            m.run(0x10000)
        m.vex_sweeps.save()
    assert m.vex_sweeps.hits >= 1


def test_nearby_vex_instructions_share_a_hook() -> None:
    assert vex.clusters([0x10, 0x14, 0x30, 0x80, 0x81], 32) == [(0x10, 0x30), (0x80, 0x81)]
    assert vex.clusters([], 32) == []


def test_an_ordinary_instruction_inside_a_vex_hook_range_runs() -> None:
    """The VEX instructions around it share one hook: only the one that runs is judged."""
    m = Machine()
    code = asm("jmp skip; vpxor xmm0, xmm1, xmm2; skip: mov eax, 7; jmp next; "
               "vpxor xmm3, xmm3, xmm3; next: mov ebx, 8; vpxor xmm0, xmm1, xmm2", 0x10000)
    m.mem.map(0x10000, 0x1000, 5)
    m.mem.write(0x10000, code)
    with pytest.raises(UnsupportedInstruction, match="VEX"):
        m.run(0x10000)
    assert (m.reg("rax"), m.reg("rbx")) == (7, 8)
    assert len(m._vex_hooks) == 1
