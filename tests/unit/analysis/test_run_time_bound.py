"""leakdbt.analysis.loops.run_time_bound: the bound a loop's own public exit test gives,
read from the code — a stepped pointer against a fixed end (always), a register counted
down to zero (``counted``: only where no trip count was measured) — and none when that test
is a secret branch, the limit changes, or the test is elsewhere; bounded-loop accepts what
it writes."""

from __future__ import annotations

import pytest

from leakdbt.analysis.loops import run_time_bound
from leakdbt.dbt.region import CodeRegion
from leakdbt.loader.image import Image
from leakdbt.plugin_api import Rewrite
from plugins.bounded_loop import PASS
from tests.unit.plugins.ifc_support import build, harden, region_of, view_of

SOURCE = r"""
__attribute__((noinline)) long skip(const unsigned char *p, const unsigned char *end) {
    while (p != end) { unsigned char c = *p++; if (c == 0x2a) return end - p; }
    return -1;
}
__attribute__((noinline, optimize("no-tree-ch")))
long sum8(const long *p, const long *end) {
    long s = 0;
    for (; p != end; p++) { if (*p < 0) break; s += *p; }
    return s;
}
__attribute__((noinline)) long lastdiff(const long *a, const long *b, unsigned long n) {
    while (n > 0) { if (a[n - 1] != b[n - 1]) return (long)n; n--; }
    return 0;
}
__attribute__((noinline)) int mpncmp(const long *a, const long *b, long n) {
    while (--n >= 0) { if (a[n] != b[n]) return a[n] > b[n] ? 1 : -1; }
    return 0;
}
/* the end moves: no run-time bound */
__attribute__((noinline)) long shrink(const unsigned char *p, const unsigned char *end) {
    while (p != end) { if (*p++ == 0x2a) return end - p; if (end[-1] == 0) end--; }
    return -1;
}
int main(void) { return 0; }
"""
WANT = {"skip": ("rsi - rdi", "rsi - rdi"), "sum8": ("(rsi - rdi) / 8", "(rsi - rdi) / 8"),
        "lastdiff": (None, "rdx"), "mpncmp": (None, "rdx"), "shrink": (None, None)}


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Image:
    return build(tmp_path_factory.mktemp("rtb"), "rtb", SOURCE)


def _loop(program: Image, name: str) -> CodeRegion:
    return region_of(program, name, loop=True)


@pytest.mark.parametrize("name", sorted(WANT))
def test_the_bound_the_exit_test_gives(program: Image, name: str) -> None:
    loop = _loop(program, name)
    assert run_time_bound(loop) == WANT[name][0]
    assert run_time_bound(loop, counted=True) == WANT[name][1]


@pytest.mark.parametrize("name", ["skip", "sum8", "lastdiff", "mpncmp"])
def test_bounded_loop_accepts_what_analyze_writes(program: Image, name: str) -> None:
    loop = _loop(program, name)
    bound = run_time_bound(loop, counted=True)
    rewrite = harden(PASS, view_of(loop, 0, "loop", {"bound": bound}))  # type: ignore[dict-item]
    assert isinstance(rewrite, Rewrite), rewrite


def test_a_secret_test_gives_none(program: Image) -> None:
    """The header's branch is the secret one (taint said so): its operands are secret."""
    loop = _loop(program, "skip")
    head = loop.cfg.blocks[loop.entry]
    assert run_time_bound(loop, {head.last.address}) is None
    latch = _loop(program, "lastdiff")
    tests = {b.last.address for b in latch.block_list() if b.start != latch.entry}
    assert run_time_bound(latch, tests, counted=True) is None

