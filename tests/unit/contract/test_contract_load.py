"""Reading contracts: the model built from valid TOML, and one test per class of mistake."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from leakdbt.contract import (
    Adversary,
    ArgvSource,
    Check,
    EnvSource,
    FileSource,
    Location,
    Output,
    PointerSource,
    Policy,
    RegionKind,
    RegisterSource,
    StdinSource,
    SymbolSource,
    TableBounds,
    ValueFormat,
    dumps,
    load,
    loads,
)
from leakdbt.contract.load import parse_location
from leakdbt.errors import ContractError

FULL = """\
version = 1
description = "everything at once"

[[secret]]
name = "pin"
argv = 2
length = 2
format = "decimal"

[[secret]]
name = "body"
stdin = true
offset = 4
length = 16

[[secret]]
name = "keyfile"
file = "key.bin"
length = 8

[[secret]]
name = "token"
env = "TOKEN"
length = 4

[[secret]]
name = "x"
register = "RDI"
function = "f"

[[secret]]
name = "buf"
pointer = "rsi"
function = "libfoo.so:g"
length = 64
why = "the buffer"

[[secret]]
name = "glob"
symbol = "master_key+8"
length = 8

[protect]
adversary = "same-core"
policy = "adaptive"
functions = ["f", "libfoo.so:g"]

[[protect.region]]
at = "f+0x10"
kind = "table"
symbol = "sbox"

[[protect.region]]
at = "0x401000"
kind = "loop"
bound = 16

[[protect.region]]
at = "libfoo.so:g+4"

[check]
trials = 50
seed = 9
args = ["--public"]
stdin = "abc"
env = { LANG = "C" }
declassify = ["stdout", "exit-status"]
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "contract.toml"
    path.write_text(text)
    return str(path)


def problems(tmp_path: Path, text: str) -> list[tuple[int, str, str]]:
    """The (line, key, message) problems of ``text``, checking the file name is reported."""
    path = write(tmp_path, text)
    with pytest.raises(ContractError) as info:
        load(path)
    assert info.value.path == path
    assert all(line.startswith(f"{path}:") for line in info.value.lines())
    assert info.value.exit_status == 2
    return info.value.problems


def minimal(**extra: str) -> str:
    text = 'version = 1\n\n[[secret]]\nname = "s"\nargv = 1\nlength = 4\n'
    text += extra.get("secret", "")
    text += '\n[protect]\nadversary = "remote"\n' + extra.get("protect", "")
    return text + extra.get("tail", "")


def with_region(body: str) -> str:
    """:func:`minimal` with one region at ``f`` whose other keys are ``body``."""
    return minimal(tail=f'\n[[protect.region]]\nat = "f"\n{body}')


# -- the model ------------------------------------------------------------------------------


def test_full_contract_builds_the_model(tmp_path: Path) -> None:
    c = load(write(tmp_path, FULL))
    assert c.version == 1 and c.description == "everything at once"
    sources = [s.source for s in c.secrets]
    assert sources == [
        ArgvSource(2), StdinSource(4), FileSource("key.bin", 0), EnvSource("TOKEN"),
        RegisterSource(Location("f"), "rdi"),
        PointerSource(Location("g", library="libfoo.so"), "rsi"),
        SymbolSource(Location("master_key", 8)),
    ]
    assert [s.length for s in c.secrets] == [2, 16, 8, 4, 8, 64, 8]
    assert [s.format for s in c.secrets] == [
        ValueFormat.DECIMAL, ValueFormat.RAW, ValueFormat.RAW, ValueFormat.HEX,
        ValueFormat.RAW, ValueFormat.RAW, ValueFormat.RAW]
    assert c.secret("buf") is not None and c.secret("buf").why == "the buffer"  # type: ignore[union-attr]
    p = c.protect
    assert (p.adversary, p.policy) == (Adversary.SAME_CORE, Policy.ADAPTIVE)
    assert p.functions == (Location("f"), Location("g", library="libfoo.so"))
    assert [r.kind for r in p.regions] == [RegionKind.TABLE, RegionKind.LOOP, None]
    assert p.regions[0].table == TableBounds(Location("sbox"), None)
    assert p.regions[1].at == Location(absolute=0x401000) and p.regions[1].bound == 16
    assert c.check == Check(trials=50, seed=9, args=("--public",), stdin="abc",
                            env=(("LANG", "C"),),
                            declassify=(Output.STDOUT, Output.EXIT_STATUS))
    assert c.binding is None
    assert c.line("secret[5].why") == 36 and c.line("protect.region[2].kind") == 58


