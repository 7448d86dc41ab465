"""A region the translator cannot form (leakdbt/dbt/region.py) in ``exec``: a contract that
names its functions stops with the one-line reason (exit status 2); a whole-program contract
runs the region's original code to the end and reports it, on stderr and in ``--stats``
(leakdbt/dbt/dispatch.py, ``Hardener.not_formed``), unless ``--strict``: then it stops as the
scoped one does."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from leakdbt.contract import load
from leakdbt.contract.profiles import get_profile
from leakdbt.dbt.calls import Linker, ResolveLater
from leakdbt.dbt.dispatch import Mode
from leakdbt.dbt.harden import Hardener, RegionNeeds
from leakdbt.dbt.region import CodeRegion, RegionError
from leakdbt.dbt.relocate import Translation
from leakdbt.loader.image import Image
from leakdbt.run.protect import protection
from leakdbt.run.session import ExecOptions, execute
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
    # --strict: the same whole-program contract stops as a scoped one does
    strict = run_leakdbt(["exec", "--contract", str(_contract(tmp_path, False)), "--mode",
                          "hardened", "--strict", exe, SECRET])
    err = strict.stderr.decode()
    assert strict.status == 2 and err.strip().splitlines() == [f"leakdbt: {REASON}"], err


class _Uncopyable(Hardener):
    """A hardener for which no region's code can be copied (as if relocation failed even
    for its original code)."""

    def translate(self, region: CodeRegion, needs: RegionNeeds, bias: int,
                  place: Callable[[int], int] | int, image: Image | None = None,
                  linker: Linker | None = None) -> Translation:
        raise RegionError(f"{region.name}: its code cannot be laid out (test)")


def test_a_region_whose_code_cannot_be_copied_runs_where_it_is(
        built: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The dispatcher: a region formed but not copied into the cache stops a run that does
    not allow unhardened regions, and is recorded (one outcome) and left to run its original
    code in place when they are allowed."""
    exe = binary("static", "region_loop")
    protected = protection(load(REPO / "contracts" / "region_loop.toml", binary=exe),
                           get_profile("intel-skylake"))

    def run(allow: bool) -> tuple[int, Hardener]:
        hardener = _Uncopyable(protected.passes, protected.contract, protected.profile, allow)
        options = ExecOptions(argv=[exe, "1000"], env=[], regions=protected.regions,
                              mode=Mode.HARDENED, hardener=hardener)
        return execute(exe, options).exit_status, hardener

    with pytest.raises(RegionError, match=r"^tiny_region: its code cannot be laid out"):
        run(False)
    status, hardener = run(True)
    assert status == 0
    assert capfd.readouterr().out.encode() == run_native([exe, "1000"]).stdout
    assert hardener.report() == {"tiny_region": {
        "passes": [], "unhardened": "translator: tiny_region: its code cannot be laid out "
                                    "(test)"}}


class _UncopyableWhenRunning(Hardener):
    """Puts the region off to its first entry (as for calls through a GOT not yet bound),
    then cannot copy its code; counts its calls."""

    calls = 0

    def translate(self, region: CodeRegion, needs: RegionNeeds, bias: int,
                  place: Callable[[int], int] | int, image: Image | None = None,
                  linker: Linker | None = None) -> Translation:
        self.calls += 1
        if linker is not None and not linker.running:
            raise ResolveLater(f"{region.name}: put off (test)")
        raise RegionError(f"{region.name}: its code cannot be laid out (test)")


def test_a_region_put_off_to_its_first_entry_and_not_copied_then_runs_where_it_is(
        built: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The same at the region's first entry (leakdbt.dbt.dispatch._at_first_entry): it is
    tried once, recorded once, and the program runs on through the original code."""
    exe = binary("static", "region_loop")
    protected = protection(load(REPO / "contracts" / "region_loop.toml", binary=exe),
                           get_profile("intel-skylake"))
    hardener = _UncopyableWhenRunning(protected.passes, protected.contract, protected.profile,
                                      True)
    options = ExecOptions(argv=[exe, "1000"], env=[], regions=protected.regions,
                          mode=Mode.HARDENED, hardener=hardener)
    assert execute(exe, options).exit_status == 0
    assert capfd.readouterr().out.encode() == run_native([exe, "1000"]).stdout
    assert hardener.calls == 2  # put off at loading, tried at the first of 1000 entries
    assert hardener.report() == {"tiny_region": {
        "passes": [], "unhardened": "translator: tiny_region: its code cannot be laid out "
                                    "(test)"}}
