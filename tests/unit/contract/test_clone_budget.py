"""The predicated-call budget in a contract: ``clone_depth`` / ``clone_insns`` of a
``[[protect.region]]`` are validated like every key, carried by the mapping into the
parameters of the passes that clone callees, and written back by the dump."""

from __future__ import annotations

from pathlib import Path

import pytest

from leakdbt.contract import dumps, loads, plan
from leakdbt.contract.profiles import get_profile
from tests.unit.contract.test_contract_load import minimal, problems, with_region

SKYLAKE = get_profile("intel-skylake")


def test_the_budget_keys_build_the_model_and_round_trip() -> None:
    c = loads(with_region('kind = "branch"\nclone_depth = 3\nclone_insns = 4000\n'))
    region = c.protect.regions[0]
    assert (region.clone_depth, region.clone_insns) == (3, 4000)
    assert "clone_depth = 3\nclone_insns = 4000\n" in dumps(c)
    assert loads(dumps(c)) == c
    plain = loads(with_region('kind = "branch"\n'))
    assert (plain.protect.regions[0].clone_depth, plain.protect.regions[0].clone_insns) == \
        (None, None)
    assert "clone_" not in dumps(plain)


def test_a_region_without_a_kind_may_set_the_budget() -> None:
    assert loads(with_region("clone_depth = 0\n")).protect.regions[0].clone_depth == 0


@pytest.mark.parametrize(("body", "line", "key", "message"), [
    ('kind = "table"\nclone_depth = 3\n', 14, "clone_depth",
     'clone_depth is the budget of the calls if-conversion clones: it needs kind = "branch" '
     '(or no kind)'),
    ('kind = "loop"\nbound = 4\nclone_insns = 30\n', 15, "clone_insns",
     'clone_insns is the budget of the calls if-conversion clones: it needs kind = "branch" '
     '(or no kind)'),
    ('kind = "branch"\nclone_depth = 17\n', 14, "clone_depth", "must be between 0 and 16, got 17"),
    ('kind = "branch"\nclone_insns = 0\n', 14, "clone_insns",
     "must be between 1 and 100000, got 0"),
    ('kind = "branch"\nclone_depth = "2"\n', 14, "clone_depth",
     "expected an integer, got a string"),
    ('kind = "branch"\nclone_depht = 2\n', 14, "clone_depht", "did you mean 'clone_depth'?"),
])
def test_budget_mistakes_name_the_key_and_line(tmp_path: Path, body: str, line: int, key: str,
                                               message: str) -> None:
    got = problems(tmp_path, with_region(body))
    assert len(got) == 1, got
    assert got[0][:2] == (line, f"protect.region[0].{key}")
    assert message in got[0][2], got[0][2]


def test_the_mapping_gives_the_budget_to_the_passes_that_clone() -> None:
    text = (minimal(protect='adversary = "co-resident"\n').replace(
        'adversary = "remote"\n', "")
        + '\n[[protect.region]]\nat = "f"\nkind = "branch"\nclone_depth = 4\n'
        + '\n[[protect.region]]\nat = "g"\nkind = "branch"\nclone_insns = 50\n'
        + '\n[[protect.region]]\nat = "h"\nkind = "branch"\n')
    p = plan(loads(text), SKYLAKE)
    first, second, third = (rp.passes for rp in p.regions)
    steps = {s.name: s for s in first}
    assert steps["if-conversion"].param("clone_depth") == 4
    assert steps["ct-division"].param("clone_depth") == 4  # it rewrites the clones' divisions
    assert steps["oblivious-table"].param("clone_depth") is None
    assert {s.name: s.param("clone_insns") for s in second}["if-conversion"] == 50
    assert all(s.param("clone_depth") is None and s.param("clone_insns") is None
               for s in third)
    program_wide = p.step("if-conversion")
    assert program_wide is not None and program_wide.param("clone_depth") is None
