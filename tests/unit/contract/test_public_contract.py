"""``public`` on a branch region: the general registers whose values at the region's entry
depend on no secret.  Validated like every region key (each mistake names the key and its
line), carried by the mapping into the parameters of the passes that clone callees as one
string in a fixed register order, and written back by the dump and by analyze's edits."""

from __future__ import annotations

from pathlib import Path

import pytest

from leakdbt.contract import dumps, loads, plan
from leakdbt.contract.edit import RegionEntry, add_regions
from leakdbt.contract.profiles import get_profile
from tests.unit.contract.test_contract_load import minimal, problems, with_region

SKYLAKE = get_profile("intel-skylake")


def test_public_builds_the_model_in_register_order_and_round_trips() -> None:
    c = loads(with_region('kind = "branch"\npublic = ["r12", "RDX", "rax"]\n'))
    region = c.protect.regions[0]
    assert region.public == ("rax", "rdx", "r12")
    assert 'public = ["rax", "rdx", "r12"]\n' in dumps(c)
    assert loads(dumps(c)) == c
    assert loads(with_region('kind = "branch"\npublic = ["rdx", "r12"]\n')) == \
        loads(with_region('kind = "branch"\npublic = ["r12", "rdx"]\n'))


def test_an_empty_list_is_the_same_as_no_key() -> None:
    empty = loads(with_region('kind = "branch"\npublic = []\n'))
    absent = loads(with_region('kind = "branch"\n'))
    assert empty == absent and empty.protect.regions[0].public == ()
    assert "public" not in dumps(empty)


def test_a_region_without_a_kind_may_name_public_registers() -> None:
    got = loads(with_region('public = ["r15", "rbp"]\n')).protect.regions[0].public
    assert got == ("rbp", "r15")


@pytest.mark.parametrize(("body", "line", "key", "message"), [
    ('kind = "table"\npublic = ["rdx"]\n', 14, "public",
     'public lists the registers public at the entry of a region whose callees '
     'if-conversion clones: it needs kind = "branch" (or no kind)'),
    ('kind = "loop"\nbound = 4\npublic = []\n', 15, "public",
     'public lists the registers public at the entry of a region whose callees '
     'if-conversion clones: it needs kind = "branch" (or no kind)'),
    ('kind = "branch"\npublic = "rdx"\n', 14, "public",
     "expected an array of strings, got a string"),
    ('kind = "branch"\npublic = ["rdx", 3]\n', 14, "public[1]",
     "expected a string, got an integer"),
    ('kind = "branch"\npublic = ["rdx", "rsp"]\n', 14, "public[1]",
     "rsp is always public: leave it out"),
    ('kind = "branch"\npublic = ["edx"]\n', 14, "public[0]",
     "unknown register 'edx': use a 64-bit general register other than rsp (rax, rbx, rcx, "
     "rdx, rsi, rdi, rbp, r8, r9, r10, r11, r12, r13, r14, r15)"),
    ('kind = "branch"\npublic = ["xmm0"]\n', 14, "public[0]",
     "unknown register 'xmm0': use a 64-bit general register other than rsp (rax, rbx, rcx, "
     "rdx, rsi, rdi, rbp, r8, r9, r10, r11, r12, r13, r14, r15)"),
    ('kind = "branch"\npublic = ["rdx",\n  "r12", "rdx"]\n', 15, "public[2]",
     "'rdx' is listed twice"),
    ('kind = "branch"\npublik = ["rdx"]\n', 14, "publik",
     "unknown key (did you mean 'public'?)"),
])
def test_public_mistakes_name_the_key_and_line(tmp_path: Path, body: str, line: int, key: str,
                                               message: str) -> None:
    got = problems(tmp_path, with_region(body))
    assert got == [(line, f"protect.region[0].{key}", message)]


def test_the_mapping_gives_public_to_the_passes_that_clone() -> None:
    text = (minimal(protect='adversary = "co-resident"\n').replace(
        'adversary = "remote"\n', "")
        + '\n[[protect.region]]\nat = "f"\nkind = "branch"\npublic = ["r12", "rdx"]\n'
        + '\n[[protect.region]]\nat = "g"\nkind = "branch"\npublic = []\n'
        + '\n[[protect.region]]\nat = "h"\npublic = ["r12", "rdx"]\n')
    p = plan(loads(text), SKYLAKE)
    first, second, third = (rp.passes for rp in p.regions)
    steps = {s.name: s for s in first}
    assert steps["if-conversion"].param("public") == "rdx,r12"
    assert steps["ct-division"].param("public") == "rdx,r12"  # it clones callees too
    assert steps["oblivious-table"].param("public") is None
    assert all(s.param("public") is None for s in second)
    assert {s.name: s.param("public") for s in third}["if-conversion"] == "rdx,r12"
    program_wide = p.step("if-conversion")
    assert program_wide is not None and program_wide.param("public") is None


def test_analyze_entries_write_public_and_add_regions_keeps_it() -> None:
    entry = RegionEntry("f+0x10", "branch", "why", public=("rdx", "r12"))
    assert 'kind = "branch"\npublic = ["rdx", "r12"]\nwhy = "why"\n' in entry.toml()
    text, added = add_regions(minimal(), [entry])
    assert added == [entry]
    assert loads(text).protect.regions[0].public == ("rdx", "r12")
    assert "public" not in RegionEntry("f+0x10", "branch").toml()
