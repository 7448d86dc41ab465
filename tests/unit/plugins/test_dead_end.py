"""Branch regions with a path that ends the program: a call to a function that does not
return (``abort``, ``__assert_fail`` by the NORETURN table; ``die`` by its own CFG) or a
``ud2`` (``__builtin_trap``).  The region is formed with that path ending at the call (a
*dead end*), and if-conversion leaves for the original code there when the path's
predicate is on (plugins/support/predication.py, ``Engine._dead_end``).

Differential runs in raw Unicorn (tests/unit/dbt/harness.py): the copy against the original
on hundreds of random states, where the dead end is taken in a good share of them (the copy
then goes on in the original call, which pushes the original return address).  And the
copy's instructions and cache lines are the same whatever the secret, on the paths that do
not end the program.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from leakdbt.dbt.cfg import returns_never
from leakdbt.dbt.region import CodeRegion
from leakdbt.loader.image import Image
from leakdbt.plugin_api import Rewrite
from plugins.if_conversion import PASS as IF_CONVERSION
from tests.unit.dbt.harness import RegionCheck, Sandbox, State, random_state
from tests.unit.plugins.ifc_support import (
    REG,
    build,
    cfg_of,
    harden,
    region_of,
    sandbox_for,
    state,
    trace,
    translate,
    view_of,
)

STATES = 300

SOURCE = r"""
#include <assert.h>
#include <stdlib.h>

unsigned char out_byte;
int sink;

/* never returns, known only by its CFG: no name of the NORETURN table */
__attribute__((noinline, noipa)) void die(int code)
{
    sink = code;
    exit(code);
}

/* a hex digit's value: -1 for a non-digit, abort() above 15 (nettle_base16's shape) */
__attribute__((noipa)) int digit(int c)
{
    if (c < 0)
        return -1;
    if (c > 15)
        abort();
    out_byte = (unsigned char)(c * 3);
    return c + 1;
}

/* a dead end inside one arm of a diamond: the arms still meet after the if */
__attribute__((noipa)) int arm(int a, int b, int c)
{
    int r;
    if (a & 1) {
        if (b & 2)
            die(b);
        r = a + b;
    } else {
        r = a - b;
    }
    return r * 3 + c;
}

/* assert() in the secret arm, and a trap in the other */
__attribute__((noipa)) int checked(unsigned a, unsigned b)
{
    unsigned r = 0;
    if (a & 1) {
        assert((b & 6) != 6);
        r = a ^ b;
    } else {
        if ((b & 12) == 12)
            __builtin_trap();
        r = a + 7;
    }
    sink = (int)r;
    return (int)(r >> 1);
}

int main(void)
{
    return digit(1) + arm(2, 1, 0) + checked(2, 0);
}
"""

FUNCTIONS = ("digit", "arm", "checked")


@pytest.fixture(scope="module", params=["static", "static-pie"])
def program(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Image:
    directory: Path = tmp_path_factory.mktemp(f"dead-end-{request.param}")
    return build(directory, "dead_end", SOURCE, request.param)


def _small(rng: random.Random) -> int:
    """A small signed value: below 0, a digit, or above 15, about equally often."""
    return rng.randrange(-8, 24)


CHOOSE = {"rdi": _small, "rsi": _small}


def _check(program: Image, function: str) -> tuple[RegionCheck, Rewrite, CodeRegion]:
    sandbox: Sandbox = sandbox_for(program)
    region = region_of(program, function)
    assert any(region.cfg.blocks[b].dead_end for b in region.blocks), region.blocks
    rewrite = harden(IF_CONVERSION, view_of(region, sandbox.bias, "branch"))
    assert isinstance(rewrite, Rewrite), rewrite
    t = translate(sandbox, region, rewrite)
    return RegionCheck(sandbox, region, t, scratch_below_red_zone=True), rewrite, region


def _ends(function: str, s: State) -> bool:
    """Does the original take a dead end from ``s``?"""
    a, b = s.gprs[REG["rdi"]] & 0xFFFFFFFF, s.gprs[REG["rsi"]] & 0xFFFFFFFF
    if function == "digit":
        return 15 < a < 0x80000000
    if function == "arm":
        return bool(a & 1 and b & 2)
    return (b & 6) == 6 if a & 1 else (b & 12) == 12


def test_die_is_known_not_to_return_by_its_cfg(program: Image) -> None:
    assert returns_never(cfg_of(program, "die"))
    assert not returns_never(cfg_of(program, "digit"))


@pytest.mark.parametrize("function", FUNCTIONS)
def test_if_converted_region_with_a_dead_end_computes_what_the_original_computes(
        program: Image, function: str) -> None:
    check, rewrite, _ = _check(program, function)
    code = rewrite.code or ()
    exits = [line for line in code if line.startswith("j") and "@" not in line]
    assert exits and all(line.split()[1].startswith("pe_end") for line in exits), exits
    seeds = [f"dead-end:{function}:{i}" for i in range(STATES)]
    with check:
        report = check.check(seeds, CHOOSE)
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared == STATES
    ended = sum(_ends(function, random_state(random.Random(s), CHOOSE)) for s in seeds)
    assert 30 <= ended <= STATES - 30, ended  # both the dead end and the other paths ran


@pytest.mark.parametrize("function", FUNCTIONS)
def test_paths_that_go_on_run_and_touch_the_same_whatever_the_secret(
        program: Image, function: str) -> None:
    """Two secrets that take different paths, neither a dead end: the same instructions and
    cache lines in the copy (the dead end's test runs, its exit is not taken)."""
    check, _, _ = _check(program, function)
    pairs = {"digit": ((-3, 1), (5, 1)), "arm": ((1, 0), (2, 0)), "checked": ((1, 0), (2, 0))}
    with check:
        states = [state(f"dead-end-leak:{function}", rdi=a, rsi=b)
                  for a, b in pairs[function]]
        assert not any(_ends(function, s) for s in states)
        orig = [trace(check, s, copy=False) for s in states]
        copy = [trace(check, s, copy=True) for s in states]
    assert orig[0][0] != orig[1][0]  # the original's path shows
    assert copy[0] == copy[1] and copy[0][0]
