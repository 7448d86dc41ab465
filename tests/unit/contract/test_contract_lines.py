"""The TOML key → line scanner (tomllib reports no line numbers)."""

from __future__ import annotations

import tomllib

from leakdbt.contract.toml_lines import display, key_lines, line_of

DOC = '''\
# a comment line
version = 1
description = """two
lines with "" quotes"""""
[[secret]]
name = "a"   # trailing comment
"quoted.key" = 3
[[secret]]
name = 'b'
x.y.z = [1,
  {a = 1, b = [2, 3]},  # comment inside an array
  "text with , and ] inside",
]
[protect]
adversary = "remote"
[[protect.region]]
at = "main+0x1"
[[protect.region]]
at = "main"
bounds = { symbol = "T", length = 4 }
[check.env]
HOME = "x"
[[protect.extra]]
[protect.extra.sub]
k = 1
'''


def lines() -> dict[str, int]:
    tomllib.loads(DOC)  # the scanner only ever sees valid TOML
    return {display(k): v for k, v in key_lines(DOC).items()}


def test_plain_keys_and_multiline_strings() -> None:
    got = lines()
    assert got["version"] == 2
    assert got["description"] == 3
    assert got["secret[0]"] == 5


def test_arrays_of_tables_are_numbered() -> None:
    got = lines()
    assert got["secret[0].name"] == 6
    assert got['secret[0]."quoted.key"'] == 7
    assert got["secret[1].name"] == 9
    assert got["protect.region[0].at"] == 17
    assert got["protect.region[1].at"] == 19


def test_dotted_keys_arrays_and_inline_tables() -> None:
    got = lines()
    assert got["secret[1].x.y.z"] == 10
    assert got["secret[1].x.y.z[0]"] == 10
    assert got["secret[1].x.y.z[1].b[1]"] == 11
    assert got["secret[1].x.y.z[2]"] == 12
    assert got["protect.region[1].bounds.length"] == 20


def test_sub_tables_and_nested_arrays_of_tables() -> None:
    got = lines()
    assert got["check.env"] == 21
    assert got["check.env.HOME"] == 22
    assert got["protect.extra[0]"] == 23
    assert got["protect.extra[0].sub.k"] == 25


def test_unknown_paths_fall_back_to_the_enclosing_table() -> None:
    table = key_lines(DOC)
    assert line_of(table, ("protect", "region", 1, "kind")) == 18
    assert line_of(table, ("nothing", "here")) == 1


def test_display_quotes_odd_keys() -> None:
    assert display(("check", "env", "A B")) == 'check.env."A B"'
    assert display(("secret", 3, "length")) == "secret[3].length"


def test_literal_multiline_strings_with_brackets() -> None:
    doc = "a = '''\n[not a table]\nk = 1\n'''\nb = 2\n"
    tomllib.loads(doc)
    got = {display(k): v for k, v in key_lines(doc).items()}
    assert got == {"a": 1, "b": 5}
