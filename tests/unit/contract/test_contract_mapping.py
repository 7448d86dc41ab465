"""Security terms → mechanisms: observers per adversary and CPU, passes, parameters."""

from __future__ import annotations

import dataclasses

import pytest

from leakdbt.contract import PASS_KIND, Observer, Policy, loads, plan
from leakdbt.contract.mapping import KIND_CONDITION, observers
from leakdbt.contract.model import Adversary, RegionKind
from leakdbt.contract.profiles import Fact, Profile, get_profile

SKYLAKE = get_profile("intel-skylake")
GRACEMONT = get_profile("intel-gracemont")


def contract(adversary: str, regions: str, policy: str = "always") -> str:
    return (f'version = 1\n[[secret]]\nname = "k"\nargv = 1\nlength = 8\n'
            f'[protect]\nadversary = "{adversary}"\npolicy = "{policy}"\n{regions}')


TABLE = '[[protect.region]]\nat = "f+4"\nkind = "table"\nsymbol = "sbox"\nlength = 256\n'
ALL_KINDS = "".join(
    f'[[protect.region]]\nat = "f+{i}"\nkind = "{kind}"\n'
    for i, kind in enumerate(["float", "table", "divide", "branch", "loop"])
) + '[[protect.region]]\nat = "g"\nkind = "loop"\nbound = 32\n' \
    '[[protect.region]]\nat = "h"\nkind = "function"\n'


def with_latency(profile: Profile, cls: str, variable: bool) -> Profile:
    latency = tuple((c, Fact(variable, "documented", "x") if c == cls else f)
                    for c, f in profile.latency)
    return dataclasses.replace(profile, name=f"{profile.name}-test", latency=latency)


@pytest.mark.parametrize(("adversary", "profile", "seen"), [
    (Adversary.REMOTE, SKYLAKE, {"time"}),
    (Adversary.CO_RESIDENT, SKYLAKE, {"time", "cache-line"}),
    (Adversary.SAME_CORE, SKYLAKE, {"time", "cache-line", "intra-line"}),
    (Adversary.SAME_CORE, GRACEMONT, {"time", "cache-line"}),
])
def test_adversary_to_observers(adversary: Adversary, profile: Profile, seen: set[str]) -> None:
    views = observers(adversary, profile)
    assert [v.observer for v in views] == list(Observer)
    assert {v.observer.value for v in views if v.observed} == seen
    assert all(v.reason for v in views)


def test_no_intra_line_observer_without_smt() -> None:
    intra = observers(Adversary.SAME_CORE, GRACEMONT)[2]
    assert not intra.observed
    assert intra.reason.startswith("intel-gracemont has no SMT")


def test_no_intra_line_observer_where_offsets_do_not_leak() -> None:
    quiet = dataclasses.replace(SKYLAKE, intra_line=Fact(False, "documented", "x"))
    assert not observers(Adversary.SAME_CORE, quiet)[2].observed


EXPOSED_HERE = ["ct-division", "oblivious-table", "fp-ftz-daz"]  # all variable on Skylake


def test_passes_are_listed_in_the_order_of_the_kind_table() -> None:
    p = plan(loads(contract("co-resident", ALL_KINDS)), SKYLAKE)
    assert [s.name for s in p.passes] == list(PASS_KIND)
    assert [[s.name for s in rp.passes] for rp in p.regions] == [
        ["fp-ftz-daz"], ["oblivious-table"], ["ct-division"],
        ["if-conversion", *EXPOSED_HERE], ["bounded-loop", *EXPOSED_HERE],
        ["bounded-loop", *EXPOSED_HERE], ["ct-equivalent"]]
    # the instruction-level passes a branch or loop exposes apply to it, with their condition
    assert p.regions[3].passes[1].condition == KIND_CONDITION[RegionKind.DIVIDE]
    assert p.regions[5].passes[0].param("bound") == 32
    assert p.step("bounded-loop") is not None
    assert p.step("bounded-loop").param("bound") is None  # type: ignore[union-attr]
    assert all(s.reason for s in p.passes)


