"""docs/contracts.md and contracts/*.toml against the code: they cannot drift apart.

Every ``toml`` block of the document is a complete contract that must validate and survive a
round trip through the writer; the ``toml invalid`` block must give exactly the errors the
document shows; every ``console`` block with output must print exactly that output.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from leakdbt.contract import dumps, load, loads
from leakdbt.contract.commands import contract
from leakdbt.contract.profiles import all_profiles

REPO = Path(__file__).resolve().parents[3]
DOC = REPO / "docs" / "contracts.md"
CONTRACTS = sorted((REPO / "contracts").glob("*.toml"))
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```$", re.M | re.S)


def blocks() -> list[tuple[str, str, str]]:
    """(language, rest of the info string, body) of every fenced block of the document."""
    return [(m.group(1), m.group(2).strip(), m.group(3)) for m in FENCE.finditer(DOC.read_text())]


def toml_examples() -> list[str]:
    return [body for lang, info, body in blocks() if lang == "toml" and info != "invalid"]


def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        return CliRunner()


def write_named_examples(directory: Path) -> None:
    """Write every example that starts with ``# file: NAME`` into ``directory``."""
    for lang, _, body in blocks():
        m = re.match(r"# file: (\S+)\n", body)
        if lang == "toml" and m:
            (directory / m.group(1)).write_text(body)


def test_document_has_an_example_per_feature() -> None:
    text = "\n".join(toml_examples())
    for key in ("argv =", "stdin = true", "file =", "env =", "register =", "pointer =",
                "symbol =", 'kind = "table"', 'kind = "branch"', 'kind = "divide"',
                'kind = "loop"', 'kind = "float"', "functions =", "declassify =", "args =",
                'at = "0x', '.so:', "[[check.declassify_at]]", 'when = "return"',
                'policy = "adaptive"', 'format = "decimal"'):
        assert key in text, f"no example uses {key}"
    assert len(toml_examples()) >= 9


@pytest.mark.parametrize("index", range(len(toml_examples())))
def test_document_example_round_trips(index: int) -> None:
    c = loads(toml_examples()[index], path=f"docs/contracts.md example {index + 1}")
    assert loads(dumps(c)) == c
    assert dumps(loads(dumps(c))) == dumps(c)


@pytest.mark.parametrize("path", CONTRACTS, ids=lambda p: p.name)
def test_example_contract_round_trips(path: Path) -> None:
    c = load(path)
    assert loads(dumps(c)) == c


def test_there_is_a_contract_per_test_program() -> None:
    names = {p.stem for p in CONTRACTS}
    assert {"modexp", "region_loop", "sha256", "hello"} <= names
    for name in names:  # NAME.toml, or NAME_MODE.toml for one mode of a program
        assert any((REPO / "test_binaries" / f"{n}.c").exists()
                   for n in (name, name.rsplit("_", 1)[0])), name


def test_console_examples_print_what_the_document_shows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_named_examples(tmp_path)
    monkeypatch.chdir(tmp_path)
    checked = 0
    for lang, _, body in blocks():
        if lang != "console" or not body.startswith("$ leakdbt contract "):
            continue
        command, _, expected = body.partition("\n")
        if not expected:
            continue  # a command shown without its output
        args = shlex.split(command)[3:]
        result = runner().invoke(contract, args)
        if expected.splitlines()[0].startswith(args[1] + ":"):  # errors go to stderr
            assert result.exit_code == 2
            assert result.stderr == expected
        else:
            assert result.exit_code == 0, result.stderr
            assert result.stdout == expected
        checked += 1
    assert checked >= 2


def test_invalid_example_is_followed_by_its_errors() -> None:
    kinds = [(lang, info) for lang, info, _ in blocks()]
    i = kinds.index(("toml", "invalid"))
    assert kinds[i + 1][0] == "console"


def test_profile_table_lists_every_shipped_profile() -> None:
    text = DOC.read_text()
    for profile in all_profiles():
        assert f"| `{profile.name}`" in text
        for match in profile.cpuid:
            family = str(match.family) if match.family < 10 else hex(match.family)
            models = " ".join(f"0x{m:02X}" for m in match.models)
            assert f"{match.vendor} {family}: {models}" in text, profile.name
