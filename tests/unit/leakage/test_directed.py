"""Directed trials: which secrets are derived from recorded comparisons (no guest runs)."""

from __future__ import annotations

from leakdbt.leakage.directed import Comparison, derive


def cmp(a: bytes, b: bytes, address: int = 0x1000) -> Comparison:
    return Comparison(address, f"f+{address - 0x1000:#x}", "cmp", (a, b))


def test_the_other_operand_is_copied_where_this_one_is_in_the_secret() -> None:
    secret = bytes(range(10, 42))
    out = derive([(0, (("tag", secret),), [cmp(secret[4:8], b"WXYZ")])], set(), 8, 4)
    values, how = out[0]
    assert values == (("tag", secret[:4] + b"WXYZ" + secret[8:]),)
    assert (how.index, how.parent, how.secret, how.offset, how.length, how.location) == \
        (8, 0, "tag", 4, 4, "f+0x0")
    assert "tag[4:8]" in how.describe()


def test_either_operand_and_big_endian_loads_match() -> None:
    secret = bytes(range(1, 17))
    # the secret's bytes 2..5 compared as a big-endian word, as the second operand
    word = secret[2:6][::-1]
    out = derive([(3, (("k", secret),), [cmp(b"\x11\x22\x33\x44", word)])], set(), 0, 4)
    assert [v for v, _ in out] == [(("k", secret[:2] + b"\x44\x33\x22\x11" + secret[6:]),)]


def test_widest_first_one_per_place_limit_and_no_repeats() -> None:
    secret = bytes(range(100, 132))
    comparisons = [cmp(secret[0:1], b"\x00", 0x1000) for _ in range(3)] \
        + [cmp(secret[:16], b"A" * 16, 0x1010), cmp(secret[0:1], b"\x01", 0x1000)]
    known: set = set()
    done: set = set()
    out = derive([(0, (("t", secret),), comparisons)], known, 0, 2, done)
    assert [(d.location, d.length) for _, d in out] == [("f+0x10", 16), ("f+0x0", 1)]
    assert out[1][0][0][1][0] == 0  # the first comparison at f+0x0 before the other value
    again = derive([(0, (("t", secret),), comparisons)], known, 2, 8, done)
    assert [v[0][1][0] for v, _ in again] == [1]  # only what was not derived yet


def test_equal_or_absent_operands_derive_nothing() -> None:
    secret = b"\xaa" * 8
    assert derive([(0, (("s", secret),), [cmp(b"\x01\x02", b"\x03\x04")])], set(), 0, 4) == []
