"""CPU topology from sysfs, shared by the ``procfs`` and ``cpuset`` tenancy detectors.

Read from ``<sys>/devices/system/cpu``:

- online CPUs: ``online`` (else the ``cpuN`` directories);
- a CPU's core (itself and its SMT siblings): ``cpuN/topology/core_cpus_list``, or its older
  name ``thread_siblings_list``; neither → the CPU alone;
- the CPUs sharing a CPU's last-level cache: ``cpuN/cache/index*/shared_cpu_list`` of the
  highest ``level`` present (data or unified caches; level 3 on most x86 machines).  Without
  any cache information the LLC domain is assumed, conservatively, to be the CPU's package
  (``package_cpus_list`` / ``core_siblings_list``), or else every online CPU.

The topology is read once, when a detector is created (CPU hot-plug afterwards is not seen).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


def parse_cpulist(text: str) -> frozenset[int]:
    """``0-3,8,10-11`` (the kernel's cpulist format; empty → no CPU) → a set of CPUs."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        if not dash:
            cpus.add(int(lo))
            continue
        hi, colon, stride = hi.partition(":")  # 0-7:2 (stride form, accepted by cpusets)
        cpus.update(range(int(lo), int(hi) + 1, int(stride) if colon else 1))
    return frozenset(cpus)


def format_cpulist(cpus: Iterable[int]) -> str:
    """A set of CPUs in the kernel's cpulist format (``0-3,8``); ``-`` for none."""
    ordered = sorted(set(cpus))
    runs: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        runs.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(runs) or "-"


def read_text(path: str) -> str | None:
    """The content of a small file, or None if it cannot be read."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


@dataclass(frozen=True)
class Topology:
    """Which CPUs share a core and which share a last-level cache."""

    online: frozenset[int]
    core: Mapping[int, frozenset[int]]  # CPU -> the CPUs of its core (itself included)
    llc: Mapping[int, frozenset[int]]  # CPU -> the CPUs sharing its LLC (itself included)
    llc_level: int  # the cache level used as LLC; 0: no cache information (see llc_source)
    llc_source: str

    def core_of(self, cpus: Iterable[int]) -> frozenset[int]:
        """``cpus`` and their SMT siblings."""
        out: set[int] = set()
        for c in cpus:
            out |= self.core.get(c, frozenset((c,)))
        return frozenset(out)

    def llc_of(self, cpus: Iterable[int]) -> frozenset[int]:
        """Every CPU sharing a last-level cache with one of ``cpus`` (them included)."""
        out: set[int] = set()
        for c in cpus:
            out |= self.llc.get(c, self.online | {c})
        return frozenset(out)

    def groups(self, which: str) -> list[list[int]]:
        """The distinct cores (``which="core"``) or LLC domains (``"llc"``), sorted."""
        table = self.core if which == "core" else self.llc
        return [list(g) for g in sorted({tuple(sorted(g)) for g in table.values()})]

    def as_dict(self) -> dict[str, object]:
        return {"online": sorted(self.online),
                "cores": self.groups("core"), "llc_groups": self.groups("llc"),
                "llc_level": self.llc_level, "llc_source": self.llc_source}

    def describe(self) -> str:
        cores = " ".join(format_cpulist(g) for g in self.groups("core"))
        llcs = " ".join(format_cpulist(g) for g in self.groups("llc"))
        return (f"online CPUs {format_cpulist(self.online)}; cores (SMT siblings): {cores}; "
                f"LLC groups ({self.llc_source}): {llcs}")


def read_topology(sys_root: str = "/sys") -> Topology:
    """The topology of the CPUs described under ``<sys_root>/devices/system/cpu``."""
    base = os.path.join(sys_root, "devices/system/cpu")
    online_text = read_text(os.path.join(base, "online"))
    if online_text is not None and online_text.strip():
        online = parse_cpulist(online_text)
    else:
        try:
            names = os.listdir(base)
        except OSError:
            names = []
        online = frozenset(int(n[3:]) for n in names if n.startswith("cpu") and n[3:].isdigit())
    core: dict[int, frozenset[int]] = {}
    llc: dict[int, frozenset[int]] = {}
    levels: set[int] = set()
    fallbacks: set[str] = set()
    for cpu in sorted(online):
        d = os.path.join(base, f"cpu{cpu}")
        siblings = _first_list(d, ("topology/core_cpus_list", "topology/thread_siblings_list"))
        core[cpu] = (siblings or frozenset()) | {cpu}
        level, shared = _last_level_cache(d)
        if shared is None:
            package = _first_list(d, ("topology/package_cpus_list",
                                      "topology/core_siblings_list"))
            fallbacks.add("package" if package else "machine")
            shared = package or online
        else:
            levels.add(level)
        llc[cpu] = shared | core[cpu]
    if levels and not fallbacks:
        level = max(levels)
        source = f"L{level} shared_cpu_list"
    else:
        level = 0
        source = ("no cache information: assumed shared per "
                  + ("package" if fallbacks == {"package"} else "machine"))
    return Topology(frozenset(online), core, llc, level, source)


def _first_list(cpu_dir: str, names: tuple[str, ...]) -> frozenset[int] | None:
    for name in names:
        text = read_text(os.path.join(cpu_dir, name))
        if text is not None and text.strip():
            try:
                return parse_cpulist(text)
            except ValueError:
                continue
    return None


def _last_level_cache(cpu_dir: str) -> tuple[int, frozenset[int] | None]:
    """The highest cache level of a CPU (data or unified) and the CPUs sharing it."""
    cache_dir = os.path.join(cpu_dir, "cache")
    try:
        indexes = [n for n in os.listdir(cache_dir) if n.startswith("index")]
    except OSError:
        return 0, None
    best: tuple[int, frozenset[int] | None] = (0, None)
    for name in indexes:
        d = os.path.join(cache_dir, name)
        level_text = read_text(os.path.join(d, "level"))
        kind = (read_text(os.path.join(d, "type")) or "Unified").strip()
        shared = _first_list(d, ("shared_cpu_list",))
        if level_text is None or shared is None or kind == "Instruction":
            continue
        try:
            level = int(level_text)
        except ValueError:
            continue
        if level > best[0]:
            best = (level, shared)
    return best
