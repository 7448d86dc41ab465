"""A region the translator cannot form (leakdbt/dbt/region.py) in ``exec``: a contract that
names its functions stops with the one-line reason (exit status 2); a whole-program contract
runs the region's original code to the end and reports it, on stderr and in ``--stats``
(leakdbt/dbt/dispatch.py, ``Hardener.not_formed``)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO, binary, run_leakdbt, run_native

SECRET = "0123456789abcdef"
# modexp's entry is no loop header: `kind = "loop"` there cannot be formed
REGION = '\n[[protect.region]]\nat = "modexp"\nkind = "loop"\n'
REASON = "modexp: not a loop header: no block that modexp dominates jumps back to it"


def _contract(tmp_path: Path, scoped: bool) -> Path:
    text = (REPO / "contracts" / "ct_modexp.toml").read_text()
    text = re.sub(r"\n\[\[protect\.region\]\]\n.*?(?=\n\[|\Z)", "\n", text, flags=re.S)
    if not scoped:
        text = re.sub(r"\nfunctions = .*\n", "\n", text)
    path = tmp_path / f"ct_modexp-{scoped}.toml"
    path.write_text(text.replace("\n[check]", f"{REGION}\n[check]", 1))
    return path


def test_an_unformed_region_stops_a_scoped_run_and_not_a_whole_program_one(
        built: Path, tmp_path: Path) -> None:
    exe = binary("static", "ct_modexp")
    scoped = run_leakdbt(["exec", "--contract", str(_contract(tmp_path, True)), "--mode",
                          "hardened", exe, SECRET])
    err = scoped.stderr.decode()
    assert scoped.status == 2 and "Traceback" not in err, err
    assert err.strip().splitlines() == [f"leakdbt: {REASON}"], err
    whole = run_leakdbt(["exec", "--contract", str(_contract(tmp_path, False)), "--mode",
                         "hardened", "--stats", exe, SECRET])
    err = whole.stderr.decode()
    assert (whole.status, whole.stdout) == (0, run_native([exe, SECRET]).stdout), err
    assert f"leakdbt: region modexp runs unhardened: translator: {REASON}" in err, err
    assert f"'unhardened': 'translator: {REASON}'" in err, err
