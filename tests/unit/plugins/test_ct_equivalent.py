"""The ct-equivalent pass: the constant-time memcmp returns what glibc's __memcmp_sse2 returns
for every size and first-difference position (both run in the emulator), touches the same
bytes whatever the data, and the pass refuses what it does not know."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
from unicorn import UC_HOOK_CODE
from unicorn import x86_const as x

from leakdbt.dbt.cfg import function_cfg
from leakdbt.dbt.harden import region_view
from leakdbt.dbt.region import CodeRegion, RegionError, form_region
from leakdbt.dbt.relocate import relocate
from leakdbt.loader.elf import load_image
from leakdbt.loader.image import Image
from leakdbt.plugin_api import Refusal, RegionView, Rewrite
from plugins.ct_equivalent import EQUIVALENTS, PASS, Redirect
from tests.conftest import binary
from tests.unit.dbt.harness import SCRATCH, SENTINEL, STACK, STACK_SIZE, Sandbox

A, B = SCRATCH, SCRATCH + 0x1000  # the two buffers (a page each, n <= 300)


def _function(image: Image, name: str) -> tuple[CodeRegion, RegionView]:
    sym = image.symbol(name)
    assert sym is not None, name
    region = form_region(function_cfg(image, sym), sym.value, name, function=True)
    return region, region_view(region, "function", 0, {}, None, image)


@pytest.fixture(scope="module")
def memcmp_sandbox(built: Path) -> tuple[Sandbox, int, int]:
    """The static sodium_verify program (glibc's __memcmp_sse2) in a raw engine, with the
    pass's code laid out in its code cache: (sandbox, original entry, copy entry)."""
    image = load_image(binary("static", "sodium_verify"))
    region, view = _function(image, "__memcmp_sse2")
    rewrite = PASS.harden(view, None, None)  # type: ignore[arg-type]
    assert isinstance(rewrite, Rewrite) and rewrite.code is not None
    sandbox = Sandbox(image)
    t = relocate(region, 0, sandbox.place, {}, rewrite.code)
    sandbox.uc.mem_write(t.base, t.code)
    return sandbox, region.entry, t.entry


def _call(sandbox: Sandbox, entry: int, a: bytes, b: bytes, n: int,
          touched: list[int] | None = None) -> tuple[int, bytes, int]:
    """memcmp(A, B, n) from ``entry``: (eax, both buffers afterwards, rsp afterwards);
    ``touched`` collects the addresses of the instructions run."""
    uc = sandbox.uc
    uc.context_restore(sandbox.clean)
    uc.mem_write(A, a.ljust(0x1000, b"\0"))
    uc.mem_write(B, b.ljust(0x1000, b"\0"))
    rsp = STACK + STACK_SIZE - 0x200
    uc.mem_write(rsp, SENTINEL.to_bytes(8, "little"))
    for reg, value in ((x.UC_X86_REG_RDI, A), (x.UC_X86_REG_RSI, B), (x.UC_X86_REG_RDX, n),
                       (x.UC_X86_REG_RSP, rsp), (x.UC_X86_REG_RAX, 0x5555_5555_5555_5555)):
        uc.reg_write(reg, value)
    hook = None
    if touched is not None:
        hook = uc.hook_add(UC_HOOK_CODE, lambda _uc, addr, _size, _ud: touched.append(addr))
        uc.ctl_flush_tb()  # blocks translated before the hook existed would not call it
    try:
        uc.emu_start(entry, SENTINEL, count=100_000)
    finally:
        if hook is not None:
            uc.hook_del(hook)
    eax = uc.reg_read(x.UC_X86_REG_RAX) & 0xFFFF_FFFF
    return eax, bytes(uc.mem_read(A, 0x1000)) + bytes(uc.mem_read(B, 0x1000)), \
        uc.reg_read(x.UC_X86_REG_RSP)


def _pairs(rng: random.Random, n: int) -> list[tuple[bytes, bytes]]:
    """Equal buffers, and buffers whose first difference is at each position (several
    positions for large n), the differing bytes random (either order, 0x00 and 0xff too)."""
    out = []
    a = bytes(rng.randrange(256) for _ in range(n))
    out.append((a, a))
    some = {0, 1, 15, 16, 17, 31, 32, 33, 63, 64, n - 1, *rng.sample(range(n), min(n, 12))}
    positions = range(n) if n <= 40 else sorted(p for p in some if p < n)
    for i in positions:
        b = bytearray(a)
        b[i] = rng.choice([0, 255, (a[i] + rng.randrange(1, 256)) % 256])
        if b[i] == a[i]:
            b[i] ^= 0x80
        for j in range(i + 1, n):  # the bytes after the first difference: anything
            b[j] = rng.randrange(256)
        out.append((a, bytes(b)))
        out.append((bytes(b), a))
    return out


@pytest.mark.parametrize("sizes", [range(0, 41), range(41, 130), range(130, 301, 7)],
                         ids=["0-40", "41-129", "130-300"])
def test_memcmp_equivalent_returns_what_glibc_returns(memcmp_sandbox: tuple[Sandbox, int, int],
                                                      sizes: range) -> None:
    sandbox, original, copy = memcmp_sandbox
    rng = random.Random(f"memcmp-{sizes.start}")
    compared = 0
    for n in sizes:
        for a, b in _pairs(rng, n):
            want = _call(sandbox, original, a, b, n)
            got = _call(sandbox, copy, a, b, n)
            assert got == want, (n, a.hex(), b.hex(), hex(want[0]), hex(got[0]))
            compared += 1
    assert compared > 300


def test_memcmp_equivalent_runs_the_same_instructions_whatever_the_data(
        memcmp_sandbox: tuple[Sandbox, int, int]) -> None:
    """For n = 32 (the MAC case) the original's path depends on the first difference; the
    equivalent's instruction trace (hence the lines it touches: both whole buffers) does not."""
    sandbox, original, copy = memcmp_sandbox
    rng = random.Random(5)
    traces, original_traces = set(), set()
    for a, b in _pairs(rng, 32):
        t: list[int] = []
        _call(sandbox, copy, a, b, 32, t)
        traces.add(tuple(t))
        o: list[int] = []
        _call(sandbox, original, a, b, 32, o)
        original_traces.add(tuple(o))
    assert len(traces) == 1 and len(original_traces) > 2


def test_a_function_it_does_not_know_is_refused(built: Path) -> None:
    image = load_image(binary("static", "sodium_verify"))
    _, view = _function(image, "main")
    result = PASS.harden(view, None, None)  # type: ignore[arg-type]
    assert isinstance(result, Refusal) and "no constant-time equivalent is known for main" \
        in result.reason


def test_other_code_under_a_known_name_is_refused(built: Path) -> None:
    """The fingerprint: another implementation called __memcmp_sse2 is not ours to replace."""
    image = load_image(binary("static", "sodium_verify"))
    _, view = _function(image, "__memcmp_sse2")
    shorter = replace(view, blocks=view.blocks[:-1])
    result = PASS.harden(shorter, None, None)  # type: ignore[arg-type]
    assert isinstance(result, Refusal) and "verified against" in result.reason


def test_redirect_jumps_to_the_equivalent_or_refuses_without_it(built: Path) -> None:
    image = load_image(binary("static", "ossl_modexp"))
    _, view = _function(image, "BN_mod_exp_mont")
    known = EQUIVALENTS["BN_mod_exp_mont"]
    assert isinstance(known, Redirect)
    target = image.symbol(known.target)
    assert target is not None
    assert PASS.harden(view, None, None) == Rewrite(  # type: ignore[arg-type]
        code=(f"jmp @{target.value:#x}",))
    missing = replace(view, function_address=lambda name: None)
    result = PASS.harden(missing, None, None)  # type: ignore[arg-type]
    assert isinstance(result, Refusal) and "not in the module" in result.reason


def test_only_function_regions(built: Path) -> None:
    image = load_image(binary("static", "sodium_verify"))
    sym = image.symbol("__memcmp_sse2")
    assert sym is not None
    cfg = function_cfg(image, sym)
    block = form_region(cfg, sym.value, "__memcmp_sse2", branch=False)
    assert PASS.applies(region_view(block, None), None, None) is False  # type: ignore[arg-type]
    with pytest.raises(RegionError, match="starts at the entry"):
        form_region(cfg, sym.value + 4, "__memcmp_sse2+0x4", function=True)
