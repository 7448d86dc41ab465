"""CPU profiles: what a microarchitecture leaks, as data files shipped with the package.

Each ``profiles/*.toml`` states, with a cited source and how sure we are (``basis``), the
cache-line size, whether the core runs SMT siblings, whether offsets within a cache line leak
to a sibling (cache-bank conflicts, 4K-aliasing false dependencies), and which instruction
classes have operand-dependent latency.  The host's profile is chosen from its CPUID vendor,
family and model as Linux reports them in /proc/cpuinfo; an unknown CPU gets the
conservative ``generic-x86-64``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from leakdbt.errors import ContractError, UsageError

GENERIC = "generic-x86-64"
PROFILE_FORMAT = 1

LATENCY_CLASSES: dict[str, str] = {
    "int-div": "integer division (DIV, IDIV)",
    "fp-div": "floating-point division (DIVSS, DIVSD, DIVPS, DIVPD, x87 FDIV)",
    "fp-sqrt": "floating-point square root (SQRTSS, SQRTSD, SQRTPS, SQRTPD, x87 FSQRT)",
    "fp-subnormal": "floating-point arithmetic on subnormal operands or results",
}
"""Instruction classes whose latency may depend on operand values; every profile rates each."""

BASES: dict[str, str] = {
    "documented": "stated by the vendor or in published instruction tables",
    "measured": "shown by published measurements or attacks",
    "conservative": "not established either way; assumed to leak",
}
"""How sure a profile is of a fact."""


@dataclass(frozen=True)
class Fact:
    """One property of a microarchitecture, with the reason to believe it."""

    value: bool | int
    basis: str  # a key of BASES
    source: str  # reference id(s) of the profile, comma-separated
    note: str = ""


@dataclass(frozen=True)
class CpuidMatch:
    """CPUID values a profile claims; an empty ``models`` claims the whole family."""

    vendor: str
    family: int
    models: tuple[int, ...] = ()

    def matches(self, vendor: str, family: int, model: int) -> bool:
        return (vendor == self.vendor and family == self.family
                and (not self.models or model in self.models))


@dataclass(frozen=True)
class Reference:
    """A cited source: a vendor manual, an instruction table, a paper."""

    id: str
    cite: str


@dataclass(frozen=True)
class Profile:
    """What one microarchitecture (family of cores) leaks, with sources."""

    name: str
    title: str
    cpuid: tuple[CpuidMatch, ...]
    cache_line: Fact  # bytes
    smt: Fact  # simultaneous multithreading: can an adversary run on a sibling thread?
    intra_line: Fact  # do offsets within a line leak to a sibling thread?
    intra_line_unit: int  # bytes an intra-line observer can tell apart
    latency: tuple[tuple[str, Fact], ...]  # (LATENCY_CLASSES key, variable?) for every class
    references: tuple[Reference, ...]
    path: str = ""

    @property
    def line_size(self) -> int:
        return int(self.cache_line.value)

    @property
    def has_smt(self) -> bool:
        return bool(self.smt.value)

    @property
    def intra_line_leaks(self) -> bool:
        return bool(self.intra_line.value)

    def latency_fact(self, cls: str) -> Fact:
        return dict(self.latency)[cls]

    def variable(self, cls: str) -> bool:
        """True if instructions of class ``cls`` have operand-dependent latency here."""
        return bool(self.latency_fact(cls).value)

    def cite(self, ids: str) -> str:
        """The full citations for a fact's comma-separated reference ids."""
        refs = dict((r.id, r.cite) for r in self.references)
        return "; ".join(refs[i.strip()] for i in ids.split(",") if i.strip() in refs)


@dataclass(frozen=True)
class CpuId:
    """The identity of a processor as CPUID (and /proc/cpuinfo) reports it."""

    vendor: str
    family: int
    model: int
    model_name: str = ""

    def __str__(self) -> str:
        text = f"{self.vendor} family {self.family:#x} model {self.model:#x}"
        return f"{text} ({self.model_name})" if self.model_name else text


# -- reading profile files -------------------------------------------------------------------


@lru_cache(maxsize=1)
def all_profiles() -> tuple[Profile, ...]:
    """Every shipped profile, sorted by name."""
    found = []
    for entry in resources.files("leakdbt.contract").joinpath("profiles").iterdir():
        if entry.name.endswith(".toml"):
            found.append(parse_profile(entry.read_text(encoding="utf-8"),
                                       f"leakdbt/contract/profiles/{entry.name}"))
    return tuple(sorted(found, key=lambda p: p.name))


def profile_names() -> tuple[str, ...]:
    return tuple(p.name for p in all_profiles())


def get_profile(name: str) -> Profile:
    """The profile called ``name``; :class:`UsageError` naming the choices otherwise."""
    for p in all_profiles():
        if p.name == name:
            return p
    raise UsageError(f"unknown CPU profile {name!r}; choose one of {', '.join(profile_names())}")


