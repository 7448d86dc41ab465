"""Stores whose memory destination Capstone marks read-only (movnti, movq/movups [mem],
xmm, pextrd, ...): leakdbt.x86.memaccess corrects the access, so that if-conversion
predicates them (load, select, store back) instead of storing on both paths, and taint
follows them into memory.  Checked against the SDM's meaning on each form, then by running
original and if-converted code on random states (static and static-PIE builds)."""

from __future__ import annotations

from pathlib import Path

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from capstone import x86 as cs_x86

from leakdbt.loader.image import Image
from leakdbt.plugin_api import Rewrite
from leakdbt.x86.asm import assemble
from leakdbt.x86.memaccess import memory_access
from plugins.if_conversion import PASS as IF_CONVERSION
from tests.unit.dbt.harness import RegionCheck
from tests.unit.plugins.ifc_support import (
    build,
    harden,
    region_of,
    sandbox_for,
    translate,
    view_of,
)

# (instruction, (read, written) of its memory operand, per the SDM)
FORMS = [
    ("mov qword ptr [rax], rbx", (False, True)),
    ("movnti qword ptr [rax], rbx", (False, True)),
    ("movq qword ptr [rax], xmm0", (False, True)),
    ("movd dword ptr [rax], xmm0", (False, True)),
    ("movups xmmword ptr [rax], xmm0", (False, True)),
    ("movntdq xmmword ptr [rax], xmm0", (False, True)),
    ("movlps qword ptr [rax], xmm0", (False, True)),
    ("movhps qword ptr [rax], xmm0", (False, True)),
    ("pextrd dword ptr [rax], xmm0, 1", (False, True)),
    ("extractps dword ptr [rax], xmm0, 1", (False, True)),
    ("movq xmm0, qword ptr [rax]", (True, False)),
    ("movups xmm0, xmmword ptr [rax]", (True, False)),
    ("add qword ptr [rax], rbx", (True, True)),
    ("cmp qword ptr [rax], rbx", (True, False)),
    ("pxor xmm0, xmmword ptr [rax]", (True, False)),
]


@pytest.mark.parametrize("text, expected", FORMS)
def test_memory_access_is_what_the_instruction_does(text: str, expected: tuple[bool, bool]
                                                    ) -> None:
    cs = Cs(CS_ARCH_X86, CS_MODE_64)
    cs.detail = True
    insn = next(cs.disasm(assemble(text, 0x1000), 0x1000))
    [(n, op)] = [(n, op) for n, op in enumerate(insn.operands)
                 if op.type == cs_x86.X86_OP_MEM]
    assert memory_access(insn.mnemonic, n, op.access) == expected


STATES = 200
SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>

long long g_nt;
__m128i g_lo;
char g_un[32];
int g_ex;

/* each stores to module data only when bit 0 of the secret is set */
__attribute__((noipa)) void nt(uint64_t bit, long long v)
{
    if (bit & 1)
        _mm_stream_si64(&g_nt, v);
}

__attribute__((noipa)) void lo(uint64_t bit, __m128i v)
{
    if (bit & 1)
        _mm_storel_epi64(&g_lo, v);
}

__attribute__((noipa)) void un(uint64_t bit, __m128 v)
{
    if (bit & 1)
        _mm_storeu_ps((float *)(g_un + 4), v);  /* not 16-byte aligned: movups */
}

__attribute__((noipa, target("sse4.1"))) void ex(uint64_t bit, long long v)
{
    if (bit & 1)
        g_ex = _mm_extract_epi32(_mm_cvtsi64_si128(v), 1);
}

int main(void)
{
    nt(1, 2);
    lo(1, _mm_set1_epi64x(2));
    un(1, _mm_set1_ps(2));
    ex(1, 2);
    return 0;
}
"""
# The store each function's arm must hold (else the compiler chose another form).
STORES = {"nt": "movnti", "lo": "movq", "un": "movups", "ex": "pextrd"}


@pytest.fixture(scope="module", params=["static", "static-pie"])
def program(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Image:
    directory: Path = tmp_path_factory.mktemp(f"store-access-{request.param}")
    return build(directory, "store_access", SOURCE, request.param)


@pytest.mark.parametrize("function", sorted(STORES))
def test_a_store_capstone_calls_a_read_is_predicated(program: Image, function: str) -> None:
    sandbox = sandbox_for(program)
    region = region_of(program, function)
    mnemonics = {i.mnemonic for b in region.blocks for i in region.cfg.blocks[b].insns}
    assert STORES[function] in mnemonics, mnemonics
    rewrite = harden(IF_CONVERSION, view_of(region, sandbox.bias, "branch"))
    assert isinstance(rewrite, Rewrite), rewrite
    check = RegionCheck(sandbox, region, translate(sandbox, region, rewrite),
                        scratch_below_red_zone=True)
    with check:
        report = check.check([f"store-access:{function}:{i}" for i in range(STATES)])
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared == STATES
