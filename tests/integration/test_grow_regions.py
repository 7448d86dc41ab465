"""Region growing end to end (leakdbt/analysis/grow.py): a refused suggestion grows into a
region a pass accepts, which then hardens the program; a region nothing accepts is written
with a comment and counted; and exec runs it unhardened in a whole-program contract.

ct_modexp's secret branch (the exponent bit, inside the 64-iteration loop of modexp) is
refused as a branch region when the contract switches if-conversion off; the enclosing loop,
hardened by bounded-loop with the bound the run measured, is accepted."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from leakdbt.contract import load
from leakdbt.contract.profiles import get_profile
from leakdbt.run.protect import protection, verdicts
from tests.conftest import REPO, binary, run_leakdbt, run_native

PROFILE = "intel-skylake"
SECRETS = ["0123456789abcdef", "ffffffff00000001", "8000000000000000", "0000000000000000",
           "fedcba9876543210"]


def _contract(tmp_path: Path, passes_off: list[str], scoped: bool = True,
              region: str = "") -> Path:
    """ct_modexp's contract without its regions, with ``passes_off``."""
    text = (REPO / "contracts" / "ct_modexp.toml").read_text()
    text = re.sub(r"\n\[\[protect\.region\]\]\n.*?(?=\n\[|\Z)", "\n", text, flags=re.S)
    if not scoped:
        text = re.sub(r"\nfunctions = .*\n", "\n", text)
    off = ", ".join(f'"{p}"' for p in passes_off)
    text = text.replace("[protect]\n", f"[protect]\npasses_off = [{off}]\n", 1)
    text = text.replace("\n[check]", f"{region}\n[check]", 1)
    path = tmp_path / "ct_modexp.toml"
    path.write_text(text)
    return path


def test_a_refused_branch_grows_into_its_loop_which_hardens(built: Path,
                                                            tmp_path: Path) -> None:
    exe = binary("static", "ct_modexp")
    contract = _contract(tmp_path, ["if-conversion"])
    out = run_leakdbt(["analyze", "--contract", str(contract), "--write", "--cpu", PROFILE,
                       "--format", "json", exe])
    assert out.status == 0, out.stderr.decode()
    data = json.loads(out.stdout)
    assert data["counts"] == {"regions": 1, "written": 1, "grown": 1, "refused": 0}
    (growth,) = data["growth"]
    assert growth["suggested"] == {"at": "modexp+0x20", "kind": "branch"}
    assert [(a["step"], a["at"], a["kind"], a["accepted"]) for a in growth["attempts"]] == [
        ("suggested", "modexp+0x20", "branch", False),
        ("enclosing loop", "modexp+0x20", "loop", True)]
    # if-conversion is off: only ct-division applied, the branch would stay
    assert "no pass for a branch region applied (applied: ct-division)" in \
        growth["attempts"][0]["reason"]
    regions = tomllib.loads(contract.read_text())["protect"]["region"]
    assert [(r["at"], r["kind"], r["bound"]) for r in regions] == [("modexp+0x20", "loop", 64)]
    for secret in SECRETS:
        hardened = run_leakdbt(["exec", "--contract", str(contract), "--mode", "hardened",
                                "--cpu", PROFILE, "--stats", exe, secret])
        assert (hardened.status, hardened.stdout) == (0, run_native([exe, secret]).stdout)
        assert "{'passes': ['bounded-loop', 'ct-division']}" in hardened.stderr.decode()
    text = run_leakdbt(["analyze", "--contract", str(_contract(tmp_path, ["if-conversion"])),
                        "--cpu", PROFILE, exe]).stdout.decode()
    assert "  region modexp+0x20 kind branch refused (no pass for a branch region applied " \
        "(applied: ct-division)): grown to modexp+0x20 kind loop" in text, text
    assert "  regions: 1 suggested, 0 written, 1 grown, 0 refused (no pass accepts them)" \
        in text, text


def test_a_region_nothing_accepts_is_written_with_a_comment_and_counted(
        built: Path, tmp_path: Path) -> None:
    exe = binary("static", "ct_modexp")
    contract = _contract(tmp_path, ["if-conversion", "bounded-loop"])
    out = run_leakdbt(["analyze", "--contract", str(contract), "--write", "--cpu", PROFILE,
                       exe])
    assert out.status == 0, out.stderr.decode()
    text = out.stdout.decode()
    assert "  regions: 1 suggested, 1 written, 0 grown, 1 refused (no pass accepts them)" \
        in text, text
    assert "    no pass accepts it: suggested modexp+0x20: no pass for a branch region " \
        "applied" in text, text
    written = contract.read_text()
    comment = re.search(r"((?:# .*\n)+)\[\[protect\.region\]\]\nat = \"modexp\+0x20\"\n"
                        r"kind = \"branch\"", written)
    assert comment is not None, written
    said = " ".join(line[2:] for line in comment.group(1).splitlines())
    assert said.startswith("leakdbt analyze: no pass accepts this region, nor any region "
                           "grown around it (suggested, enclosing loop, whole function, "
                           "call site): suggested modexp+0x20: no pass for a branch region "
                           "applied (applied: ct-division); enclosing loop modexp+0x20: "
                           "no pass for a loop region applied"), said
    assert "call site: no branch region of main holds its call to modexp" in said, said
    bound = load(contract, binary=exe)  # the contract still loads
    (v,) = verdicts(protection(bound, get_profile(PROFILE)))
    assert v.name == "modexp+0x20" and v.passes == ("ct-division",)


def test_exec_runs_a_refused_region_unhardened_in_a_whole_program_contract(
        built: Path, tmp_path: Path) -> None:
    """What cannot be hardened is reported (stderr, --stats) and runs as it is; --strict, or
    a contract that names its functions, makes it the one-line error."""
    exe = binary("static", "ct_modexp")
    region = '[[protect.region]]\nat = "modexp+0x20"\nkind = "branch"\n'
    off = ["if-conversion", "bounded-loop", "ct-division"]
    whole = _contract(tmp_path, off, scoped=False, region=region)
    reason = ("no pass applies (if-conversion: switched off by protect.passes_off; "
              "ct-division: switched off by protect.passes_off; oblivious-table: does not "
              "apply; fp-ftz-daz: does not apply)")
    (v,) = verdicts(protection(load(whole, binary=exe), get_profile(PROFILE)))
    assert (v.accepted, v.reason) == (False, reason)  # analyze's verdict is exec's
    for secret in SECRETS[:3]:
        run = run_leakdbt(["exec", "--contract", str(whole), "--mode", "hardened", "--cpu",
                           PROFILE, "--stats", exe, secret])
        assert (run.status, run.stdout) == (0, run_native([exe, secret]).stdout)
        err = run.stderr.decode()
        assert err.splitlines()[0] == f"leakdbt: region modexp+0x20 runs unhardened: {reason}"
        assert f"'unhardened': '{reason}'" in err, err
    strict = run_leakdbt(["exec", "--contract", str(whole), "--mode", "hardened", "--cpu",
                          PROFILE, "--strict", exe, SECRETS[0]])
    assert strict.status == 2 and strict.stdout == b""
    assert strict.stderr.decode().splitlines() == [
        f"leakdbt: region modexp+0x20 cannot be hardened: {reason} (--allow-unhardened runs "
        "it anyway)"]
    scoped = _contract(tmp_path, off, region=region)
    refused = run_leakdbt(["exec", "--contract", str(scoped), "--mode", "hardened", "--cpu",
                           PROFILE, exe, SECRETS[0]])
    assert refused.status == 2 and "cannot be hardened" in refused.stderr.decode()