def test_defaults(tmp_path: Path) -> None:
    c = load(write(tmp_path, minimal()))
    assert c.protect.policy is Policy.ALWAYS
    assert c.protect.functions == () and c.protect.regions == ()
    assert c.check == Check(trials=100, seed=0)
    assert c.secrets[0].format is ValueFormat.HEX
    xmm = loads(minimal(secret='[[secret]]\nname = "w"\nregister = "xmm1"\nfunction = "f"\n'))
    assert xmm.secrets[1].length == 16


def test_contract_is_immutable_and_hashable(tmp_path: Path) -> None:
    c = load(write(tmp_path, FULL))
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.version = 2  # type: ignore[misc]
    assert hash(c) == hash(loads(FULL))
    assert c == loads(FULL, path="elsewhere.toml")  # provenance takes no part in equality


def test_round_trip_through_the_writer(tmp_path: Path) -> None:
    c = load(write(tmp_path, FULL))
    text = dumps(c)
    assert loads(text) == c
    assert dumps(loads(text)) == text


def test_render_trial_values() -> None:
    c = loads(FULL)
    pin, body, _, token = c.secrets[:4]
    assert pin.render(b"\x01\x02") == b"00513"
    assert token.render(b"\x9f\x03\xa1\xc7") == b"9f03a1c7"
    assert body.render(bytes(16)) == bytes(16)
    with pytest.raises(ValueError):
        pin.render(b"\x01")


def test_parse_location_forms() -> None:
    assert parse_location("main") == Location("main")
    assert parse_location("main + 0x12") == Location("main", 0x12)
    assert parse_location("f+18") == Location("f", 18)
    assert parse_location("0x401000") == Location(absolute=0x401000)
    assert parse_location("libc.so.6:memcpy+0x4") == Location("memcpy", 4, library="libc.so.6")
    assert str(Location("memcpy", 4, library="libc.so.6")) == "libc.so.6:memcpy+0x4"
    assert isinstance(parse_location("libc.so.6:0x10"), str)
    assert isinstance(parse_location("main-4"), str)


# -- one test per class of mistake -----------------------------------------------------------


def test_syntax_error_reports_tomllib_line(tmp_path: Path) -> None:
    assert problems(tmp_path, 'version = 1\n\n[protect\nadversary = "remote"\n') == [
        (3, "syntax", "Expected ']' at the end of a table declaration (column 9)")]


def test_unknown_key_with_suggestion(tmp_path: Path) -> None:
    got = problems(tmp_path, "colour = 1\n" + minimal(secret="lenght = 4\n",
                                                       tail="colour = 1\n"))
    assert got == [
        (1, "colour", "unknown key (allowed here: version, description, secret, protect, "
                      "check)"),
        (8, "secret[0].lenght", "unknown key (did you mean 'length'?)"),
        (12, "protect.colour", "unknown key (allowed here: adversary, policy, functions, "
                               "region, passes_off)"),
    ]


def test_wrong_type(tmp_path: Path) -> None:
    got = problems(tmp_path, minimal(tail='\n[check]\ntrials = "many"\nargs = "x"\n'))
    assert got == [
        (12, "check.trials", "expected an integer, got a string"),
        (13, "check.args", "expected an array of strings, got a string"),
    ]


def test_boolean_is_not_an_integer(tmp_path: Path) -> None:
    got = problems(tmp_path, minimal(tail="\n[check]\nseed = true\n"))
    assert got == [(12, "check.seed", "expected an integer, got a boolean")]


def test_missing_field(tmp_path: Path) -> None:
    got = problems(tmp_path, '[[secret]]\nargv = 1\n\n[protect]\npolicy = "never"\n')
    assert got == [
        (1, "version", "missing: write version = 1 at the top"),
        (1, "secret[0].name", "missing: every secret needs a name"),
        (1, "secret[0].length", "missing: how many bytes of secret (trial values are this "
                                "long)"),
        (4, "protect.adversary", "missing: whom to fear: remote, co-resident or same-core"),
    ]


def test_missing_tables(tmp_path: Path) -> None:
    assert problems(tmp_path, "version = 1\n") == [
        (1, "secret", "missing: a contract must say what is secret: add at least one "
                      "[[secret]]"),
        (1, "protect", "missing: add a [protect] table with an adversary"),
    ]


def test_table_instead_of_array_of_tables(tmp_path: Path) -> None:
    got = problems(tmp_path, 'version = 1\n[secret]\nname = "s"\n[protect]\n'
                             'adversary = "remote"\n')
    assert got == [(2, "secret", "expected an array of tables: write [[secret]] with two "
                                 "brackets")]


