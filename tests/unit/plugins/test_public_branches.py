"""Public branches in predicated code (plugins/support/public_branches.py): with ``public``
registers declared, a clone's branches on them stay branches.  Differential runs (original
vs hardened, random and chosen states, static and static-pie), the trace is the same for
every secret and differs only with the public value, fewer instructions run than with
every branch if-converted, and a register wrongly declared public shows as a trace that
depends on the secret (what ``check`` reports)."""

from __future__ import annotations

import os
import random

import pytest

from leakdbt.loader.image import Image
from tests.unit.plugins.ifc_support import build, clone_check, count_instructions, state, trace

# ``secret`` is the region's branch; ``mode`` and ``x`` are public.  gcc passes ``mode``
# on in the arm (``mov rsi, rdx``): a clean value the call block keeps for the clone.
SOURCE = r"""
__attribute__((noinline)) unsigned long scale(unsigned long x, unsigned long mode,
                                              unsigned long y) {
    if (mode & 1) {
        x = x * 3 + 1;
        x ^= x >> 7;
        x += mode << 3;
    } else {
        x = x + 5;
    }
    if (mode > 40) {
        x = x * x + 0x9e37;
        x ^= x >> 11;
    }
    if (y > 1000)
        x -= y;
    return x;
}

__attribute__((noinline)) unsigned long region(unsigned long secret, unsigned long x,
                                               unsigned long mode) {
    if (secret & 1)
        x = scale(x, mode, x ^ secret);
    return x + 1;
}

/* The arm computes the callee's public arguments itself. */
__attribute__((noinline)) unsigned long region_args(unsigned long secret, unsigned long x,
                                                    unsigned long mode) {
    if (secret & 1)
        x = scale(x + secret, mode * 3, x);
    return x + 1;
}

/* Nested kept branches, a store to module data and a deeper call on a kept side, a join
   reached from both sides (its predicate slot starts at 0 when a side is skipped). */
unsigned long acc[4];

__attribute__((noinline)) unsigned long helper(unsigned long r, unsigned long mode) {
    if (mode & 16)
        r = r * r + 11;
    return r ^ mode;
}

__attribute__((noinline)) unsigned long deep(unsigned long x, unsigned long mode) {
    unsigned long r = x;
    if (mode & 2) {
        if (mode & 4)
            r = r * 7;
        else
            r += 3;
        acc[0] += r;
    }
    if (mode & 8)
        r = helper(r, mode);
    acc[1] ^= r;
    return r;
}

__attribute__((noinline)) unsigned long region_nested(unsigned long secret, unsigned long x,
                                                      unsigned long mode) {
    if (secret & 1)
        x = deep(x ^ secret, mode + 1);
    else
        acc[2] = x;
    return x + 1;
}

/* No call: the arm's own branches on the public mode (a store keeps it predicated). */
__attribute__((noinline)) unsigned long region_arm(unsigned long secret, unsigned long x,
                                                   unsigned long mode) {
    if (secret & 1) {
        if (mode & 1)
            x = x * 3;
        else
            x += 1;
        acc[3] = x;
        if (mode & 2)
            x ^= 5;
    }
    return x + 1;
}

int main(void) {
    return (int)(region(3, 4, 5) + region_args(3, 4, 5) + region_nested(3, 4, 5)
                 + region_arm(3, 4, 5));
}
"""
PUBLIC = {"public": "rsi,rdx"}  # x and mode; the secret (rdi) is not


