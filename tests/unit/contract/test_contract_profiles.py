"""CPU profiles: the shipped data files, and selection from recorded CPUIDs of real processors."""

from __future__ import annotations

from pathlib import Path

import pytest

from leakdbt.contract.profiles import (
    BASES,
    GENERIC,
    LATENCY_CLASSES,
    all_profiles,
    choose_profile,
    get_profile,
    host_profile,
    parse_cpuinfo,
    parse_profile,
    select_profile,
)
from leakdbt.errors import ContractError, UsageError

REPO = Path(__file__).resolve().parents[3]

# (vendor_id, cpu family, model) as /proc/cpuinfo reports them, for real processors.
RECORDED = [
    ("GenuineIntel", 6, 94, "Intel Core i7-6700K (Skylake-S)", "intel-skylake"),
    ("GenuineIntel", 6, 78, "Intel Core i5-6200U (Skylake-U)", "intel-skylake"),
    ("GenuineIntel", 6, 85, "Intel Xeon Platinum 8175M (Skylake-SP)", "intel-skylake"),
    ("GenuineIntel", 6, 158, "Intel Core i7-8700K (Coffee Lake)", "intel-skylake"),
    ("GenuineIntel", 6, 142, "Intel Core i7-8565U (Whiskey Lake)", "intel-skylake"),
    ("GenuineIntel", 6, 165, "Intel Core i9-10900K (Comet Lake)", "intel-skylake"),
    ("GenuineIntel", 6, 126, "Intel Core i7-1065G7 (Ice Lake)", "intel-ice-lake"),
    ("GenuineIntel", 6, 106, "Intel Xeon Platinum 8375C (Ice Lake-SP)", "intel-ice-lake"),
    ("GenuineIntel", 6, 140, "Intel Core i7-1165G7 (Tiger Lake)", "intel-ice-lake"),
    ("GenuineIntel", 6, 151, "Intel Core i9-12900K (Alder Lake)", "intel-golden-cove"),
    ("GenuineIntel", 6, 183, "Intel Core i9-13900K (Raptor Lake)", "intel-golden-cove"),
    ("GenuineIntel", 6, 143, "Intel Xeon Platinum 8488C (Sapphire Rapids)", "intel-golden-cove"),
    ("GenuineIntel", 6, 190, "Intel Processor N100 (Alder Lake-N)", "intel-gracemont"),
    ("AuthenticAMD", 23, 49, "AMD EPYC 7R32 (Rome)", "amd-zen2"),
    ("AuthenticAMD", 23, 113, "AMD Ryzen 7 3700X (Matisse)", "amd-zen2"),
    ("AuthenticAMD", 23, 96, "AMD Ryzen 7 4800U (Renoir)", "amd-zen2"),
    ("AuthenticAMD", 25, 1, "AMD EPYC 7R13 (Milan)", "amd-zen3"),
    ("AuthenticAMD", 25, 33, "AMD Ryzen 9 5950X (Vermeer)", "amd-zen3"),
    ("AuthenticAMD", 25, 80, "AMD Ryzen 7 5800U (Cezanne)", "amd-zen3"),
    ("AuthenticAMD", 25, 17, "AMD EPYC 9R14 (Genoa)", "amd-zen4"),
    ("AuthenticAMD", 25, 97, "AMD Ryzen 9 7950X (Raphael)", "amd-zen4"),
    ("AuthenticAMD", 25, 116, "AMD Ryzen 7 7840U (Phoenix)", "amd-zen4"),
    # No profile of their own: the conservative default.
    ("GenuineIntel", 6, 42, "Intel Core i7-2600 (Sandy Bridge)", GENERIC),
    ("AuthenticAMD", 23, 1, "AMD EPYC 7601 (Naples, Zen 1)", GENERIC),
    ("AuthenticAMD", 26, 2, "AMD EPYC 9R45 (Turin, Zen 5)", GENERIC),
    ("HygonGenuine", 24, 0, "Hygon C86 7185", GENERIC),
    ("CentaurHauls", 7, 59, "Zhaoxin KX-6000", GENERIC),
]

