"""Suite files: defaults, relative paths and globs expand to entries; every problem is
reported with its line (docs/suite.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from leakdbt.errors import SuiteError
from leakdbt.leakage.suite_file import parse_suite


def test_defaults_relative_paths_and_globs_expand_to_entries(tmp_path: Path) -> None:
    for name in ("aes_a", "aes_b", "rsa"):
        (tmp_path / name).write_bytes(b"\x7fELF")
    (tmp_path / "c.toml").write_text("")
    text = ('version = 1\n[defaults]\ncontract = "c.toml"\ntrials = 5\n'
            '[[entry]]\nname = "aes"\nbinary = "aes_*"\nmode = "both"\n'
            '[[entry]]\nbinary = "rsa"\nargs = ["1"]\ntrials = 3\ncpu = "generic"\n')
    entries = parse_suite(text, str(tmp_path / "suite.toml"))
    assert [e.name for e in entries] == ["aes: aes_a", "aes: aes_b", "rsa"]
    assert entries[0].binary == str(tmp_path / "aes_a")
    assert entries[0].contract == str(tmp_path / "c.toml")
    assert entries[0].modes == ("original", "hardened") and entries[2].modes == ("original",)
    assert [e.trials for e in entries] == [5, 5, 3]
    assert entries[2].args == ("1",) and entries[0].args is None
    assert entries[2].cpu == "generic" and entries[2].line == 9


def test_every_problem_is_reported_with_its_line(tmp_path: Path) -> None:
    text = ('version = 2\nextra = 1\n[[entry]]\nbinary = "missing*"\ncontract = "c.toml"\n'
            'trials = 1\n[[entry]]\nmode = "fast"\n')
    (tmp_path / "c.toml").write_text("")
    with pytest.raises(SuiteError) as e:
        parse_suite(text, "s.toml")
    assert e.value.lines() == [
        "s.toml:1: version: must be 1",
        "s.toml:2: extra: unknown key (expected version, defaults, entry)",
        "s.toml:6: entry[0].trials: must be an integer of at least 2",
        "s.toml:7: entry[1]: missing key binary",
        "s.toml:8: entry[1].mode: must be one of original, hardened, both",
    ]


def test_a_syntax_error_has_its_line() -> None:
    with pytest.raises(SuiteError) as e:
        parse_suite("version = 1\n[[entry]\n", "s.toml")
    assert e.value.lines()[0].startswith("s.toml:2: syntax:")