@pytest.fixture(scope="module", params=["static", "static-pie"])
def image(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Image:
    return build(tmp_path_factory.mktemp("pb"), "public_branch", SOURCE, request.param)


def _state(seed: str, secret: int, x: int, mode: int) -> object:
    return state(seed, rdi=secret, rsi=x, rdx=mode)


FUNCTIONS = pytest.mark.parametrize("function", ["region", "region_args", "region_nested",
                                                 "region_arm"])


@FUNCTIONS
def test_the_hardened_region_computes_what_the_original_does(image: Image, function: str
                                                             ) -> None:
    check, rewrite = clone_check(image, function, params=PUBLIC)
    assert any(line.startswith("pb_skip") for line in rewrite.code or ())  # branches kept
    with check:
        report = check.check(f"pb:{i}" for i in range(150))
        chosen = check.compare(
            (f"pb-c:{i}", _state(f"pb-c:{i}", i & 1 | (i << 3), i * 977, mode))  # type: ignore[misc]
            for i, mode in enumerate([0, 1, 2, 3, 41, 42, 43, 40, 1001, 7] * 8))
    assert not report.mismatches, report.mismatches[:2]
    assert not chosen.mismatches, chosen.mismatches[:2]
    assert report.compared >= 140 and chosen.compared == 80


@FUNCTIONS
def test_what_runs_depends_on_the_public_mode_only(image: Image, function: str) -> None:
    check, _ = clone_check(image, function, params=PUBLIC)
    with check:
        by_mode = {}
        for mode in (0, 1, 42, 43):
            traces = {trace(check, _state("t", secret, 77, mode), copy=True)  # type: ignore[arg-type]
                      for secret in (0, 1, 2, 3, 0xFFFF, 0x1234567)}
            assert len(traces) == 1, mode  # the same whatever the secret
            by_mode[mode] = traces.pop()
    assert len({t[0] for t in by_mode.values()}) == 4  # the kept branches show the mode


@FUNCTIONS
def test_kept_branches_run_fewer_instructions_than_if_converted_ones(image: Image,
                                                                     function: str) -> None:
    kept, _ = clone_check(image, function, params=PUBLIC)
    converted, rewrite = clone_check(image, function)
    assert not any(line.startswith("pb_skip") for line in rewrite.code or ())
    counts = {}
    for name, check in (("kept", kept), ("converted", converted)):
        with check:
            counts[name] = [count_instructions(check, _state("n", 1, 77, m), copy=True)  # type: ignore[arg-type]
                            for m in (0, 1, 42, 43)]
    assert len(set(counts["converted"])) == 1  # every branch linearised: one count
    assert all(k < c for k, c in zip(counts["kept"], counts["converted"], strict=True)), counts


def test_a_secret_declared_public_shows_in_the_trace(image: Image) -> None:
    """``y = x ^ secret``: with rdi declared public too, ``y > 1000`` stays a branch and
    what runs depends on the secret: the contract's claim is false, and a trace shows it."""
    check, _ = clone_check(image, "region", params={"public": "rsi,rdx,rdi"})
    with check:
        traces = {trace(check, _state("w", secret, 77, 1), copy=True)[0]  # type: ignore[arg-type]
                  for secret in (1, 3, 0x10001, 0x20001)}
    assert len(traces) > 1


# -- random programs ---------------------------------------------------------------------

def _statements(rng: random.Random, depth: int, helpers: list[str]) -> list[str]:
    """Random statements on ``a`` (public at first), ``m`` (public), ``s`` (secret-mixed)."""
    out: list[str] = []
    for _ in range(rng.randint(1, 3)):
        pick = rng.randrange(9 if depth < 3 else 4)
        c1, c2, bit = rng.randrange(3, 999), rng.randrange(1, 60), 1 << rng.randrange(6)
        if pick == 0:
            out.append(f"a = a * {c1}u + {c2}u;")
        elif pick == 1:
            out.append(f"a ^= a >> {c2 % 31 + 1};")
        elif pick == 2:
            out.append(f"a += m << {c2 % 7};")
        elif pick == 3:
            out.append(f"g[{c1 % 4}] += a;")
        elif pick in (4, 5):
            test = rng.choice([f"m & {bit}", f"m > {c1}u", f"a & {bit}", f"s & {bit}"])
            then = " ".join(_statements(rng, depth + 1, helpers))
            other = " ".join(_statements(rng, depth + 1, helpers)) if rng.random() < 0.5 else ""
            out.append(f"if ({test}) {{ {then} }}" + (f" else {{ {other} }}" if other else ""))
        elif pick == 6 and helpers:
            out.append(f"a = {rng.choice(helpers)}(a, m);")
        else:
            out.append(f"s = s * {c1}u + a;")
    return out


def _random_program(seed: int, count: int) -> tuple[str, list[str]]:
    """C source with ``count`` branch regions whose secret arm calls a random callee."""
    rng = random.Random(seed)
    lines = ["unsigned long g[4];"]
    helpers: list[str] = []
    for h in range(3):
        body = " ".join(_statements(rng, 2, []))
        lines.append(f"__attribute__((noinline)) unsigned long helper{h}(unsigned long a, "
                     f"unsigned long m) {{ unsigned long s = 0; {body} return a ^ s; }}")
        helpers.append(f"helper{h}")
    names = []
    for k in range(count):
        first = rng.choice(["m & 1", "m > 99u", "a & 4", "m & 8"])
        body = " ".join([f"if ({first}) {{ {' '.join(_statements(rng, 1, helpers))} }}",
                         *_statements(rng, 0, helpers)])
        c1, c2 = rng.randrange(1, 99), rng.randrange(1, 9)
        lines += [
            f"__attribute__((noinline)) unsigned long callee{k}(unsigned long a, "
            f"unsigned long m, unsigned long s) {{ {body} return a + s; }}",
            f"__attribute__((noinline)) unsigned long random{k}(unsigned long secret, "
            f"unsigned long x, unsigned long mode) {{ if (secret & 1) x = callee{k}(x + {c1}u,"
            f" mode * {c2}u, x ^ secret); else g[0] ^= x; return x + 1; }}"]
        names.append(f"random{k}")
    calls = " + ".join(f"{n}(3, 4, 5)" for n in names)
    lines.append(f"int main(void) {{ return (int)({calls}); }}")
    return "\n".join(lines) + "\n", names


RANDOM_FUNCTIONS = 16
# More programs: LEAKDBT_PUBLIC_SWEEP=N tests N seeds (one by default).
SEEDS = range(15, 15 + int(os.environ.get("LEAKDBT_PUBLIC_SWEEP", "1")))


@pytest.fixture(scope="module", params=SEEDS)
def random_image(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> tuple[Image, list[str]]:
    source, names = _random_program(request.param, RANDOM_FUNCTIONS)
    return build(tmp_path_factory.mktemp("pbr"), "random_public", source), names


ALL_PUBLIC = {"public": "rax,rbx,rcx,rdx,rsi,rdi,rbp,r8,r9,r10,r11,r12,r13,r14,r15"}


@pytest.mark.parametrize("claim", ["true", "false"])
def test_random_programs_compute_what_the_original_does_and_hide_the_secret(
        random_image: tuple[Image, list[str]], claim: str) -> None:
    """Every random region hardens; original and hardened agree on random states (and on
    chosen modes); with the true claim (x and mode public) what runs is the same for
    secrets that differ, for each mode.  With every register declared public, the secret
    too, every branch the scan can keep is kept (what runs then depends on the secret),
    yet the values still agree: a skipped side is one whose predicate is off."""
    image, names = random_image
    kept = 0
    for name in names:
        check, rewrite = clone_check(image, name,
                                     params=PUBLIC if claim == "true" else ALL_PUBLIC)
        kept += sum(1 for line in rewrite.code or () if line.startswith("pb_skip"))
        with check:
            report = check.check(f"{name}:{claim}:{i}" for i in range(40))
            chosen = check.compare((f"{name}-c:{i}", _state(f"c{i}", i, i * 31, m))  # type: ignore[misc]
                                   for i, m in enumerate([0, 1, 7, 64, 65, 1000, 3, 2**40]))
            for mode in (0, 5, 1000) if claim == "true" else ():
                traces = {trace(check, _state("t", secret, 123, mode), copy=True)  # type: ignore[arg-type]
                          for secret in (0, 1, 2, 3, 0x80, 0x81, 0xFFFF0001)}
                assert len(traces) == 1, (name, mode)
        assert not report.mismatches, (name, report.mismatches[:1])
        assert not chosen.mismatches, (name, chosen.mismatches[:1])
        assert report.compared >= 36 and chosen.compared == 8, name
    # public branches were kept, not only if-converted; more of them with the false claim
    assert kept >= (RANDOM_FUNCTIONS if claim == "true" else 2 * RANDOM_FUNCTIONS)
