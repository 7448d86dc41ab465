"""A 32-bit ``lea`` (address-size prefix, no memory access) in an if-converted arm: glibc's
``__strrchr_sse2`` has ``lea edx, [ecx - 1]`` in a secret arm, which predication used to
refuse as "32-bit addressing".  It is arithmetic: the arm runs predicated like any other
register write.  Differential against the original on hundreds of random states, both
arms taken (raw Unicorn, tests/unit/dbt/harness.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from leakdbt.loader.image import Image
from leakdbt.plugin_api import Rewrite
from plugins.if_conversion import PASS
from tests.unit.dbt.harness import RegionCheck
from tests.unit.plugins.ifc_support import (
    build,
    harden,
    region_of,
    sandbox_for,
    state,
    translate,
    view_of,
)

STATES = 300

SOURCE = r"""
__asm__(".text\n"
        ".intel_syntax noprefix\n"
        ".globl arm32\n"
        ".type arm32, @function\n"
        "arm32:\n"
        "    mov eax, esi\n"
        "    test dil, 1\n"
        "    je 1f\n"
        "    lea edx, [ecx - 1]\n"      /* 67 8d 51 ff */
        "    lea eax, [eax + edx*2 + 3]\n"
        "1:  add rax, rdx\n"
        "    ret\n"
        ".att_syntax prefix\n");
long arm32(long, long, long, long);
int main(void) { return (int)arm32(1, 2, 3, 4); }
"""


@pytest.fixture(scope="module", params=["static", "static-pie"])
def program(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Image:
    directory: Path = tmp_path_factory.mktemp(f"addr32-{request.param}")
    return build(directory, "addr32", SOURCE, request.param)


def test_the_arm_with_a_32_bit_lea_computes_what_the_original_computes(program: Image
                                                                       ) -> None:
    sandbox = sandbox_for(program)
    region = region_of(program, "arm32")
    assert any(i.text == "lea edx, [ecx - 1]" for b in region.block_list() for i in b.insns)
    rewrite = harden(PASS, view_of(region, sandbox.bias, "branch"))
    assert isinstance(rewrite, Rewrite), rewrite
    check = RegionCheck(sandbox, region, translate(sandbox, region, rewrite),
                        scratch_below_red_zone=True)
    states = [(f"addr32:{i}", state(f"addr32:{i}", rdi=i)) for i in range(STATES)]
    with check:
        report = check.compare(states)
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared == STATES and report.stops == {"exit": STATES}, report.stops
