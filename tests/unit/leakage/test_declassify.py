"""Declassification points in a contract: validated with file:line, and the declassified
view that output-sensitive checking groups trials by."""

from __future__ import annotations

import pytest

from leakdbt.contract import loads
from leakdbt.contract.model import DeclassifyWhen, Location, Output
from leakdbt.errors import ContractError
from leakdbt.leakage.declassify import PointValues, declassified_view

HEAD = ('version = 1\n[[secret]]\nname = "t"\nargv = 1\nlength = 4\n'
        '[protect]\nadversary = "co-resident"\n[check]\ndeclassify = ["stdout"]\n')


def test_a_point_loads() -> None:
    c = loads(HEAD + '[[check.declassify_at]]\nname = "verdict"\nat = "verify"\n'
                     'when = "return"\nregister = "RAX"\nlength = 4\n')
    (p,) = c.check.declassify_at
    assert (p.name, p.at, p.register, p.pointer, p.length, p.when) == \
        ("verdict", Location("verify"), "rax", None, 4, DeclassifyWhen.RETURN)


def test_bad_points_are_reported_with_their_lines() -> None:
    text = HEAD + ('[[check.declassify_at]]\nname = "a"\nat = "f+0x4"\nregister = "rsp"\n'
                   '[[check.declassify_at]]\nname = "a"\nat = "g"\npointer = "rdi"\n'
                   'register = "rax"\n')
    with pytest.raises(ContractError) as info:
        loads(text, "c.toml")
    assert [(line, key) for line, key, _ in info.value.problems] == [
        (13, "check.declassify_at[0].register"), (14, "check.declassify_at[1]")]


def test_the_view_holds_only_what_is_declassified() -> None:
    c = loads(HEAD + '[[check.declassify_at]]\nname = "v"\nat = "f"\npointer = "rdi"\n'
                     'length = 16\n')
    assert c.check.declassify == (Output.STDOUT,)
    a = declassified_view(c, b"ok\n", b"noise", (0, ""), {"v": PointValues(1, [], "ab")})
    b = declassified_view(c, b"ok\n", b"other", (1, ""), {"v": PointValues(1, [], "ab")})
    assert a == b == (("stdout", b"ok\n"), ("v", (1, "ab")))
    assert declassified_view(c, b"ok\n", b"", (0, ""), {}) != a
