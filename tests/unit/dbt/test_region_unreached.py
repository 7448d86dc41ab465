"""A region at code the program runs but decoding does not reach from the function's entry
(glibc's vfprintf: its computed gotos jump through a table with no bounds check, so the
translator does not learn their targets): the refusal names the indirect jumps that may
lead there, and a function without any keeps the plain message."""

from __future__ import annotations

from pathlib import Path

import pytest

from leakdbt.dbt.cfg import function_cfg
from leakdbt.dbt.region import RegionError, form_region
from leakdbt.loader.elf import load_image
from tests.unit.dbt.harness import compile_program, nm_symbols

SOURCE = r"""
        .intel_syntax noprefix
        .text

        .globl  computed
        .type   computed, @function
computed:
        lea     rcx, [rip + computed_table]
        mov     rax, qword ptr [rcx + rdi*8]
        jmp     rax
computed_one:
        mov     eax, 1
        ret
computed_two:
        mov     eax, 2
        ret
        .size   computed, .-computed

        .globl  two_jumps
        .type   two_jumps, @function
two_jumps:
        test    edi, edi
        je      two_jumps_b
two_jumps_a:
        jmp     rsi
two_jumps_b:
        jmp     rdx
two_jumps_hidden:
        xor     eax, eax
        ret
        .size   two_jumps, .-two_jumps

        .globl  plain
        .type   plain, @function
plain:
        mov     eax, 1
        ret
plain_dead:
        mov     eax, 2
        ret
        .size   plain, .-plain

        .globl  main
        .type   main, @function
main:
        xor     eax, eax
        ret
        .size   main, .-main

        .section .data.rel.ro,"aw"
        .balign 8
computed_table:
        .quad   computed_one, computed_two
"""


@pytest.fixture(scope="module", params=("static", "static-pie"))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> tuple[Path, dict[str, int]]:
    directory = tmp_path_factory.mktemp(f"unreached-{request.param}")
    path = compile_program(directory, "unreached", {"unreached.S": SOURCE}, request.param,
                           ["-nostartfiles", "-Wl,-emain"])
    return path, nm_symbols(path)


def _refusal(built: tuple[Path, dict[str, int]], function: str, label: str) -> str:
    path, symbols = built
    image = load_image(str(path))
    func = image.symbol(function)
    assert func is not None
    at = symbols[label]
    cfg = function_cfg(image, func, [at])  # decoded from there too, as exec asks for it
    assert at in cfg.blocks and at not in cfg.dominators
    with pytest.raises(RegionError) as info:
        form_region(cfg, at, f"{function}+{at - func.value:#x}")
    return str(info.value)


def test_the_refusal_names_the_indirect_jump_that_may_lead_there(
        built: tuple[Path, dict[str, int]]) -> None:
    _, symbols = built
    where = f"computed+{symbols['computed_one'] - 2 - symbols['computed']:#x}"
    at = f"computed+{symbols['computed_two'] - symbols['computed']:#x}"
    assert _refusal(built, "computed", "computed_two") == (
        f"{at}: unreachable from the entry of computed as decoded: the indirect jump at "
        f"{where} ('jmp rax') may lead to it, but its targets are unknown")


def test_several_indirect_jumps_are_all_named(built: tuple[Path, dict[str, int]]) -> None:
    _, symbols = built
    base = symbols["two_jumps"]
    a = f"two_jumps+{symbols['two_jumps_a'] - base:#x}"
    b = f"two_jumps+{symbols['two_jumps_b'] - base:#x}"
    at = f"two_jumps+{symbols['two_jumps_hidden'] - base:#x}"
    assert _refusal(built, "two_jumps", "two_jumps_hidden") == (
        f"{at}: unreachable from the entry of two_jumps as decoded: the indirect jumps at "
        f"{a} ('jmp rsi'), {b} ('jmp rdx') may lead to it, but their targets are unknown")


def test_without_indirect_jumps_the_message_is_plain(built: tuple[Path, dict[str, int]]
                                                     ) -> None:
    _, symbols = built
    at = f"plain+{symbols['plain_dead'] - symbols['plain']:#x}"
    assert _refusal(built, "plain", "plain_dead") == \
        f"{at}: unreachable from the entry of plain"
