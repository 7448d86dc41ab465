"""``protect.passes_off``: one meaning for every command.  A pass named there is left out of
every region's plan (exec and check harden without it, analyze suggests no region only it
accepts); a name the mapping does not know is a contract error at its line (status 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from leakdbt.analysis.functions import function_regions
from leakdbt.cli import main
from leakdbt.contract import dumps, load, loads, plan
from leakdbt.contract.explain import explain_text
from leakdbt.contract.mapping import SWITCHED_OFF
from leakdbt.contract.profiles import get_profile
from leakdbt.errors import ContractError
from leakdbt.leakage.trials import Place
from leakdbt.loader.elf import load_image
from tests.conftest import binary

PROFILE = get_profile("intel-skylake")
REPO = Path(__file__).resolve().parents[3]


def contract_text(protect: str = "", regions: str = "") -> str:
    return ('version = 1\n[[secret]]\nname = "k"\nargv = 1\nlength = 4\n'
            f'[protect]\nadversary = "co-resident"\n{protect}{regions}')


FUNCTION_REGION = '[[protect.region]]\nat = "f"\nkind = "function"\n'
BRANCH_REGION = '[[protect.region]]\nat = "g"\nkind = "branch"\n'


def test_a_switched_off_pass_is_in_no_plan_and_says_why() -> None:
    on = plan(loads(contract_text(regions=FUNCTION_REGION + BRANCH_REGION)), PROFILE)
    assert [s.name for s in on.regions[0].passes] == ["ct-equivalent"]
    off = loads(contract_text('passes_off = ["ct-equivalent", "ct-division"]\n',
                              FUNCTION_REGION + BRANCH_REGION))
    assert off.protect.passes_off == ("ct-equivalent", "ct-division")
    p = plan(off, PROFILE)
    assert p.regions[0].passes == ()
    assert [(s.name, s.reason) for s in p.regions[0].skipped] == [
        ("ct-equivalent", SWITCHED_OFF)]
    assert [s.name for s in p.regions[1].passes] == [
        "if-conversion", "oblivious-table", "fp-ftz-daz"]
    assert ("ct-division", SWITCHED_OFF) in [(s.name, s.reason) for s in p.skipped]
    assert "ct-division" not in [s.name for s in p.passes]
    assert ("not applied: ct-equivalent - switched off by protect.passes_off"
            in explain_text(p))
    # the scope plan (no region named) leaves it out too
    scope = plan(loads(contract_text('passes_off = ["if-conversion"]\n')), PROFILE).scope
    assert scope is not None and "if-conversion" not in [s.name for s in scope.passes]


def test_passes_off_survives_the_writer() -> None:
    c = loads(contract_text('passes_off = ["ct-equivalent"]\n'))
    text = dumps(c)
    assert 'passes_off = ["ct-equivalent"]' in text
    assert loads(text).protect.passes_off == ("ct-equivalent",)


@pytest.mark.parametrize(("value", "message"), [
    ('["ct-equivalnt"]', "no pass is named 'ct-equivalnt' (did you mean 'ct-equivalent'?)"),
    ('["zzz"]', "no pass is named 'zzz' (known: ct-equivalent, bounded-loop, if-conversion, "
                "ct-division, oblivious-table, fp-ftz-daz)"),
    ('["if-conversion", "if-conversion"]', "'if-conversion' is listed twice"),
])
def test_unknown_or_repeated_names_are_errors_at_their_line(
        tmp_path: Path, value: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(contract_text(f"passes_off = {value}\n"))
    with pytest.raises(ContractError) as info:
        load(str(path))
    assert info.value.exit_status == 2
    ((line, key, text),) = info.value.problems
    assert (line, text) == (8, message)
    assert key.startswith("protect.passes_off[")


def test_every_command_rejects_a_bad_name_in_one_line(
        tmp_path: Path, built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text(contract_text('passes_off = ["nope"]\n'))
    for command in ("exec", "check", "analyze"):
        with pytest.raises(SystemExit) as e:
            main([command, "--contract", str(path), binary("static", "hello")])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert "protect.passes_off[0]: no pass is named 'nope'" in err


def test_analyze_suggests_no_whole_function_region_for_a_switched_off_pass(
        built: Path) -> None:
    path = binary("static", "sodium_verify")
    image = load_image(path)
    func = image.symbol("__memcmp_sse2")
    assert func is not None
    place = Place(func.value + 0xb5, "sodium_verify", path, func.value + 0xb5,
                  "__memcmp_sse2+0xb5", True)
    on = function_regions([place], loads(contract_text()), PROFILE)
    assert list(on) == ["__memcmp_sse2"]
    off = loads(contract_text('passes_off = ["ct-equivalent"]\n'))
    assert function_regions([place], off, PROFILE) == {}


def test_exec_names_the_switched_off_pass_when_a_region_is_left_without_one(
        tmp_path: Path, built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (REPO / "contracts" / "sodium_verify_memcmp.toml").read_text()
    text = text.replace('functions = ["__memcmp_sse2"]\n',
                        'functions = ["__memcmp_sse2"]\npasses_off = ["ct-equivalent"]\n')
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(SystemExit) as e:
        main(["exec", "--contract", str(path), "--mode", "hardened",
              binary("static", "sodium_verify"), "00" * 32, "memcmp"])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert ("region __memcmp_sse2 cannot be hardened: no pass applies (ct-equivalent: "
            "switched off by protect.passes_off)") in err