def test_bad_enum_value(tmp_path: Path) -> None:
    got = problems(tmp_path, minimal(protect='policy = "sometimes"\n',
                                     secret='format = "base64"\n'))
    assert got == [
        (7, "secret[0].format", "must be one of hex, decimal, raw; got 'base64'"),
        (11, "protect.policy", "must be one of always, adaptive, never; got 'sometimes'"),
    ]


def test_value_out_of_range(tmp_path: Path) -> None:
    got = problems(tmp_path, minimal(secret="", tail="\n[check]\ntrials = 1\n")
                   .replace("argv = 1", "argv = 0"))
    assert got == [
        (5, "secret[0].argv", "must be between 1 and 4096, got 0"),
        (12, "check.trials", "must be between 2 and 1000000, got 1"),
    ]


def test_unsupported_version(tmp_path: Path) -> None:
    got = problems(tmp_path, minimal().replace("version = 1", "version = 2"))
    assert got == [(1, "version", "unsupported contract version 2; this leakdbt reads "
                                  "version 1")]


def test_bad_symbol_offset_syntax(tmp_path: Path) -> None:
    got = problems(tmp_path, minimal(tail='\n[[protect.region]]\nat = "main+0xZZ"\n\n'
                                          '[[protect.region]]\nat = "libc.so.6:0x10"\n'))
    assert got == [
        (12, "protect.region[0].at", "bad address 'main+0xZZ': write symbol+offset "
                                     "(main+0x12), 0xADDR, or library.so:symbol+offset"),
        (15, "protect.region[1].at", "bad address 'libc.so.6:0x10': an absolute address "
                                     "cannot name a library; write library.so:symbol+offset"),
    ]


def test_secret_source_mistakes(tmp_path: Path) -> None:
    text = """version = 1
[[secret]]
name = "none"
length = 4
[[secret]]
name = "two"
argv = 1
env = "X"
length = 4
[[secret]]
name = "raw-argv"
argv = 2
format = "raw"
length = 4
[[secret]]
name = "p"
pointer = "xmm0"
length = 8
[[secret]]
name = "formatted"
symbol = "k"
length = 8
format = "hex"
offset = 4
[protect]
adversary = "remote"
"""
    assert problems(tmp_path, text) == [
        (2, "secret[0]", "missing where the secret enters: give one of argv, stdin, file, "
                         "env, register, pointer, symbol"),
        (8, "secret[1].env", "a secret enters in one place only: this one already has argv"),
        (13, "secret[2].format", "argv strings cannot hold arbitrary bytes (a NUL ends them): "
                                 "use hex or decimal"),
        (15, "secret[3].function", "missing: a pointer secret needs the function at whose "
                                   "entry it is read"),
        (17, "secret[3].pointer", "unknown register 'xmm0': use a 64-bit general register "
                                  "(rdi, rsi, rdx, rcx, r8, r9, …)"),
        (23, "secret[4].format", "format applies to program inputs (argv, stdin, file, env); "
                                 "a symbol secret is written as raw bytes"),
        (24, "secret[4].offset", 'offset applies only to stdin and file secrets (write '
                                 'symbol = "name+offset")'),
    ]


def test_conflicting_secrets(tmp_path: Path) -> None:
    text = """version = 1
[[secret]]
name = "a"
stdin = true
length = 8
[[secret]]
name = "a"
stdin = true
offset = 4
length = 8
[[secret]]
name = "c"
argv = 3
length = 1
[[secret]]
name = "d"
env = "HOME"
length = 1
[protect]
adversary = "remote"
[check]
env = { HOME = "/root" }
"""
    assert problems(tmp_path, text) == [
        (7, "secret[1].name", "secret 'a' is already defined (secret[0])"),
        (8, "secret[1].stdin", "bytes 4..11 overlap secret[0] (bytes 0..7)"),
        (13, "secret[2].argv", "argv[3] would follow a missing argv[1]: give the public "
                               "arguments in check.args (it has 0) or make argv[1] secret "
                               "too"),
        (17, "secret[3].env", "HOME also has a public value in check.env"),
    ]


def test_region_key_that_needs_another_kind(tmp_path: Path) -> None:
    got = problems(tmp_path, minimal(tail='\n[[protect.region]]\nat = "f"\nkind = "branch"\n'
                                          'bound = 3\n\n[[protect.region]]\nat = "g"\n'
                                          'kind = "table"\nlength = 8\n'))
    assert got == [
        (14, "protect.region[0].bound", 'bound is a loop\'s maximum trip count: it needs '
                                        'kind = "loop"'),
        (19, "protect.region[1].length", "length needs symbol: where the table starts"),
    ]


