"""leakdbt.run.allocations: the interval map of live allocations (against a model), what each
allocator call means, the bounds answered to hardened code (allocation, mapping, refusals
with their messages), and the allocator watch on real programs (static and dynamic glibc)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leakdbt.loader.modules import ModuleMap
from leakdbt.machine.machine import Machine
from leakdbt.machine.memory import Vma
from leakdbt.run.allocations import (
    ALLOCATORS,
    MAX_TABLE_BYTES,
    AllocationBounds,
    AllocationMap,
    Change,
)
from leakdbt.run.session import ExecOptions, execute

# ---------------------------------------------------------------------------------------------
# The interval map


def _model_add(blocks: dict[int, int], start: int, size: int) -> None:
    end = start + max(size, 1)
    for s, n in list(blocks.items()):
        if s < end and start < s + max(n, 1):
            del blocks[s]
    blocks[start] = size


def _model_find(blocks: dict[int, int], address: int) -> tuple[int, int] | None:
    for s, n in blocks.items():
        if s <= address < s + n:
            return s, n
    return None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "remove"]), st.integers(0, 400),
                          st.integers(0, 60)), max_size=40),
       st.lists(st.integers(0, 480), min_size=1, max_size=30))
def test_map_matches_a_model(ops: list[tuple[str, int, int]], probes: list[int]) -> None:
    live, model = AllocationMap(), dict[int, int]()
    for op, start, size in ops:
        if op == "add":
            live.add(start, size)
            _model_add(model, start, size)
        else:
            assert live.remove(start) == (start in model)
            model.pop(start, None)
    assert len(live) == len(model)
    for address in probes:
        assert live.find(address) == _model_find(model, address)


def test_map_basics() -> None:
    live = AllocationMap()
    live.add(0x1000, 0x100)
    live.add(0x2000, 0)  # malloc(0): a unique pointer that contains nothing
    assert live.find(0x1000) == live.find(0x10FF) == (0x1000, 0x100)
    assert live.find(0x1100) is None and live.find(0xFFF) is None and live.find(0x2000) is None
    live.add(0x1080, 0x10)  # a missed free: the new block replaces the one it overlaps
    assert live.find(0x1000) is None and live.find(0x1088) == (0x1080, 0x10)
    assert live.remove(0x1080) and not live.remove(0x1080)
    assert len(live) == 1


# ---------------------------------------------------------------------------------------------
# What a returning allocator call means


def _word(value: int) -> Any:
    return lambda address: value


@pytest.mark.parametrize(("name", "args", "ret", "memory", "change"), [
    ("malloc", (100, 0, 0), 0x5000, 0, Change(None, 0x5000, 100)),
    ("malloc", (100, 0, 0), 0, 0, Change()),  # out of memory
    ("calloc", (7, 9, 0), 0x5000, 0, Change(None, 0x5000, 63)),
    ("realloc", (0, 40, 0), 0x5000, 0, Change(None, 0x5000, 40)),  # realloc(NULL, n)
    ("realloc", (0x4000, 40, 0), 0x5000, 0, Change(0x4000, 0x5000, 40)),  # moved
    ("realloc", (0x4000, 0, 0), 0, 0, Change(0x4000)),  # realloc(p, 0) frees p
    ("realloc", (0x4000, 1 << 50, 0), 0, 0, Change()),  # failed: p is unchanged
    ("reallocarray", (0x4000, 3, 5), 0x4000, 0, Change(0x4000, 0x4000, 15)),
    ("aligned_alloc", (64, 256, 0), 0x5040, 0, Change(None, 0x5040, 256)),
    ("memalign", (32, 48, 0), 0x5020, 0, Change(None, 0x5020, 48)),
    ("posix_memalign", (0x7000, 64, 300), 0, 0x5040, Change(None, 0x5040, 300)),
    ("posix_memalign", (0x7000, 3, 300), 22, 0x5040, Change()),  # EINVAL
    ("valloc", (10, 0, 0), 0x6000, 0, Change(None, 0x6000, 10)),
    ("pvalloc", (10, 0, 0), 0x6000, 0, Change(None, 0x6000, 0x1000)),
])
def test_allocator_meanings(name: str, args: tuple[int, int, int], ret: int, memory: int,
                            change: Change) -> None:
    meaning = ALLOCATORS[name]
    assert meaning is not None
    assert meaning(args, ret, _word(memory)) == change
    assert ALLOCATORS["free"] is None  # handled at its entry


# ---------------------------------------------------------------------------------------------
# Bounds answered to hardened code (a stand-in machine: only memory lookups are used)


@dataclass
class _Memory:
    vmas: list[Vma]

    def find(self, address: int) -> Vma | None:
        return next((v for v in self.vmas if v.start <= address < v.end), None)


@dataclass
class _Machine:
    mem: _Memory
    hooked: list[int] = field(default_factory=list)

    def reg_reader(self, name: str) -> Any:
        return lambda: 0


def _bounds(limit: int = MAX_TABLE_BYTES) -> tuple[AllocationBounds, list[str]]:
    mem = _Memory([Vma(0x10000, 0x12000, 3, "[anon]"), Vma(0x20000, 0x40000, 3, "[anon]"),
                   Vma(0x50000, 0x51000, 3, "[stack]"), Vma(0x60000, 0x61000, 3, "[anon]",
                                                             guest=False)])
    warnings: list[str] = []
    bounds = AllocationBounds(cast(Machine, _Machine(mem)), ModuleMap(), warnings.append,
                              limit)
    return bounds, warnings


def test_bounds_from_allocation_then_mapping() -> None:
    bounds, warnings = _bounds()
    bounds.map.add(0x10100, 0x100)
    assert bounds.bounds(0x10180, 0x401000) == (0x10100, 0x100)
    assert bounds.bounds(0x11000, 0x401000) == (0x10000, 0x2000)  # the anonymous mapping
    assert not warnings
    site = bounds.sites[0x401000]
    assert (site.allocation, site.object, site.mapping, site.refused) == (1, 0, 1, {})
    assert bounds.report() == {"0x401000": "allocation 1, object 0, mapping 1"}


def test_bounds_refused_when_unknown_or_too_large() -> None:
    bounds, warnings = _bounds()
    bounds.map.add(0x70000, MAX_TABLE_BYTES + 1)
    for address in (0x50010, 0x60010, 0x90000, 0x50020):  # stack, ours, nothing, stack
        assert bounds.bounds(address, 0x401000) == (0, 0)
    assert bounds.bounds(0x70010, 0x401000) == (0, 0)  # an allocation over the cap
    assert bounds.bounds(0x20010, 0x401008) == (0, 0)  # a mapping over the cap
    unknown = ("the address is in no live allocation (allocator functions watched: 0), no "
               "sized ELF data object and no anonymous mapping of the guest")
    assert warnings == [  # once per access and reason; never the (secret) address
        f"leakdbt: 0x401000: heap-table access not hardened: {unknown}; it ran its "
        "original code",
        f"leakdbt: 0x401000: heap-table access not hardened: its allocation is "
        f"{MAX_TABLE_BYTES + 1} bytes, more than the {MAX_TABLE_BYTES}-byte cap on a swept "
        "table; it ran its original code",
        "leakdbt: 0x401008: heap-table access not hardened: its mapping is 131072 bytes, "
        f"more than the {MAX_TABLE_BYTES}-byte cap on a swept table; it ran its original code"]
    assert bounds.sites[0x401000].refused[unknown] == 4
    report = bounds.report()
    too_big = (f"its allocation is {MAX_TABLE_BYTES + 1} bytes, more than the "
               f"{MAX_TABLE_BYTES}-byte cap on a swept table")
    assert report["0x401000"] == (f"allocation 0, object 0, mapping 0, unhardened 1 "
                                  f"({too_big}), unhardened 4 ({unknown})")


def test_the_cap_is_configurable() -> None:
    bounds, warnings = _bounds(limit=0x80)
    bounds.map.add(0x10100, 0x100)
    assert bounds.bounds(0x10100, 0x401000) == (0, 0)
    assert "its allocation is 256 bytes, more than the 128-byte cap" in warnings[0]


# ---------------------------------------------------------------------------------------------
# The watch on real programs

PROGRAM = r"""
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#define N 10
__attribute__((noipa)) void checkpoint(void **p, size_t *n, int count) {
    (void)p; (void)n; (void)count;
}
int main(void) {
    void *p[N]; size_t n[N];
    p[0] = malloc(100); n[0] = 100;
    p[1] = calloc(7, 9); n[1] = 63;
    p[2] = malloc(10); p[2] = realloc(p[2], 5000); n[2] = 5000;
    if (posix_memalign(&p[3], 64, 300) != 0) return 1;
    n[3] = 300;
    p[4] = aligned_alloc(128, 256); n[4] = 256;
    p[5] = memalign(32, 48); n[5] = 48;
    p[6] = malloc(200000); n[6] = 200000;  /* glibc mmaps this one */
    p[7] = reallocarray(NULL, 6, 11); n[7] = 66;
    void *gone = malloc(77); free(gone); p[8] = gone; n[8] = 0;
    void *shrunk = malloc(64); p[9] = realloc(shrunk, 0); n[9] = 0;
    memset(p[0], 1, 100);
    checkpoint(p, n, N);
    return 0;
}
"""
KIND_FLAGS = {"static": ["-static", "-no-pie"], "dynamic": ["-fPIE", "-pie"]}


@pytest.fixture(scope="module", params=sorted(KIND_FLAGS))
def allocating(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
               ) -> Path:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the test program")
    directory = tmp_path_factory.mktemp("alloc")
    source = directory / "alloc.c"
    source.write_text(PROGRAM)
    out = directory / f"alloc-{request.param}"
    subprocess.run(["gcc", "-O2", *KIND_FLAGS[request.param], "-o", str(out), str(source)],
                   check=True, capture_output=True)
    return out


def test_the_watch_learns_every_allocator_call(allocating: Path) -> None:
    seen: dict[str, Any] = {}

    def on_modules(modules: ModuleMap) -> None:
        seen["modules"] = modules

    def on_start(machine: Machine, translator: object) -> None:
        machine.resumable = True  # the watch defers dropping translations of return sites
        watch = AllocationBounds(machine, seen["modules"])
        watch.activate()
        seen["watch"] = watch
        main = seen["modules"].modules()[0]
        assert main.image is not None
        checkpoint = main.image.symbol("checkpoint")
        assert checkpoint is not None

        def snapshot(address: int, size: int) -> None:
            p, n = machine.reg("rdi"), machine.reg("rsi")
            count = machine.reg("rdx")
            pointers = struct.unpack(f"<{count}Q", machine.mem.read(p, 8 * count))
            sizes = struct.unpack(f"<{count}Q", machine.mem.read(n, 8 * count))
            seen["at checkpoint"] = [(q, s, watch.map.find(q)) for q, s in
                                     zip(pointers, sizes, strict=True)]

        machine.hooks.at(checkpoint.value + main.base, snapshot)

    result = execute(str(allocating), ExecOptions(argv=[str(allocating)], env=[],
                                                  on_modules=on_modules, on_start=on_start))
    assert result.exit_status == 0
    rows = seen["at checkpoint"]
    for pointer, size, found in rows[:8]:
        assert pointer and found == (pointer, size), (hex(pointer), size, found)
    for pointer, _, found in rows[8:]:  # freed: by free(), by realloc(p, 0)
        assert found is None, hex(pointer)
    assert any(name.endswith(":malloc") for name in seen["watch"].allocators)


# ---------------------------------------------------------------------------------------------
# The translator's side: a copy with ``.bounds`` lines needs a source of bounds


def test_a_copy_with_bounds_lines_needs_a_source() -> None:
    from leakdbt.dbt.dispatch import Dispatcher
    from leakdbt.dbt.relocate import Translation
    from leakdbt.errors import TranslationError

    t = Translation("r", 0x1000, b"\x90", 0x1000, probes={0x1000: ("rsi", 0x1B0, False)})
    with pytest.raises(TranslationError, match="r: its hardened code needs run-time "
                                               "allocation bounds, which this run does not "
                                               "learn"):
        Dispatcher(Machine(), ModuleMap(), [])._hook_probes(t)
    machine = Machine()
    watch = AllocationBounds(machine, ModuleMap())
    bad = Translation("r", 0x1000, b"\x90", 0x1000, probes={0x1000: ("rfoo", 0x1B0, False)})
    with pytest.raises(TranslationError, match="r: '.bounds rfoo' names no register"):
        Dispatcher(machine, ModuleMap(), [], bounds=watch)._hook_probes(bad)
    assert watch.active  # asked for bounds: the allocator is watched from now on


def test_mapped_bounds_for_a_value_range_span() -> None:
    """The public start of a value-range span (``.bounds REG, OFF, mapped``): its allocation
    (any size), else the readable guest mapping holding it (the stack too, any size); in no
    readable guest memory: (0, 0), reported once per access."""
    bounds, warnings = _bounds()
    bounds.map.add(0x20100, MAX_TABLE_BYTES + 1)  # over the cap: the span bounds the scan
    assert bounds.bounds(0x20180, 0x401000, mapped=True) == (0x20100, MAX_TABLE_BYTES + 1)
    assert bounds.bounds(0x50010, 0x401000, mapped=True) == (0x50000, 0x1000)  # the stack
    assert bounds.bounds(0x20000, 0x401000, mapped=True) == (0x20000, 0x20000)
    assert not warnings
    cast(Any, bounds.machine.mem).vmas.append(Vma(0x80000, 0x81000, 0, "[guard]"))
    for address in (0x60010, 0x90000, 0x80010, 0x60020):  # ours, nothing, PROT_NONE, ours
        assert bounds.bounds(address, 0x401008, mapped=True) == (0, 0)
    why = "the start of its value-range span is in no readable mapping of the guest"
    assert warnings == [f"leakdbt: 0x401008: heap-table access not hardened: {why}; it ran "
                        "its original code"]
    assert bounds.report() == {"0x401000": "allocation 1, object 0, mapping 2",
                               "0x401008": f"allocation 0, object 0, mapping 0, "
                                           f"unhardened 4 ({why})"}
