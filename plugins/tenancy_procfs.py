"""The ``procfs`` tenancy detector: runnable tasks that share our core or our last-level cache.

``--detector procfs`` (or ``procfs:nomachine``).  Each ``observe()`` reads
``/proc/[pid]/stat`` of every process and, when its ``num_threads`` is not 1,
``/proc/[pid]/task/[tid]/stat`` of each of its threads, and keeps the tasks that are

- **runnable**: state ``R`` (running, or waiting on a run queue).  The criterion is the state
  at the instant of the scan, not CPU time: utime+stime would tell "has been busy" but needs
  two scans and a threshold, while a task that computes stays ``R`` (also when preempted).  A
  task that alternates between short bursts and sleeping can be missed by one scan; the
  monitor polls repeatedly.
- **near us**: field 39 (``processor``, the CPU the task last ran on) is one of our CPUs (the
  context's affinity) or an SMT sibling of one → ``shares="core"``; a CPU sharing our
  last-level cache → ``"cache"``; any other CPU → ``"machine"`` (reported as evidence only,
  and not at all with the argument ``nomachine``).

and ignores

- our own process (``context.pid``) and all its threads.  Other processes of our tree
  (children, parents) are *not* ignored: leakdbt runs the guest in its own threads, so a
  child is someone else's code; trust it explicitly if it should be ignored;
- kernel threads: ``PF_KTHREAD`` in the flags field, or kthreadd (pid 2) and its children;
- trusted processes: every uid of ``Uid:`` in ``/proc/[pid]/status`` (real, effective, saved,
  fs) is trusted; or the process's command name (``/proc/[pid]/comm``, which the kernel cuts
  to 15 characters — trusted names are cut the same way) is trusted; or one of its cgroup paths
  (``/proc/[pid]/cgroup``) is a trusted cgroup or below one.

One co-tenant is reported per process (the most intimate share of its runnable threads; ``cpu``
is that thread's CPU).  Status, comm and cgroup are read only for the processes it would
report, so a scan costs about one small read per process plus one per thread of
multi-threaded processes (~8-12 µs per process or thread).  The topology (see
:mod:`plugins.support.topology`) is read when the detector is created.

What it cannot see: tasks outside our PID namespace (then every observation carries a
``core`` co-tenant named ``unknown``), other users' tasks when ``/proc`` is mounted with
``hidepid`` (then ``observe()`` raises), and other virtual machines' vCPUs on the same
physical core (a guest kernel cannot see them at all: use ``cpuset``-style pinning guarantees
from the hypervisor, or the ``file`` detector fed by the orchestrator).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from leakdbt.plugin_api import (
    DETECTOR_API_VERSION,
    CoTenant,
    DetectorContext,
    Tenancy,
)
from plugins.support.topology import Topology, format_cpulist, read_text, read_topology

PF_KTHREAD = 0x00200000
INIT_PID_NAMESPACE = "pid:[4026531836]"  # PROC_PID_INIT_INO: the initial PID namespace
COMM_LEN = 15
_RANK = {"core": 0, "cache": 1, "machine": 2}


@dataclass
class _Seen:
    shares: str
    tid: int
    cpu: int
    why: str
    threads: int = 1


def _read(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)


def _single(stat: bytes) -> bool:
    """Whether a stat line says its process has one thread (field 20, num_threads)."""
    fields = stat[stat.rfind(b")") + 2:].split(maxsplit=18)
    return len(fields) > 17 and fields[17] == b"1"


class ProcfsDetector:
    """See the module documentation; ``proc_root``/``sys_root`` let tests use fake trees."""

    def __init__(self, context: DetectorContext, proc_root: str = "/proc",
                 sys_root: str = "/sys", machine: bool = True) -> None:
        self.proc_root = proc_root
        self.pid = context.pid
        self.cpus = context.cpus
        self.machine = machine
        self.trusted_uids = context.trusted_uids
        self.trusted_names = frozenset(n[:COMM_LEN] for n in context.trusted_names)
        self.trusted_cgroups = tuple(c.rstrip("/") or "/" for c in context.trusted_cgroups)
        self.topology: Topology = read_topology(sys_root)
        core = self.topology.core_of(self.cpus)
        cache = self.topology.llc_of(self.cpus) - core
        self._where: dict[int, tuple[str, str]] = {}
        for cpu in core:
            self._where[cpu] = ("core", "ours" if cpu in self.cpus else "SMT sibling of ours")
        for cpu in cache:
            self._where[cpu] = ("cache", f"shares L{self.topology.llc_level or '?'} with ours")
        self._blind = self._blindness()

    def _blindness(self) -> tuple[str | None, str | None]:
        """(why observe() must fail, why a hidden co-tenant must be assumed), if so."""
        fail = None
        mounts = read_text(os.path.join(self.proc_root, "self/mountinfo")) or ""
        for line in mounts.splitlines():
            fields = line.split()
            if len(fields) > 4 and fields[4] == self.proc_root and " - proc " in line:
                options = line.rsplit(" ", 1)[-1].split(",")
                if any(o.startswith("hidepid=") and o not in ("hidepid=0", "hidepid=off")
                       for o in options):
                    fail = (f"{self.proc_root} is mounted with {','.join(options)}: other "
                            "users' tasks are invisible")
        hidden = None
        try:
            ns = os.readlink(os.path.join(self.proc_root, str(self.pid), "ns/pid"))
        except OSError:
            ns = None  # cannot tell (fake trees, very old kernels)
        if ns is not None and ns != INIT_PID_NAMESPACE:
            hidden = f"we are in PID namespace {ns}: tasks outside it are invisible"
        return fail, hidden

    def observe(self) -> Tenancy:
        fail, hidden = self._blind
        if fail:
            raise RuntimeError(f"procfs: {fail}")
        proc = self.proc_root
        own = str(self.pid)
        where = self._where
        seen: dict[int, _Seen] = {}
        n_procs = n_tasks = n_runnable = 0
        try:
            pids = os.listdir(proc)
        except OSError as e:
            raise RuntimeError(f"procfs: cannot list {proc}: {e.strerror or e}") from None
        for name in pids:
            if not name.isdigit() or name == own:
                continue
            n_procs += 1
            # A single-threaded process (most of them) is its /proc/[pid]/stat; listing the
            # threads of the others costs a directory read more.
            leader = _read(f"{proc}/{name}/stat")
            if leader is None:
                continue  # the process has exited
            stats: list[bytes | None] = [leader]
            if not _single(leader):  # (a zombie leader may have live threads: listed too)
                task_dir = f"{proc}/{name}/task"
                with contextlib.suppress(OSError):  # exited meanwhile: the leader's line
                    stats = [_read(f"{task_dir}/{tid}/stat") for tid in os.listdir(task_dir)]
            for data in stats:
                if data is None:
                    continue  # the thread has exited
                n_tasks += 1
                close = data.rfind(b")")
                if data[close + 2:close + 3] != b"R":
                    continue
                n_runnable += 1
                fields = data[close + 2:].split()
                try:
                    ppid, flags, cpu = int(fields[1]), int(fields[6]), int(fields[36])
                    tid = int(data[:data.index(b" ")])
                except (IndexError, ValueError):
                    continue  # not a stat line we understand (fake or truncated)
                if flags & PF_KTHREAD or ppid == 2 or tid == 2:
                    continue
                shares, why = where.get(cpu, ("machine", "elsewhere"))
                if shares == "machine" and not self.machine:
                    continue
                pid = int(name)
                prev = seen.get(pid)
                if prev is None:
                    seen[pid] = _Seen(shares, tid, cpu, why)
                else:
                    prev.threads += 1
                    if _RANK[shares] < _RANK[prev.shares]:
                        prev.shares, prev.tid, prev.cpu, prev.why = shares, tid, cpu, why
        cotenants = [c for pid, s in sorted(seen.items(), key=lambda kv: (_RANK[kv[1].shares],
                                                                          kv[0]))
                     if (c := self._cotenant(pid, s)) is not None]
        if hidden:
            cotenants.insert(0, CoTenant(shares="core", name="unknown", evidence=hidden))
        evidence = (f"procfs: {n_tasks} tasks in {n_procs} processes, {n_runnable} runnable "
                    f"(state R); our CPUs {format_cpulist(self.cpus)}, their cores "
                    f"{format_cpulist(self.topology.core_of(self.cpus))}, their LLC "
                    f"{format_cpulist(self.topology.llc_of(self.cpus))}")
        return Tenancy(tuple(cotenants), evidence)

    def _cotenant(self, pid: int, s: _Seen) -> CoTenant | None:
        """The co-tenant for process ``pid``, or None if it is trusted (or has exited)."""
        base = f"{self.proc_root}/{pid}"
        status = read_text(f"{base}/status")
        if status is None:
            return None  # exited since the scan
        uids: list[int] = []
        for line in status.splitlines():
            if line.startswith("Uid:"):
                uids = [int(u) for u in line.split()[1:]]
                break
        comm = (read_text(f"{base}/comm") or "").rstrip("\n")
        if uids and all(u in self.trusted_uids for u in uids):
            return None
        if comm and comm[:COMM_LEN] in self.trusted_names:
            return None
        if self.trusted_cgroups:
            for line in (read_text(f"{base}/cgroup") or "").splitlines():
                path = line.split(":", 2)[-1]
                if any(path == t or path.startswith(t.rstrip("/") + "/")
                       for t in self.trusted_cgroups):
                    return None
        more = f" (+{s.threads - 1} more runnable threads)" if s.threads > 1 else ""
        evidence = f"tid {s.tid} runnable, last ran on CPU {s.cpu} ({s.why}){more}"
        return CoTenant(shares=s.shares, pid=pid, name=comm, uid=uids[0] if uids else -1,
                        cpu=s.cpu, evidence=evidence)


class ProcfsFactory:
    name = "procfs"
    api_version = DETECTOR_API_VERSION
    description = ("runnable tasks on our CPUs, their SMT siblings or CPUs sharing our LLC "
                   "(/proc, /sys); argument 'nomachine' drops the others")

    def create(self, context: DetectorContext) -> ProcfsDetector:
        if context.argument not in ("", "nomachine"):
            raise ValueError(f"procfs takes no argument but 'nomachine', not "
                             f"{context.argument!r}")
        return ProcfsDetector(context, machine=context.argument != "nomachine")


DETECTOR = ProcfsFactory()
