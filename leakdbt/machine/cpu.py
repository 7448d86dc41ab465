"""The CPUID the guest sees: the engine's model, less every feature it does not emulate right.

Unicorn's default x86-64 model reports a Haswell without AVX but with XSAVE and an AVX state
component.  We hide XSAVE/OSXSAVE (so libraries never probe XCR0 for AVX state and use FXSAVE),
every AVX/AVX-512/FMA/F16C bit, and leaf 7 features other than the BMI1/BMI2/ERMS/ADX the TCG
implements.  The raw model is read once from a scratch engine, so new Unicorn versions keep
working; the masks are the policy.
"""

from __future__ import annotations

from functools import cache

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn.x86_const import UC_X86_REG_RAX, UC_X86_REG_RBX, UC_X86_REG_RCX, UC_X86_REG_RDX

Regs = tuple[int, int, int, int]

# Leaf 1 ECX bits to clear: VMX(5) FMA(12) XSAVE(26) OSXSAVE(27) AVX(28) F16C(29).
LEAF1_ECX_CLEAR = (1 << 5) | (1 << 12) | (1 << 26) | (1 << 27) | (1 << 28) | (1 << 29)
# Leaf 7.0 EBX bits to keep: BMI1(3) BMI2(8) ERMS(9) ADX(19).
LEAF7_EBX_KEEP = (1 << 3) | (1 << 8) | (1 << 9) | (1 << 19)
# Leaf 0x80000001 ECX bits to clear: SSE4A(6) XOP(11) FMA4(16) TBM(21).
EXT1_ECX_CLEAR = (1 << 6) | (1 << 11) | (1 << 16) | (1 << 21)


@cache
def _raw(leaf: int, subleaf: int) -> Regs:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, b"\x0f\xa2")  # cpuid
    uc.reg_write(UC_X86_REG_RAX, leaf)
    uc.reg_write(UC_X86_REG_RCX, subleaf)
    uc.emu_start(0x1000, 0x1002)
    return (uc.reg_read(UC_X86_REG_RAX), uc.reg_read(UC_X86_REG_RBX),
            uc.reg_read(UC_X86_REG_RCX), uc.reg_read(UC_X86_REG_RDX))


@cache
def guest_cpuid(leaf: int, subleaf: int) -> Regs:
    """(eax, ebx, ecx, edx) that the guest's CPUID returns for ``leaf``/``subleaf``."""
    leaf &= 0xFFFFFFFF
    subleaf = subleaf & 0xFFFFFFFF if leaf in (4, 7, 0xB, 0xD, 0xF, 0x10, 0x14) else 0
    eax, ebx, ecx, edx = _raw(leaf, subleaf)
    if leaf == 1:
        ecx &= ~LEAF1_ECX_CLEAR
    elif leaf == 7:
        eax, ebx, ecx, edx = (0, ebx & LEAF7_EBX_KEEP, 0, 0) if subleaf == 0 else (0, 0, 0, 0)
    elif leaf == 0xD:
        eax = ebx = ecx = edx = 0  # no XSAVE state components
    elif leaf == 0x80000001:
        ecx &= ~EXT1_ECX_CLEAR
    return eax & 0xFFFFFFFF, ebx & 0xFFFFFFFF, ecx & 0xFFFFFFFF, edx & 0xFFFFFFFF


def hwcap() -> int:
    """AT_HWCAP as Linux reports it on x86-64: CPUID leaf 1 EDX."""
    return guest_cpuid(1, 0)[3]