def test_region_listed_twice(tmp_path: Path) -> None:
    got = problems(tmp_path, minimal(tail='\n[[protect.region]]\nat = "f+0x0"\n'
                                          '\n[[protect.region]]\nat = "f"\n'))
    assert got == [(15, "protect.region[1].at", "the block at f is already protect.region[0]")]


def test_unreadable_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.toml")
    with pytest.raises(ContractError) as info:
        load(path)
    assert info.value.lines() == [f"{path}:1: contract: cannot read: No such file or directory"]


def test_all_problems_of_a_file_at_once(tmp_path: Path) -> None:
    got = problems(tmp_path, 'version = "1"\n[[secret]]\nname = 3\nargv = 1\nlength = 1\n'
                             '[protect]\nadversary = "nobody"\n[check]\ndeclassify = ["time"]\n')
    assert [(line, key) for line, key, _ in got] == [
        (1, "version"), (3, "secret[0].name"), (7, "protect.adversary"),
        (9, "check.declassify[0]")]
    assert got[3][2] == "must be one of stdout, stderr, exit-status, files; got 'time'"


# -- hostile contracts: one-line ContractError, quickly, never an internal error ---------------


def test_offsets_with_leading_zeros_are_decimal() -> None:
    """``+00010`` is ten (never octal, never an error); hex needs ``0x``."""
    assert parse_location("main+00010") == Location("main", 10)
    assert parse_location("main+0x0010") == Location("main", 16)
    assert parse_location("0x00401000") == Location(absolute=0x401000)


def test_offsets_beyond_64_bits_are_refused() -> None:
    """5,000 digits would trip int()'s digit limit: refused by length first."""
    for text in ("main+" + "1" * 5000, "main+" + "9" * 21, "main+0x1" + "0" * 16,
                 "0x1" + "0" * 16):
        problem = parse_location(text)
        assert isinstance(problem, str) and "more than 64 bits" in problem, text
        assert len(problem) < 100
    assert parse_location("main+" + "0" * 30 + "7") == Location("main", 7)
    assert parse_location("main+18446744073709551615") == Location("main", (1 << 64) - 1)


def test_long_offset_in_a_region_names_key_and_line(tmp_path: Path) -> None:
    got = problems(tmp_path, minimal(tail='\n[[protect.region]]\nat = "main+' + "7" * 5000
                                          + '"\n'))
    assert got == [(12, "protect.region[0].at",
                    "bad address main+...: the offset has more than 64 bits")]


@pytest.mark.parametrize("nest", ["[" * 500 + "]" * 500, "{a=" * 500 + "1" + "}" * 500])
def test_deep_nesting_names_the_line(tmp_path: Path, nest: str) -> None:
    got = problems(tmp_path, minimal(tail=f"\nx = {nest}\n"))
    assert got == [(11, "syntax", "arrays or tables nested more than 64 deep")]


def test_nesting_inside_strings_and_comments_does_not_count(tmp_path: Path) -> None:
    text = minimal(tail='\n# ' + "[" * 200 + '\n').replace(
        "version = 1\n", 'version = 1\ndescription = "' + "{" * 200 + '"\n')
    assert load(write(tmp_path, text)).description == "{" * 200


@pytest.mark.parametrize("form", ["[{keys}]\n", "[[{keys}]]\n", "{keys} = 1\n"])
def test_many_dotted_components_are_refused_quickly(tmp_path: Path, form: str) -> None:
    """100,000 components made tomllib (and the line scanner) quadratic: minutes."""
    text = minimal() + form.format(keys=".".join(["a"] * 100_000))
    got = problems(tmp_path, text)
    assert got == [(10, "syntax", "a dotted key with more than 64 components")]


def test_long_runs_of_key_characters_are_scanned_once() -> None:
    """A fuzzed contract with 18,000 repeated digits took 4-13 s: the dotted-key pattern
    backtracked at every position of the run.  Each input here is 600,000 characters; a
    quadratic scan of any of them would not finish within the test run."""
    from leakdbt.contract.toml_lines import shape_problem

    run = "9" * 600_000
    assert shape_problem(f"x = {run}\n") == (1, "a number of more than 100 digits")
    assert shape_problem("a" * 600_000 + " = 1\n") is None
    assert shape_problem("a." * 30 + "b" * 600_000 + " = 1\n") is None
    assert shape_problem('"k" ' * 150_000 + "= 1\n") is None


def test_huge_integer_names_the_line(tmp_path: Path) -> None:
    got = problems(tmp_path, minimal().replace("length = 4", "length = " + "4" * 5000))
    assert got == [(6, "syntax", "a number of more than 100 digits")]
