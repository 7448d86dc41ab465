"""Loading hardening passes: real modules loaded through real entry points, their order, and
the rejection of bad plugins with an error that names them."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from leakdbt.cli import main
from leakdbt.dbt.passes import ENTRY_POINT_GROUP, Candidate, load_passes
from leakdbt.errors import PluginError
from leakdbt.plugin_api import API_VERSION

TEMPLATE = '''
from leakdbt.plugin_api import API_VERSION, Refusal, Rewrite


class _Pass:
    name = {name!r}
    api_version = {version}
    before = {before!r}
    after = {after!r}

    def applies(self, region, contract, profile):
        return True

    def harden(self, region, contract, profile):
        return Rewrite()


PASS = _Pass()
'''


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Iterator[Path]:
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("fakepass_")]:
        del sys.modules[name]


def write(d: Path, module: str, name: str, version: str = "API_VERSION",
          before: tuple[str, ...] = (), after: tuple[str, ...] = ()) -> Candidate:
    """A pass module on disk and the entry point that names it (loaded the real way)."""
    (d / f"{module}.py").write_text(TEMPLATE.format(name=name, version=version,
                                                   before=before, after=after))
    ep = EntryPoint(name=name, value=f"{module}:PASS", group=ENTRY_POINT_GROUP)
    return (f"entry point {ep.name!r} ({ep.value})", ep.load)


def test_order_follows_the_constraints_then_the_names(plugin_dir: Path) -> None:
    cands = [write(plugin_dir, "fakepass_a", "oblivious-table"),
             write(plugin_dir, "fakepass_b", "if-conversion"),
             write(plugin_dir, "fakepass_c", "zeta", before=("if-conversion",)),
             write(plugin_dir, "fakepass_d", "alpha", after=("oblivious-table", "missing"))]
    names = [p.name for p in load_passes(cands)]
    # zeta must precede if-conversion and alpha follow oblivious-table ("missing" is not
    # installed); nothing else is constrained, so of the passes free to go next the first
    # by name goes: oblivious-table (before zeta), alpha (freed by it, before zeta), zeta,
    # if-conversion.
    assert names == ["oblivious-table", "alpha", "zeta", "if-conversion"]
    cands.reverse()
    assert [p.name for p in load_passes(cands)] == names  # not the order they were found


def test_the_built_in_passes_declare_the_order_they_run_in() -> None:
    """Whole functions are replaced first; the passes that shape a region (bounded-loop,
    if-conversion) precede the per-instruction ones that compose with them through
    ``.insn``; FTZ/DAZ wraps what ct-division and oblivious-table leave."""
    loaded = [p for p in load_passes() if "(plugins." in p.origin]
    assert [p.name for p in loaded] == ["ct-equivalent", "bounded-loop", "if-conversion",
                                        "ct-division", "oblivious-table", "fp-ftz-daz"]
    declared = {p.name: p.hardening for p in loaded}

    def declared_before(a: str, b: str) -> bool:
        return b in declared[a].before or a in declared[b].after

    insn_level = ("ct-division", "oblivious-table", "fp-ftz-daz")
    assert all(declared_before("ct-equivalent", n) for n in declared if n != "ct-equivalent")
    assert all(declared_before(w, n) for w in ("bounded-loop", "if-conversion")
               for n in insn_level)
    assert declared_before("ct-division", "fp-ftz-daz")
    assert declared_before("oblivious-table", "fp-ftz-daz")


def test_a_whole_module_may_be_the_entry_point(plugin_dir: Path) -> None:
    write(plugin_dir, "fakepass_m", "ct-division")
    ep = EntryPoint(name="m", value="fakepass_m", group=ENTRY_POINT_GROUP)
    (loaded,) = load_passes([("entry point 'm' (fakepass_m)", ep.load)])
    assert loaded.name == "ct-division" and loaded.origin == "entry point 'm' (fakepass_m)"


def test_wrong_api_version_is_rejected_by_name(plugin_dir: Path) -> None:
    cand = write(plugin_dir, "fakepass_v", "old", version="0")
    with pytest.raises(PluginError) as e:
        load_passes([cand])
    assert str(e.value) == ("entry point 'old' (fakepass_v:PASS): written for plugin API "
                            f"version 0; this leakdbt provides version {API_VERSION}")
    assert API_VERSION == 2  # 2: passes see ContractView/ProfileView (docs/passes.md)


def test_duplicate_names_are_rejected_naming_both(plugin_dir: Path) -> None:
    cands = [write(plugin_dir, "fakepass_x", "same"), write(plugin_dir, "fakepass_y", "same")]
    with pytest.raises(PluginError) as e:
        load_passes(cands)
    assert str(e.value) == ("pass 'same' is defined twice: by entry point 'same' "
                            "(fakepass_x:PASS) and by entry point 'same' (fakepass_y:PASS)")


def test_an_ordering_cycle_is_rejected_naming_the_cycle(plugin_dir: Path) -> None:
    cands = [write(plugin_dir, "fakepass_p", "p", before=("q",)),
             write(plugin_dir, "fakepass_q", "q", before=("r",)),
             write(plugin_dir, "fakepass_r", "r", before=("p",)),
             write(plugin_dir, "fakepass_s", "s", after=("r",)),
             write(plugin_dir, "fakepass_t", "a", before=("p",))]
    with pytest.raises(PluginError) as e:
        load_passes(cands)
    message = str(e.value)
    assert message.startswith("ordering cycle: ")
    assert all(f"'{n}' (entry point '{n}'" in message for n in "pqr")
    assert "'s'" not in message and "'a'" not in message  # after / before it, not in it


def test_not_a_pass_and_broken_imports_are_rejected(plugin_dir: Path) -> None:
    (plugin_dir / "fakepass_half.py").write_text(
        f"class P:\n    name = 'half'\n    api_version = {API_VERSION}\n    before = ()\n"
        "    after = ()\nPASS = P()\n")
    (plugin_dir / "fakepass_broken.py").write_text("import no_such_module_here\n")
    (plugin_dir / "fakepass_none.py").write_text("X = 1\n")
    cases = {
        "fakepass_half:PASS": "not a hardening pass (missing applies, harden)",
        "fakepass_broken": "cannot be loaded: ModuleNotFoundError",
        "fakepass_none": "defines no PASS",
    }
    for value, expected in cases.items():
        ep = EntryPoint(name="x", value=value, group=ENTRY_POINT_GROUP)
        with pytest.raises(PluginError) as e:
            load_passes([(f"entry point 'x' ({value})", ep.load)])
        assert str(e.value).startswith(f"entry point 'x' ({value}): {expected}")


def test_passes_command_lists_the_installed_order(capsys: pytest.CaptureFixture[str]) -> None:
    main(["passes"])
    out = capsys.readouterr().out
    installed = load_passes()
    if installed:
        assert out.splitlines()[0].startswith(f"1. {installed[0].name}  (entry point ")
    else:
        assert out == "no hardening passes installed\n"
