"""The ``cpuset`` tenancy detector: are our CPUs reserved for us?

``--detector cpuset``.  A CPU counts as *reserved* when

- it is in ``/sys/devices/system/cpu/isolated`` (``isolcpus=``: the scheduler puts no task
  there unless its affinity names the CPU), or
- our cgroup v2 cgroup (the ``0::`` line of ``/proc/<pid>/cgroup``, under ``/sys/fs/cgroup``,
  or ``/sys/fs/cgroup/unified`` on hybrid hosts) is a valid cpuset partition:
  ``cpuset.cpus.partition`` is ``root`` or ``isolated``; its ``cpuset.cpus.effective`` CPUs are
  then exclusive to that cgroup (and the cgroups below it).

Both rest on the operator: whoever may set affinities or create cgroups on those CPUs is
trusted.  Nothing here can see *who* runs, so the detector reports, as one co-tenant named
``unknown``, the most intimate level it cannot rule out:

- ``core`` unless every one of our CPUs *and its SMT siblings* is reserved (evidence
  ``not isolated``);
- else ``cache`` unless every CPU sharing our last-level cache is reserved — isolating a core
  does not isolate the LLC it shares;
- else ``machine`` unless every online CPU is reserved;
- else nothing: alone.
"""

from __future__ import annotations

import os

from leakdbt.plugin_api import DETECTOR_API_VERSION, CoTenant, DetectorContext, Tenancy
from plugins.support.topology import (
    Topology,
    format_cpulist,
    parse_cpulist,
    read_text,
    read_topology,
)

PARTITIONS = ("root", "isolated")


class CpusetDetector:
    def __init__(self, context: DetectorContext, proc_root: str = "/proc",
                 sys_root: str = "/sys") -> None:
        self.proc_root = proc_root
        self.sys_root = sys_root
        self.pid = context.pid
        self.cpus = context.cpus
        self.topology: Topology = read_topology(sys_root)

    def _reserved(self) -> tuple[frozenset[int], list[str]]:
        """The reserved CPUs and how they were found."""
        reserved: set[int] = set()
        notes: list[str] = []
        isolated = parse_cpulist(read_text(
            os.path.join(self.sys_root, "devices/system/cpu/isolated")) or "")
        notes.append(f"isolated CPUs {format_cpulist(isolated)}")
        reserved |= isolated
        cgroup = None
        for line in (read_text(f"{self.proc_root}/{self.pid}/cgroup") or "").splitlines():
            if line.startswith("0::"):
                cgroup = line[3:].strip()
        if cgroup is None:
            notes.append("no cgroup v2 membership")
            return frozenset(reserved), notes
        base = os.path.join(self.sys_root, "fs/cgroup")
        if not os.path.exists(os.path.join(base, "cgroup.controllers")):
            base = os.path.join(base, "unified")
        d = os.path.join(base, cgroup.lstrip("/"))
        partition = (read_text(os.path.join(d, "cpuset.cpus.partition")) or "").strip()
        if partition in PARTITIONS:
            effective = parse_cpulist(read_text(os.path.join(d, "cpuset.cpus.effective")) or "")
            notes.append(f"cgroup {cgroup} is a cpuset partition ({partition}) of CPUs "
                         f"{format_cpulist(effective)}")
            reserved |= effective
        else:
            notes.append(f"cgroup {cgroup} is not a cpuset partition "
                         f"({partition or 'no cpuset.cpus.partition'})")
        return frozenset(reserved), notes

    def observe(self) -> Tenancy:
        reserved, notes = self._reserved()
        evidence = "cpuset: " + "; ".join(notes)
        levels = (("core", self.topology.core_of(self.cpus), "not isolated"),
                  ("cache", self.topology.llc_of(self.cpus), "LLC shared with CPUs not isolated"),
                  ("machine", self.topology.online | self.cpus, "machine not isolated"))
        for shares, needed, what in levels:
            missing = needed - reserved
            if missing:
                return Tenancy((CoTenant(shares=shares, name="unknown",
                                         evidence=f"{what}: CPUs {format_cpulist(missing)} "
                                                  "are not reserved"),), evidence)
        return Tenancy((), evidence + f"; all CPUs reserved: alone on {format_cpulist(self.cpus)}")


class CpusetFactory:
    name = "cpuset"
    api_version = DETECTOR_API_VERSION
    description = ("alone only if our CPUs (and what shares their core/LLC) are isolated or "
                   "a cgroup v2 cpuset partition; otherwise conservatively 'core'")

    def create(self, context: DetectorContext) -> CpusetDetector:
        if context.argument:
            raise ValueError(f"cpuset takes no argument, not {context.argument!r}")
        return CpusetDetector(context)


DETECTOR = CpusetFactory()
