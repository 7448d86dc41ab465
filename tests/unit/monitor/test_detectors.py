"""Tenancy detectors: procfs and cpuset on fake /proc and /sys trees (and procfs on the real
machine with a busy process), file, fixed and schedule, and the entry-point loader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from leakdbt.errors import PluginError, UsageError
from leakdbt.monitor.detectors import (
    ENTRY_POINT_GROUP,
    Candidate,
    create_detector,
    default_context,
    load_detectors,
)
from leakdbt.plugin_api import CoTenant, DetectorContext, Tenancy, TenancyDetector
from plugins.support.topology import format_cpulist, parse_cpulist, read_topology
from plugins.tenancy_cpuset import CpusetDetector
from plugins.tenancy_file import FileDetector
from plugins.tenancy_procfs import PF_KTHREAD, ProcfsDetector
from plugins.tenancy_scripted import ScheduleDetector, ScriptedError, parse_ticks

OUR_PID = 1000

# --------------------------------------------------------------------------- fake trees


def make_sys(root: Path, cores: list[list[int]], llcs: list[list[int]] | None,
             isolated: str = "") -> Path:
    """A fake /sys: ``cores`` are SMT sibling groups, ``llcs`` the L3 groups (None: no cache
    directories; then package_cpus_list is every CPU)."""
    base = root / "devices/system/cpu"
    cpus = sorted(c for core in cores for c in core)
    base.mkdir(parents=True)
    (base / "online").write_text(format_cpulist(cpus) + "\n")
    (base / "isolated").write_text(isolated + "\n")
    for core in cores:
        for cpu in core:
            topo = base / f"cpu{cpu}/topology"
            topo.mkdir(parents=True)
            (topo / "thread_siblings_list").write_text(format_cpulist(core) + "\n")
            (topo / "package_cpus_list").write_text(format_cpulist(cpus) + "\n")
            if llcs is None:
                continue
            llc = next(g for g in llcs if cpu in g)
            for index, (level, kind, shared) in enumerate(
                    [(1, "Data", core), (1, "Instruction", core), (2, "Unified", core),
                     (3, "Unified", llc)]):
                d = base / f"cpu{cpu}/cache/index{index}"
                d.mkdir(parents=True)
                (d / "level").write_text(f"{level}\n")
                (d / "type").write_text(f"{kind}\n")
                (d / "shared_cpu_list").write_text(format_cpulist(shared) + "\n")
    return root


def stat_line(tid: int, comm: str, state: str, cpu: int, ppid: int = 1, flags: int = 0x400000,
              threads: int = 1) -> str:
    """A /proc/[pid]/stat line: fields 3..52 after ``pid (comm)``."""
    rest = ["0"] * 50
    rest[0], rest[1], rest[6], rest[17], rest[36] = state, str(ppid), str(flags), str(threads), \
        str(cpu)
    return f"{tid} ({comm}) {' '.join(rest)}\n"


def add_process(proc: Path, pid: int, comm: str, threads: list[tuple[str, int]], *,
                uid: int = 1000, euid: int | None = None, cgroup: str = "/user.slice",
                ppid: int = 1, flags: int = 0x400000) -> None:
    """A process whose threads (tid pid, pid+1, ...) have the (state, cpu) given."""
    d = proc / str(pid)
    d.mkdir(parents=True)
    n = len(threads)
    for i, (state, cpu) in enumerate(threads):
        t = d / "task" / str(pid + i)
        t.mkdir(parents=True)
        (t / "stat").write_text(stat_line(pid + i, comm, state, cpu, ppid, flags, n))
    (d / "stat").write_text(stat_line(pid, comm, threads[0][0], threads[0][1], ppid, flags, n))
    e = uid if euid is None else euid
    (d / "status").write_text(f"Name:\t{comm}\nUid:\t{uid}\t{e}\t{e}\t{e}\n")
    (d / "comm").write_text(comm + "\n")
    (d / "cgroup").write_text(f"0::{cgroup}\n")


CORES = [[0, 4], [1, 5], [2, 6], [3, 7]]
LLCS = [[0, 1, 4, 5], [2, 3, 6, 7]]


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """(proc, sys) with 8 CPUs: cores {0,4} {1,5} {2,6} {3,7}, L3s {0,1,4,5} {2,3,6,7}."""
    return tmp_path / "proc", make_sys(tmp_path / "sys", CORES, LLCS)


def ctx(cpus: set[int] | None = None, uids: frozenset[int] = frozenset(),
        names: frozenset[str] = frozenset(), cgroups: frozenset[str] = frozenset()
        ) -> DetectorContext:
    return DetectorContext(argument="", pid=OUR_PID, cpus=frozenset({0} if cpus is None else cpus),
                           trusted_uids=uids, trusted_names=names, trusted_cgroups=cgroups)


def procfs(tree: tuple[Path, Path], context: DetectorContext | None = None,
           machine: bool = True) -> Tenancy:
    proc, sys_root = tree
    proc.mkdir(exist_ok=True)
    return ProcfsDetector(context or ctx(), str(proc), str(sys_root), machine).observe()


def seen(t: Tenancy) -> dict[int, str]:
    return {c.pid: c.shares for c in t.cotenants}


# --------------------------------------------------------------------------- topology


def test_cpulists_and_topology(tree: tuple[Path, Path], tmp_path: Path) -> None:
    assert parse_cpulist("0-2,5,8-9\n") == {0, 1, 2, 5, 8, 9}
    assert parse_cpulist("0-6:2") == {0, 2, 4, 6}
    assert parse_cpulist("\n") == frozenset()
    assert format_cpulist({9, 0, 1, 2, 5}) == "0-2,5,9" and format_cpulist(()) == "-"
    topo = read_topology(str(tree[1]))
    assert topo.core_of({0}) == {0, 4} and topo.llc_of({0}) == {0, 1, 4, 5}
    assert topo.llc_level == 3 and topo.groups("llc") == [[0, 1, 4, 5], [2, 3, 6, 7]]
    # No cache information: conservatively, the package (here: every CPU) shares the LLC.
    bare = read_topology(str(make_sys(tmp_path / "bare", CORES, None)))
    assert bare.llc_of({0}) == set(range(8)) and bare.llc_level == 0
    assert "package" in bare.llc_source


# --------------------------------------------------------------------------- procfs (fake)


def test_runnable_tasks_by_what_they_share(tree: tuple[Path, Path]) -> None:
    proc = tree[0]
    add_process(proc, 2000, "on-our-cpu", [("R", 0)])
    add_process(proc, 2100, "on-sibling", [("R", 4)])
    add_process(proc, 2200, "same-llc", [("R", 5)])
    add_process(proc, 2300, "far-away", [("R", 6)])
    add_process(proc, 2400, "sleeper", [("S", 0)])
    add_process(proc, 2500, "disk", [("D", 0)])
    t = procfs(tree)
    assert seen(t) == {2000: "core", 2100: "core", 2200: "cache", 2300: "machine"}
    first = t.cotenants[0]
    assert first == CoTenant(shares="core", pid=2000, name="on-our-cpu", uid=1000, cpu=0,
                             evidence="tid 2000 runnable, last ran on CPU 0 (ours)")
    assert "SMT sibling" in t.cotenants[1].evidence and "L3" in t.cotenants[2].evidence
    assert "6 processes" in t.evidence and "4 runnable" in t.evidence
    # machine-level tenants are evidence only, and can be left out
    assert seen(procfs(tree, machine=False)) == {2000: "core", 2100: "core", 2200: "cache"}


def test_our_own_threads_are_not_reported(tree: tuple[Path, Path]) -> None:
    add_process(tree[0], OUR_PID, "leakdbt", [("R", 0), ("R", 4), ("R", 1)])
    assert procfs(tree).cotenants == ()


def test_a_process_is_reported_once_by_its_most_intimate_thread(tree: tuple[Path, Path]) -> None:
    add_process(tree[0], 3000, "threads", [("S", 0), ("R", 1), ("R", 4), ("R", 6)])
    (c,) = procfs(tree).cotenants
    assert (c.pid, c.shares, c.cpu) == (3000, "core", 4)
    assert c.evidence == "tid 3002 runnable, last ran on CPU 4 (SMT sibling of ours) " \
                         "(+2 more runnable threads)"


def test_kernel_threads_are_ignored(tree: tuple[Path, Path]) -> None:
    proc = tree[0]
    add_process(proc, 2, "kthreadd", [("R", 0)], uid=0, flags=PF_KTHREAD)
    add_process(proc, 40, "kworker/0:1", [("R", 0)], uid=0, flags=PF_KTHREAD, ppid=2)
    add_process(proc, 41, "oddkthread", [("R", 0)], uid=0, flags=0, ppid=2)
    assert procfs(tree).cotenants == ()


def test_trusted_uid_name_and_cgroup_are_ignored(tree: tuple[Path, Path]) -> None:
    proc = tree[0]
    add_process(proc, 2000, "backup", [("R", 0)], uid=34)
    add_process(proc, 2100, "our-sidecar-with-a-long-name", [("R", 0)])
    add_process(proc, 2200, "job", [("R", 0)], cgroup="/system.slice/trusted.service/x")
    add_process(proc, 2300, "setuid", [("R", 0)], uid=1000, euid=34)  # real uid not trusted
    add_process(proc, 2400, "job", [("R", 0)], cgroup="/system.slice/trusted.services")
    trust = ctx(uids=frozenset({34}),
                names=frozenset({"our-sidecar-with-a-long-name"}),  # comm: cut to 15 chars
                cgroups=frozenset({"/system.slice/trusted.service/"}))
    assert seen(procfs(tree, trust)) == {2300: "core", 2400: "core"}
    assert len(procfs(tree).cotenants) == 5


def test_affinity_decides_what_is_ours(tree: tuple[Path, Path]) -> None:
    add_process(tree[0], 2000, "a", [("R", 2)])
    add_process(tree[0], 2100, "b", [("R", 0)])
    assert seen(procfs(tree, ctx({0}))) == {2000: "machine", 2100: "core"}
    assert seen(procfs(tree, ctx({3}))) == {2000: "cache", 2100: "machine"}
    assert seen(procfs(tree, ctx({0, 6}))) == {2000: "core", 2100: "core"}


def test_odd_command_names_and_vanished_or_garbled_tasks(tree: tuple[Path, Path]) -> None:
    proc = tree[0]
    add_process(proc, 2000, "a) R 1 (b", [("R", 1)])
    add_process(proc, 2100, "gone", [("R", 0)])
    (proc / "2100/status").unlink()  # exited between the scan and the trust check
    add_process(proc, 2200, "garbled", [("R", 0)])
    for path in (proc / "2200/stat", proc / "2200/task/2200/stat"):
        path.write_text("2200 (garbled) R 1\n")
    (proc / "self").mkdir()
    t = procfs(tree)
    assert seen(t) == {2000: "cache"} and t.cotenants[0].name == "a) R 1 (b"


def test_blind_spots_are_not_taken_for_being_alone(tree: tuple[Path, Path]) -> None:
    proc, sys_root = tree
    add_process(proc, OUR_PID, "leakdbt", [("R", 0)])
    (proc / str(OUR_PID) / "ns").mkdir()
    os.symlink("pid:[4026532200]", proc / str(OUR_PID) / "ns/pid")
    (c,) = procfs(tree).cotenants
    assert (c.shares, c.name) == ("core", "unknown") and "PID namespace" in c.evidence
    (proc / "self").mkdir()
    (proc / "self/mountinfo").write_text(
        f"22 27 0:21 / {proc} rw,relatime - proc proc rw,hidepid=invisible\n")
    with pytest.raises(RuntimeError, match="hidepid=invisible"):
        procfs(tree)


# --------------------------------------------------------------------------- procfs (real)


def test_procfs_sees_a_busy_process_on_our_cpu_and_not_after_it_ends() -> None:
    cpu = min(os.sched_getaffinity(0))
    detector = create_detector("procfs", DetectorContext("", os.getpid(), frozenset({cpu})))
    busy = subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-c", "while True: pass"])
    observations: list[Tenancy] = []
    try:
        for _ in range(200):
            observations.append(detector.observe())
            # taskset runs briefly wherever it starts, before it pins itself and execs
            mine = [c for c in observations[-1].cotenants if c.pid == busy.pid and c.cpu == cpu]
            if mine:
                break
            time.sleep(0.02)
        assert mine, f"busy process {busy.pid} never seen in {len(observations)} observations"
        assert (mine[0].shares, mine[0].cpu, mine[0].uid) == ("core", cpu, os.getuid())
    finally:
        busy.kill()
        busy.wait()
    for _ in range(50):
        observations.append(detector.observe())
        if all(c.pid != busy.pid for c in observations[-1].cotenants):
            break
        time.sleep(0.02)
    assert all(c.pid != busy.pid for c in observations[-1].cotenants)
    assert all(c.pid != os.getpid() for t in observations for c in t.cotenants)


# --------------------------------------------------------------------------- cpuset


def cpuset(tmp_path: Path, isolated: str, cgroup_files: dict[str, str] | None = None,
           cpus: set[int] | None = None, hybrid: bool = False) -> Tenancy:
    sys_root = make_sys(tmp_path / "sys", CORES, LLCS, isolated)
    proc = tmp_path / "proc"
    (proc / str(OUR_PID)).mkdir(parents=True)
    (proc / str(OUR_PID) / "cgroup").write_text("3:cpuset:/\n0::/pinned/job\n")
    base = sys_root / "fs/cgroup"
    base.mkdir(parents=True)
    if hybrid:
        base = base / "unified"
        base.mkdir()
    (base / "cgroup.controllers").write_text("cpuset cpu\n")
    (base / "pinned/job").mkdir(parents=True)
    for name, text in (cgroup_files or {}).items():
        (base / "pinned/job" / name).write_text(text + "\n")
    return CpusetDetector(ctx(cpus), str(proc), str(sys_root)).observe()


def only(t: Tenancy) -> tuple[str, str] | None:
    if not t.cotenants:
        return None
    (c,) = t.cotenants
    return c.shares, c.evidence


def test_cpuset_reports_the_first_level_it_cannot_rule_out(tmp_path: Path) -> None:
    cases = [("", ("core", "not isolated: CPUs 0,4 are not reserved")),
             ("0", ("core", "not isolated: CPUs 4 are not reserved")),  # the SMT sibling
             ("0,4", ("cache", "LLC shared with CPUs not isolated: CPUs 1,5 are not reserved")),
             ("0-1,4-5", ("machine", "machine not isolated: CPUs 2-3,6-7 are not reserved")),
             ("0-7", None)]
    for i, (isolated, expected) in enumerate(cases):
        t = cpuset(tmp_path / str(i), isolated)
        assert only(t) == expected, isolated
        assert "is not a cpuset partition" in t.evidence
    assert cpuset(tmp_path / "n", "").cotenants[0].name == "unknown"


def test_cpuset_partitions(tmp_path: Path) -> None:
    part = {"cpuset.cpus.partition": "root", "cpuset.cpus.effective": "0,4"}
    t = cpuset(tmp_path / "a", "", part)
    assert only(t) is not None and only(t)[0] == "cache"  # type: ignore[index]
    assert "cgroup /pinned/job is a cpuset partition (root) of CPUs 0,4" in t.evidence
    t = cpuset(tmp_path / "b", "2-3,6-7", dict(part, **{"cpuset.cpus.effective": "0-1,4-5"}),
               hybrid=True)
    assert t.cotenants == () and "alone on 0" in t.evidence
    invalid = {"cpuset.cpus.partition": "root invalid (Cpu list in cpuset.cpus not exclusive)",
               "cpuset.cpus.effective": "0,4"}
    assert only(cpuset(tmp_path / "c", "", invalid))[0] == "core"  # type: ignore[index]
    member = {"cpuset.cpus.partition": "member", "cpuset.cpus.effective": "0-7"}
    assert only(cpuset(tmp_path / "d", "", member))[0] == "core"  # type: ignore[index]


# --------------------------------------------------------------------------- file


def write_state(path: Path, updated: float, cotenants: object) -> None:
    path.write_text(json.dumps({"updated": updated, "cotenants": cotenants}))


def test_file_fresh_state(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    write_state(state, time.time(), [{"shares": "core", "name": "batch-7", "pid": 0},
                                     {"shares": "machine", "name": "vm", "cpu": 3, "uid": 5,
                                      "evidence": "scheduler", "extra": True}])
    t = create_detector(f"file:{state}", ctx()).observe()
    assert t.cotenants == (CoTenant("core", 0, "batch-7", evidence=f"reported by {state}"),
                           CoTenant("machine", 0, "vm", 5, 3, "scheduler"))
    write_state(state, time.time() - 1, [])
    assert create_detector(f"file:{state}", ctx()).observe().cotenants == ()


def test_file_stale_missing_and_malformed_states_raise(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    now = 1_000_000.0
    detector = FileDetector(str(state), max_age=5, clock=lambda: now)
    write_state(state, now - 4, [])
    assert detector.observe().cotenants == ()
    bad: list[tuple[str, str]] = [
        (json.dumps({"updated": now - 6, "cotenants": []}), "stale: written 6.0 s old"),
        (json.dumps({"updated": now + 60, "cotenants": []}), "in the future"),
        ("{", "not JSON"),
        ("[]", "expected a JSON object"),
        (json.dumps({"cotenants": []}), "'updated' must be a Unix time"),
        (json.dumps({"updated": True, "cotenants": []}), "'updated' must be a Unix time"),
        (json.dumps({"updated": now}), "'cotenants' must be a list"),
        (json.dumps({"updated": now, "cotenants": [{"shares": "socket"}]}),
         "cotenants[0]: 'shares' must be one of core, cache, machine"),
        (json.dumps({"updated": now, "cotenants": [{"shares": "core", "pid": "7"}]}),
         "'pid' must be an integer"),
        (json.dumps({"updated": now, "cotenants": ["core"]}), "expected an object"),
    ]
    for text, message in bad:
        state.write_text(text)
        with pytest.raises(RuntimeError, match=message.replace("[", r"\[")):
            detector.observe()
    state.unlink()
    with pytest.raises(RuntimeError, match="No such file"):
        detector.observe()


def test_file_arguments(tmp_path: Path) -> None:
    d = create_detector(f"file:{tmp_path}/s.json?max_age=2.5", ctx())
    assert isinstance(d, FileDetector) and d.max_age == 2.5 and d.path == f"{tmp_path}/s.json"
    assert create_detector("file:/x", ctx()).max_age == 10  # type: ignore[attr-defined]
    for spec, message in [("file:", "file needs a path"),
                          ("file:/x?max_age=soon", "max_age must be a number"),
                          ("file:/x?max_age=0", "max_age must be positive"),
                          ("file:/x?ttl=3", "unknown parameter 'ttl'")]:
        with pytest.raises(UsageError, match=message):
            create_detector(spec, ctx())


# --------------------------------------------------------------------------- fixed, schedule


def states(detector: TenancyDetector, n: int) -> list[str]:
    out = []
    for _ in range(n):
        try:
            t = detector.observe()
        except ScriptedError:
            out.append("error")
            continue
        out.append(t.cotenants[0].shares if t.cotenants else "alone")
    return out


def test_fixed() -> None:
    for state in ("alone", "core", "cache", "machine"):
        assert states(create_detector(f"fixed:{state}", ctx()), 3) == [state] * 3
    for spec in ("fixed", "fixed:socket"):
        with pytest.raises(UsageError, match="fixed needs one of alone, core, cache, machine"):
            create_detector(spec, ctx())


def test_schedule_ticks_per_observation() -> None:
    d = create_detector("schedule:alone*3,core*2,alone*5,error*1,alone", ctx())
    assert states(d, 14) == ["alone"] * 3 + ["core"] * 2 + ["alone"] * 5 + ["error"] + \
        ["alone"] * 3
    assert states(create_detector("schedule:cache,error*2", ctx()), 4) == \
        ["cache", "error", "error", "error"]  # the last item repeats
    assert parse_ticks("core , machine*2") == [("core", 1), ("machine", 2)]


def test_schedule_timed() -> None:
    now = [50.0]
    d = ScheduleDetector(timed=[(0.0, "alone"), (0.125, "core"), (0.25, "error")],
                         clock=lambda: now[0])
    got = []
    for at in (50.0, 50.0625, 50.125, 50.1875, 50.25, 99.0):
        now[0] = at
        got.extend(states(d, 1))
    assert got == ["alone", "alone", "core", "core", "error", "error"]
    real = create_detector("schedule:@ms:0=core,100000=alone", ctx())
    assert states(real, 2) == ["core", "core"]


def test_schedule_errors() -> None:
    for spec, message in [("schedule", "needs a timeline"),
                          ("schedule:alone*0", "at least 1"),
                          ("schedule:alone*x", "must be a number"),
                          ("schedule:busy", "unknown state 'busy'"),
                          ("schedule:alone,,core", "unknown state ''"),
                          ("schedule:@ms:10=alone", "must start at 0"),
                          ("schedule:@ms:0=alone,0=core", "must increase"),
                          ("schedule:@ms:0=alone,x=core", "MILLISECONDS=STATE"),
                          ("schedule:@ms:0", "MILLISECONDS=STATE")]:
        with pytest.raises(UsageError, match=message):
            create_detector(spec, ctx())


# --------------------------------------------------------------------------- loader

TEMPLATE = '''
from leakdbt.plugin_api import DETECTOR_API_VERSION, Tenancy


class _Detector:
    def observe(self):
        return Tenancy()


class _Factory:
    name = {name!r}
    api_version = {version}
    description = "test detector"

    def create(self, context):
        if context.argument == "bad":
            raise ValueError("bad argument")
        return _Detector()


DETECTOR = _Factory()
'''


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Iterator[Path]:
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("fakedet_")]:
        del sys.modules[name]


def write(d: Path, module: str, name: str, version: str = "DETECTOR_API_VERSION") -> Candidate:
    (d / f"{module}.py").write_text(TEMPLATE.format(name=name, version=version))
    ep = EntryPoint(name=name, value=f"{module}:DETECTOR", group=ENTRY_POINT_GROUP)
    return (f"entry point {ep.name!r} ({ep.value})", ep.load)


def test_the_built_in_detectors_are_installed() -> None:
    loaded = load_detectors()
    assert {"procfs", "cpuset", "file", "fixed", "schedule"} <= set(loaded)
    assert loaded["procfs"].origin == "entry point 'procfs' (plugins.tenancy_procfs:DETECTOR)"


def test_loaded_detectors_are_created_with_their_argument(plugin_dir: Path) -> None:
    loaded = load_detectors([write(plugin_dir, "fakedet_b", "beta"),
                             write(plugin_dir, "fakedet_a", "alpha")])
    assert list(loaded) == ["alpha", "beta"]
    d = create_detector("alpha:ok", ctx(), loaded)
    assert d.observe() == Tenancy()
    with pytest.raises(UsageError) as e:
        create_detector("alpha:bad", ctx(), loaded)
    assert str(e.value) == "--detector alpha:bad: bad argument"
    with pytest.raises(UsageError) as e:
        create_detector("alhpa", ctx(), loaded)
    assert str(e.value) == ("--detector alhpa: no detector named 'alhpa' (installed: alpha, "
                            "beta); did you mean alpha?")


def test_wrong_api_version_and_duplicates_are_rejected_by_name(plugin_dir: Path) -> None:
    with pytest.raises(PluginError) as e:
        load_detectors([write(plugin_dir, "fakedet_v", "old", version="0")])
    assert str(e.value) == ("entry point 'old' (fakedet_v:DETECTOR): written for detector API "
                            "version 0; this leakdbt provides version 1")
    with pytest.raises(PluginError) as e:
        load_detectors([write(plugin_dir, "fakedet_x", "same"),
                        write(plugin_dir, "fakedet_y", "same")])
    assert str(e.value) == ("detector 'same' is defined twice: by entry point 'same' "
                            "(fakedet_x:DETECTOR) and by entry point 'same' (fakedet_y:DETECTOR)")


def test_incomplete_broken_and_badly_named_detectors_are_rejected(plugin_dir: Path) -> None:
    (plugin_dir / "fakedet_half.py").write_text(
        "class F:\n    name = 'half'\n    api_version = 1\nDETECTOR = F()\n")
    (plugin_dir / "fakedet_broken.py").write_text("import no_such_module_here\n")
    (plugin_dir / "fakedet_none.py").write_text("X = 1\n")
    (plugin_dir / "fakedet_colon.py").write_text(
        TEMPLATE.format(name="a:b", version="DETECTOR_API_VERSION"))
    (plugin_dir / "fakedet_notdet.py").write_text(
        TEMPLATE.format(name="nd", version="DETECTOR_API_VERSION")
        .replace("return _Detector()", "return 42"))
    cases = {
        "fakedet_half:DETECTOR": "not a detector factory (missing description, create)",
        "fakedet_broken": "cannot be loaded: ModuleNotFoundError",
        "fakedet_none": "defines no DETECTOR",
        "fakedet_colon": "the detector name must be a non-empty string without ':'",
    }
    for value, expected in cases.items():
        ep = EntryPoint(name="x", value=value, group=ENTRY_POINT_GROUP)
        with pytest.raises(PluginError) as e:
            load_detectors([(f"entry point 'x' ({value})", ep.load)])
        assert str(e.value).startswith(f"entry point 'x' ({value}): {expected}")
    ep = EntryPoint(name="nd", value="fakedet_notdet", group=ENTRY_POINT_GROUP)
    loaded = load_detectors([("entry point 'nd' (fakedet_notdet)", ep.load)])
    with pytest.raises(PluginError, match="create\\(\\) returned int, which has no observe"):
        create_detector("nd", ctx(), loaded)


def test_default_context() -> None:
    c = default_context(trusted_uids=[0], trusted_names=["cron"], trusted_cgroups=["/sys"])
    assert c.pid == os.getpid() and c.cpus == frozenset(os.sched_getaffinity(0))
    assert (c.argument, c.trusted_uids, c.trusted_names, c.trusted_cgroups) == \
        ("", {0}, {"cron"}, {"/sys"})