CPUINFO_ZEN3 = """\
processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7R13 Processor
stepping\t: 1

processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 94
"""


def test_shipped_profiles() -> None:
    names = [p.name for p in all_profiles()]
    assert GENERIC in names
    assert sum(n.startswith("intel-") for n in names) >= 2
    assert sum(n.startswith("amd-") for n in names) >= 2
    for p in all_profiles():
        assert p.path.endswith(f"/{p.name}.toml")
        assert [cls for cls, _ in p.latency] == list(LATENCY_CLASSES)
        facts = [p.cache_line, p.smt, p.intra_line, *(f for _, f in p.latency)]
        for fact in facts:
            assert fact.basis in BASES
            assert p.cite(fact.source), f"{p.name}: a fact without a cited source"
        assert p.line_size == 64
        assert p.intra_line_unit >= 1


def test_every_profile_file_names_its_sources() -> None:
    for p in all_profiles():
        text = (REPO / p.path).read_text()
        assert "[[reference]]" in text
        assert len(p.references) >= 2


def test_generic_profile_is_the_most_conservative() -> None:
    generic = get_profile(GENERIC)
    assert generic.cpuid == ()
    assert generic.has_smt and generic.intra_line_leaks
    assert all(generic.variable(cls) for cls in LATENCY_CLASSES)
    assert generic.intra_line_unit == min(p.intra_line_unit for p in all_profiles())


def test_no_two_profiles_claim_the_same_cpu() -> None:
    claimed: dict[tuple[str, int, int], str] = {}
    for p in all_profiles():
        for m in p.cpuid:
            assert m.models, f"{p.name} claims a whole family"
            for model in m.models:
                key = (m.vendor, m.family, model)
                assert key not in claimed, f"{key} claimed by {claimed.get(key)} and {p.name}"
                claimed[key] = p.name


@pytest.mark.parametrize(("vendor", "family", "model", "cpu", "expected"), RECORDED,
                         ids=[r[3] for r in RECORDED])
def test_selection_from_recorded_cpuid(vendor: str, family: int, model: int, cpu: str,
                                       expected: str) -> None:
    assert select_profile(vendor, family, model).name == expected


def test_parse_cpuinfo_reads_the_first_processor() -> None:
    cpu = parse_cpuinfo(CPUINFO_ZEN3)
    assert cpu is not None
    assert (cpu.vendor, cpu.family, cpu.model) == ("AuthenticAMD", 25, 1)
    assert str(cpu) == "AuthenticAMD family 0x19 model 0x1 (AMD EPYC 7R13 Processor)"
    assert parse_cpuinfo("processor : 0\nCPU implementer : 0x41\n") is None  # not x86


def test_host_profile_from_a_cpuinfo_file(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO_ZEN3)
    assert host_profile(str(info)).name == "amd-zen3"
    assert host_profile(str(tmp_path / "absent")).name == GENERIC
    profile, reason = choose_profile(None, str(info))
    assert profile.name == "amd-zen3" and reason.startswith("host CPU AuthenticAMD family 0x19")
    profile, reason = choose_profile(None, str(tmp_path / "absent"))
    assert profile.name == GENERIC and "unknown" in reason


def test_host_profile_on_this_machine() -> None:
    # Whatever the host is, some profile is chosen, and an x86 Linux host is recognised.
    assert host_profile().name in {p.name for p in all_profiles()}


def test_cpu_override() -> None:
    assert choose_profile("amd-zen2") == (get_profile("amd-zen2"), "chosen with --cpu")
    with pytest.raises(UsageError, match="unknown CPU profile 'pentium'; choose one of"):
        get_profile("pentium")


def test_a_broken_profile_is_rejected_with_lines() -> None:
    text = (REPO / get_profile("intel-skylake").path).read_text()
    broken = text.replace('basis = "documented"\nsource = "intel-opt"\n\n[smt]',
                          'basis = "sure"\nsource = "nowhere"\n\n[smt]', 1)
    assert broken != text
    with pytest.raises(ContractError) as info:
        parse_profile(broken, "broken.toml")
    keys = [key for _, key, _ in info.value.problems]
    assert keys == ["cache_line.basis", "cache_line.source"]