def test_same_contract_different_parameters_on_two_cpus() -> None:
    c = loads(contract("same-core", TABLE))
    sky = plan(c, SKYLAKE).step("oblivious-table")
    gm = plan(c, GRACEMONT).step("oblivious-table")
    assert sky is not None and gm is not None
    assert dict(sky.params) == {"granularity": 4, "line_size": 64}
    assert dict(gm.params) == {"granularity": 64, "line_size": 64}
    region = plan(c, SKYLAKE).regions[0].passes[0]
    assert dict(region.params) == {"granularity": 4, "line_size": 64, "table": "sbox",
                                   "length": 256}


def test_table_against_co_resident_is_line_granular() -> None:
    step = plan(loads(contract("co-resident", TABLE)), SKYLAKE).step("oblivious-table")
    assert step is not None and step.param("granularity") == 64
    assert step.reason.startswith("an adversary sharing the cache sees which cache line")


def test_table_against_remote_is_still_hardened_conservatively() -> None:
    step = plan(loads(contract("remote", TABLE)), SKYLAKE).step("oblivious-table")
    assert step is not None and step.param("granularity") == 64
    assert "Bernstein" in step.reason


def test_division_only_where_its_latency_varies() -> None:
    c = loads(contract("remote", '[[protect.region]]\nat = "f"\nkind = "divide"\n'))
    assert [s.name for s in plan(c, SKYLAKE).passes] == ["ct-division"]
    constant = with_latency(SKYLAKE, "int-div", False)
    p = plan(c, constant)
    assert p.passes == ()
    assert [s.name for s in p.skipped] == ["ct-division"]
    assert p.regions[0].skipped[0].reason.startswith("DIV/IDIV latency does not depend")


def test_ftz_daz_only_where_subnormals_are_slow_and_fp_gaps_are_reported() -> None:
    c = loads(contract("remote", '[[protect.region]]\nat = "f"\nkind = "float"\n'))
    p = plan(c, SKYLAKE)
    step = p.step("fp-ftz-daz")
    assert step is not None and dict(step.params) == {"ftz": True, "daz": True}
    assert len(p.gaps) == 2 and "floating-point division" in p.gaps[0]
    fast = with_latency(with_latency(SKYLAKE, "fp-subnormal", False), "fp-div", False)
    p = plan(c, fast)
    assert p.passes == () and [s.name for s in p.skipped] == ["fp-ftz-daz"]
    assert len(p.gaps) == 1 and "square root" in p.gaps[0]


def test_region_without_kind_lists_every_applicable_pass_with_its_condition() -> None:
    p = plan(loads(contract("same-core", '[[protect.region]]\nat = "f"\n')), SKYLAKE)
    steps = p.regions[0].passes
    assert [s.name for s in steps] == list(PASS_KIND)[1:]  # ct-equivalent: asked by kind
    assert steps[1].condition == "for a conditional branch on a secret"
    assert p.gaps


def test_no_region_plans_the_scope() -> None:
    p = plan(loads(contract("co-resident", 'functions = ["f"]\n')), SKYLAKE)
    assert p.regions == ()
    assert p.scope is not None and p.scope.region is None
    assert [s.name for s in p.passes] == list(PASS_KIND)[1:]


@pytest.mark.parametrize(("adversary", "policy", "mode"), [
    ("remote", "adaptive", Policy.ALWAYS),
    ("co-resident", "adaptive", Policy.ADAPTIVE),
    ("same-core", "adaptive", Policy.ADAPTIVE),
    ("same-core", "always", Policy.ALWAYS),
    ("remote", "never", Policy.NEVER),
])
def test_policy_in_effect(adversary: str, policy: str, mode: Policy) -> None:
    p = plan(loads(contract(adversary, TABLE, policy)), SKYLAKE)
    assert p.mode is mode
    assert p.mode_reason
    assert [s.name for s in p.passes] == ["oblivious-table"]  # listed even for never


def test_plan_is_a_pure_function() -> None:
    c = loads(contract("same-core", ALL_KINDS))
    assert plan(c, SKYLAKE) == plan(c, SKYLAKE)
    assert plan(c, SKYLAKE) != plan(c, GRACEMONT)