def parse_profile(text: str, path: str) -> Profile:
    """Parse and check one profile file; :class:`ContractError` lists its problems."""
    from leakdbt.contract.toml_lines import display, key_lines, line_of

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ContractError(path, [(1, "syntax", str(e))]) from None
    lines = key_lines(text)
    problems: list[tuple[int, str, str]] = []

    def bad(key: tuple[str | int, ...], msg: str) -> None:
        problems.append((line_of(lines, key), display(key), msg))

    def need(table: dict[str, Any], key: str, kind: type, where: tuple[str | int, ...]) -> Any:
        value = table.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            bad((*where, key), f"expected {kind.__name__}")
            return kind()
        return value

    refs = [Reference(need(r, "id", str, ("reference", i)), need(r, "cite", str, ("reference", i)))
            for i, r in enumerate(doc.get("reference", []))]
    ids = {r.id for r in refs}

    def fact(key: str, value_key: str, kind: type, where: tuple[str | int, ...] = ()) -> Fact:
        parent: Any = doc
        for part in where:
            parent = parent.get(part, {}) if isinstance(parent, dict) else {}
        found = parent.get(key) if isinstance(parent, dict) else None
        path_ = (*where, key)
        if not isinstance(found, dict):
            bad(path_, "missing")
            return Fact(kind(), "conservative", "")
        table: dict[str, Any] = found
        basis = need(table, "basis", str, path_)
        if basis not in BASES:
            bad((*path_, "basis"), f"must be one of {', '.join(BASES)}")
        source = need(table, "source", str, path_)
        for ref in source.split(","):
            if ref.strip() not in ids:
                bad((*path_, "source"), f"unknown reference {ref.strip()!r}")
        extra = set(table) - {value_key, "basis", "source", "note", "unit"}
        for k in sorted(extra):
            bad((*path_, k), "unknown key")
        return Fact(need(table, value_key, kind, path_), basis, source,
                    table.get("note", "") if isinstance(table.get("note", ""), str) else "")

    if doc.get("format") != PROFILE_FORMAT:
        bad(("format",), f"must be {PROFILE_FORMAT}")
    name = need(doc, "name", str, ())
    title = need(doc, "title", str, ())
    matches = []
    for i, m in enumerate(doc.get("cpuid", [])):
        models = m.get("models", [])
        if not isinstance(models, list) or not all(isinstance(x, int) for x in models):
            bad(("cpuid", i, "models"), "expected an array of integers")
            models = []
        matches.append(CpuidMatch(need(m, "vendor", str, ("cpuid", i)),
                                  need(m, "family", int, ("cpuid", i)), tuple(models)))
    cache_line = fact("cache_line", "bytes", int)
    smt = fact("smt", "present", bool)
    intra = fact("intra_line", "leaks", bool)
    unit = doc.get("intra_line", {}).get("unit") if isinstance(doc.get("intra_line"), dict) \
        else None
    if not isinstance(unit, int) or isinstance(unit, bool) or unit < 1:
        bad(("intra_line", "unit"), "expected a positive integer (bytes)")
        unit = 1
    latency = []
    table = doc.get("latency", {})
    for cls in LATENCY_CLASSES:
        latency.append((cls, fact(cls, "variable", bool, ("latency",))))
    for cls in table if isinstance(table, dict) else ():
        if cls not in LATENCY_CLASSES:
            bad(("latency", cls), f"unknown class; known: {', '.join(LATENCY_CLASSES)}")
    if cache_line.value not in (32, 64, 128):
        bad(("cache_line", "bytes"), "expected 32, 64 or 128")
    if name and not re.fullmatch(r"[a-z0-9-]+", name):
        bad(("name",), "use lowercase letters, digits and -")
    if problems:
        raise ContractError(path, sorted(problems))
    return Profile(name=name, title=title, cpuid=tuple(matches), cache_line=cache_line,
                   smt=smt, intra_line=intra, intra_line_unit=unit, latency=tuple(latency),
                   references=tuple(refs), path=path)


# -- choosing the host's profile -------------------------------------------------------------


def select_profile(vendor: str, family: int, model: int) -> Profile:
    """The profile claiming this CPUID vendor/family/model, else ``generic-x86-64``."""
    for p in all_profiles():
        if any(m.matches(vendor, family, model) for m in p.cpuid):
            return p
    return get_profile(GENERIC)


def parse_cpuinfo(text: str) -> CpuId | None:
    """Vendor, family and model of the first processor in /proc/cpuinfo text, if present."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    try:
        return CpuId(fields["vendor_id"], int(fields["cpu family"]), int(fields["model"]),
                     fields.get("model name", ""))
    except (KeyError, ValueError):
        return None


def host_cpuid(cpuinfo: str = "/proc/cpuinfo") -> CpuId | None:
    """The host CPU's identity, or None when it cannot be read (not Linux, not x86)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            return parse_cpuinfo(f.read())
    except OSError:
        return None


def host_profile(cpuinfo: str = "/proc/cpuinfo") -> Profile:
    """The profile of the processor leakdbt runs on (``generic-x86-64`` if unknown)."""
    cpu = host_cpuid(cpuinfo)
    return select_profile(cpu.vendor, cpu.family, cpu.model) if cpu else get_profile(GENERIC)


def choose_profile(name: str | None = None,
                   cpuinfo: str = "/proc/cpuinfo") -> tuple[Profile, str]:
    """The profile to use and why, in words: ``--cpu NAME`` if given, else the host's."""
    if name:
        return get_profile(name), "chosen with --cpu"
    cpu = host_cpuid(cpuinfo)
    if cpu is None:
        return get_profile(GENERIC), "host CPU unknown (no /proc/cpuinfo): conservative default"
    chosen = select_profile(cpu.vendor, cpu.family, cpu.model)
    if chosen.name == GENERIC:
        return chosen, f"host CPU {cpu} has no profile of its own: conservative default"
    return chosen, f"host CPU {cpu}"
