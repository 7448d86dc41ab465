"""Threads, signals and processes (issue 17): a section of ``make bench``, alone with
``python bench/run.py threads`` or ``python bench/processes.py``.

Every table runs its configurations side by side, interleaved (one run of each per round,
the order reversed every other round), so that the load of this shared machine falls on all
of them alike.  Figures are medians over the rounds.  Times:

- **guest CPU**: leakdbt's own CPU time (user + system, every host thread of it) from its
  command line's start to its exit, read by a launcher (:data:`LAUNCHER`) that runs
  ``leakdbt.cli.main``; interpreter start-up and imports are left out.  The launcher also
  reads the number of thread switches from the scheduler (``ThreadGroup.switches``);
- **CPU**: the whole child process's CPU time (user + system, ``RUSAGE_CHILDREN``, which
  includes the children it waited for: the spawn table's forked copies);
- **wall**: whole-process wall time, given for reference only (on a loaded machine it
  measures the load as much as the run).

Tables:

1. the same CPU-bound sum in the main thread, in 1 worker thread and split over 4 worker
   threads (test_binaries/bench_threads.c), under leakdbt and natively (natively with
   ``NATIVE_SCALE`` times the work, so that it takes measurable time).  leakdbt's threads
   take turns on one engine: no speed-up is expected, the ratio is the overhead.  The work's
   time is each run's minus that of a run with no work (start-up, loading, exit);
2. the cost of a thread switch: the 4-thread program at quanta of 1,000, 10,000 and 100,000
   instructions (``LEAKDBT_QUANTUM``), guest CPU time fitted against the switch count
   (least squares): the slope is the cost of a preemptive switch, the engine stop and
   restart included.  And a blocking switch: a byte passed back and forth between two
   threads through two pipes (bench_pingpong.c), time fitted against round trips;
3. the cost of a signal delivery: N ``kill(getpid(), SIGUSR1)`` into a handler against the
   same N ``kill(getpid(), 0)``, which deliver nothing (bench_signals.c);
4. ``fork`` + ``exec`` + ``waitpid`` of /bin/true (bench_spawn.c), time fitted against the
   number of children: leakdbt (the child is a forked copy of leakdbt emulating /bin/true),
   native, and qemu-user, which does not follow ``execve``: its child runs /bin/true
   natively; a second qemu row execs ``qemu-x86_64 /bin/true`` so that the child is
   emulated too;
5. plain single-threaded exec against an older tree (``LEAKDBT_REFERENCE=DIR``, e.g. a
   ``git archive`` of the commit before threads, installed with ``make install binaries``):
   the sha256 and modexp rows of the first table of docs/benchmarks.md, both trees'
   ``leakdbt exec`` on the same static programs, interleaved.  Skipped without the variable.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STATIC = REPO / "test_binaries" / "build" / "static"
ROUNDS = max(3, int(os.environ.get("BENCH_REPEAT", "3")) + 2)
THREAD_WORK = 100_000_000  # loop iterations of the threads table (4 guest insns each)
SWITCH_WORK = 20_000_000  # and of the switch table (80,000 switches at a quantum of 1,000)
NATIVE_SCALE = 10
QUANTA = (1_000, 10_000, 100_000)
MARK = "LEAKDBT-BENCH "

LAUNCHER = """\
import atexit, json, os, sys, time
import leakdbt
from leakdbt.cli import main
seen = []
try:
    from leakdbt.linux import threads
except ImportError:
    threads = None
if threads is not None and hasattr(threads, "ThreadGroup"):
    init = threads.ThreadGroup.__init__
    def counting_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        seen.append(self)
    threads.ThreadGroup.__init__ = counting_init
started = time.process_time()
def report():
    sys.stderr.write("\\n@MARK@" + json.dumps({
        "cpu": time.process_time() - started,
        "switches": sum(g.switches for g in seen),
        "tree": os.path.dirname(os.path.dirname(os.path.abspath(leakdbt.__file__)))}) + "\\n")
atexit.register(report)
sys.argv[0] = "leakdbt"
main()
""".replace("@MARK@", MARK)
"""``python -c LAUNCHER exec ...``: runs leakdbt's command line and, at exit, writes one
line ``MARK + json`` to stderr (its CPU time since the command line started, the guest
thread switches, and the tree its leakdbt package was imported from).  Trees without threads
(an older reference) report 0 switches."""


@dataclass
class Sample:
    wall: float
    cpu: float  # the whole child process's (and its waited-for children's) user + system
    guest_cpu: float | None = None  # leakdbt's, from the launcher
    switches: int | None = None


@dataclass
class Report:
    cpu: float
    switches: int
    tree: str


def parse_report(stderr: str) -> Report:
    """The launcher's report: the last line of ``stderr`` starting with MARK."""
    for line in reversed(stderr.splitlines()):
        if line.startswith(MARK):
            report = json.loads(line[len(MARK):])
            return Report(float(report["cpu"]), int(report["switches"]), str(report["tree"]))
    raise ValueError("no leakdbt bench report on stderr (did leakdbt exit abnormally?)")


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares line through the points: (slope, intercept)."""
    if len(xs) != len(ys) or len(set(xs)) < 2:
        raise ValueError("a line needs points at two different x at least")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return slope, my - slope * mx


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Runner:
    """One configuration: argv, its environment, and the output it must print."""

    argv: list[str]
    env: dict[str, str] | None = None
    expected: bytes | None = None
    tree: Path | None = None  # runs leakdbt of this tree through LAUNCHER: has guest_cpu

    def run(self) -> Sample:
        before = children_cpu()
        start = time.perf_counter()
        done = subprocess.run(self.argv, capture_output=True, env=self.env, cwd=self.tree)
        wall = time.perf_counter() - start
        cpu = children_cpu() - before
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(self.argv)} exited {done.returncode}: "
                             f"{done.stderr.decode(errors='replace')[-500:]}")
        if self.expected is not None and done.stdout != self.expected:
            raise SystemExit(f"{' '.join(self.argv)} printed {done.stdout[:200]!r}, "
                             f"not {self.expected[:200]!r}")
        if self.tree is None:
            return Sample(wall, cpu)
        report = parse_report(done.stderr.decode(errors="replace"))
        if Path(report.tree).resolve() != self.tree.resolve():
            raise SystemExit(f"leakdbt was imported from {report.tree}, not {self.tree}")
        return Sample(wall, cpu, report.cpu, report.switches)


def interleaved(runners: dict[str, Runner], rounds: int = ROUNDS) -> dict[str, list[Sample]]:
    """Each runner once per round, the order reversed every other round."""
    samples: dict[str, list[Sample]] = {name: [] for name in runners}
    names = list(runners)
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            samples[name].append(runners[name].run())
    return samples


def med(samples: list[Sample], field: str) -> float:
    return statistics.median(float(getattr(s, field)) for s in samples)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (5 min: {five:.1f}) on {os.cpu_count()} cores"


def leakdbt_runner(python: str, args: list[str], expected: bytes | None = None,
                   env: dict[str, str] | None = None, tree: Path = REPO) -> Runner:
    """``leakdbt exec ARGS`` of ``tree`` through the launcher, run in ``tree`` (``python -c``
    puts the working directory first on the module path)."""
    environ = dict(os.environ, **(env or {}), PYTHONPATH=str(tree))
    return Runner([python, "-c", LAUNCHER, "exec", *args], environ, expected, tree)


def native_output(argv: list[str]) -> bytes:
    return subprocess.run(argv, capture_output=True, check=True).stdout


# -- 1. threads vs one thread -----------------------------------------------------------------


def threads_table(python: str, _qemu: str | None) -> None:
    exe = str(STATIC / "bench_threads")
    configs = {"main thread only": "0", "1 worker thread": "1", "4 worker threads": "4"}
    runners: dict[str, Runner] = {}
    for label, threads in {"no work (start-up and exit)": "0", **configs}.items():
        for scale, kind in ((1, "leakdbt"), (NATIVE_SCALE, "native")):
            argv = [exe, threads, str(THREAD_WORK * scale if label in configs else 0)]
            want = native_output(argv)
            runners[f"{kind}|{label}"] = (leakdbt_runner(python, argv, want) if kind == "leakdbt"
                                          else Runner(argv, None, want))
    print(f"\n### Threads: one CPU-bound sum, split over threads ({ROUNDS} interleaved rounds)\n")
    print(f"{load()} at the start.  bench_threads: {THREAD_WORK:,} loop iterations under "
          f"leakdbt (quantum {os.environ.get('LEAKDBT_QUANTUM', '100,000 (default)')}), "
          f"{THREAD_WORK * NATIVE_SCALE:,} natively.\n")
    samples = interleaved(runners)
    print("The work's time is the run's minus the no-work run's (medians): leakdbt's guest "
          "CPU, the native process's CPU.\n")
    print("| runner | threads | guest CPU (s) | process CPU (s) | wall (s) | switches | "
          "work (s) | work vs main thread |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in ("leakdbt", "native"):
        field = "guest_cpu" if kind == "leakdbt" else "cpu"
        empty = med(samples[f"{kind}|no work (start-up and exit)"], field)
        base = med(samples[f"{kind}|main thread only"], field) - empty
        for label in ("no work (start-up and exit)", *configs):
            s = samples[f"{kind}|{label}"]
            work = med(s, field) - empty
            ratio = f"{work:.3f} | {work / base:.2f}x" if label in configs else "— | —"
            guest = f"{med(s, 'guest_cpu'):.3f}" if kind == "leakdbt" else "—"
            switches = f"{med(s, 'switches'):.0f}" if kind == "leakdbt" else "—"
            print(f"| {kind} | {label} | {guest} | {med(s, 'cpu'):.3f} | "
                  f"{med(s, 'wall'):.3f} | {switches} | {ratio} |", flush=True)
    print(f"\n{load()} at the end.")


# -- 2. thread switches -----------------------------------------------------------------------


def switch_table(python: str, _qemu: str | None) -> None:
    exe = str(STATIC / "bench_threads")
    argv = [exe, "4", str(SWITCH_WORK)]
    want = native_output(argv)
    runners = {str(q): leakdbt_runner(python, argv, want, {"LEAKDBT_QUANTUM": str(q)})
               for q in QUANTA}
    print(f"\n### Thread switches ({ROUNDS} interleaved rounds)\n")
    print(f"{load()} at the start.\n")
    samples = interleaved(runners)
    print("Preemptive: bench_threads 4 at three quanta; guest CPU fitted against the "
          "switches counted by the scheduler (every sample a point).\n")
    print("| quantum (insns) | switches | guest CPU (s) | process CPU (s) | wall (s) |")
    print("|---|---|---|---|---|")
    xs: list[float] = []
    ys: list[float] = []
    for q in QUANTA:
        s = samples[str(q)]
        xs += [float(x.switches or 0) for x in s]
        ys += [float(x.guest_cpu or 0.0) for x in s]
        print(f"| {q:,} | {med(s, 'switches'):.0f} | {med(s, 'guest_cpu'):.3f} | "
              f"{med(s, 'cpu'):.3f} | {med(s, 'wall'):.3f} |")
    slope, intercept = fit_line(xs, ys)
    print(f"\nFit: {slope * 1e6:.1f} µs of guest CPU per preemptive switch "
          f"(intercept {intercept:.3f} s: the run with no switch).")
    pingpong_table(python)
    print(f"\n{load()} at the end.")


def pingpong_table(python: str) -> None:
    exe = str(STATIC / "bench_pingpong")
    counts = {"leakdbt": (200, 1000), "native": (2000, 20000)}
    runners: dict[str, Runner] = {}
    for kind, ns in counts.items():
        for n in ns:
            argv = [exe, str(n)]
            want = native_output(argv)
            runners[f"{kind}|{n}"] = (leakdbt_runner(python, argv, want) if kind == "leakdbt"
                                      else Runner(argv, None, want))
    samples = interleaved(runners)
    print("\nBlocking: bench_pingpong N, one byte back and forth through two pipes; time "
          "fitted against N (every sample a point).  A round trip is two blocking reads "
          "(two switches) and four system calls.\n")
    print("| runner | N | guest CPU (s) | process CPU (s) | wall (s) |")
    print("|---|---|---|---|---|")
    fits = {}
    for kind, ns in counts.items():
        field = "guest_cpu" if kind == "leakdbt" else "cpu"
        xs, ys = [], []
        for n in ns:
            s = samples[f"{kind}|{n}"]
            xs += [float(n)] * len(s)
            ys += [float(getattr(x, field)) for x in s]
            guest = f"{med(s, 'guest_cpu'):.3f}" if kind == "leakdbt" else "—"
            print(f"| {kind} | {n:,} | {guest} | {med(s, 'cpu'):.3f} | {med(s, 'wall'):.3f} |")
        fits[kind] = fit_line(xs, ys)[0]
    print(f"\nFit: leakdbt {fits['leakdbt'] * 1e6:.1f} µs of guest CPU per round trip; "
          f"native {fits['native'] * 1e6:.2f} µs of process CPU per round trip.")


# -- 3. signals -------------------------------------------------------------------------------


def signal_table(python: str, qemu: str | None) -> None:
    exe = str(STATIC / "bench_signals")
    counts = {"leakdbt": 2000, "native": 200_000, "qemu-user": 200_000}
    runners: dict[str, Runner] = {}
    for kind, n in counts.items():
        if kind == "qemu-user" and qemu is None:
            continue
        for sig in ("10", "0"):
            argv = [exe, str(n), sig]
            want = native_output(argv)
            runners[f"{kind}|{sig}"] = (
                leakdbt_runner(python, argv, want) if kind == "leakdbt"
                else Runner(([qemu] if kind == "qemu-user" and qemu else []) + argv, None, want))
    print(f"\n### Signal delivery ({ROUNDS} interleaved rounds)\n")
    print(f"{load()} at the start.  bench_signals N SIG: N kill(getpid(), SIGUSR1) into a "
          "handler, against N kill(getpid(), 0) (nothing delivered).\n")
    samples = interleaved(runners)
    print("| runner | N | time with SIGUSR1 (s) | time with signal 0 (s) | per delivery (µs) | "
          "wall with SIGUSR1 / signal 0 (s) |")
    print("|---|---|---|---|---|---|")
    for kind, n in counts.items():
        if f"{kind}|0" not in samples:
            continue
        field = "guest_cpu" if kind == "leakdbt" else "cpu"
        with_sig, without = med(samples[f"{kind}|10"], field), med(samples[f"{kind}|0"], field)
        what = "guest CPU" if kind == "leakdbt" else "process CPU"
        print(f"| {kind} ({what}) | {n:,} | {with_sig:.3f} | {without:.3f} | "
              f"{(with_sig - without) / n * 1e6:.2f} | "
              f"{med(samples[f'{kind}|10'], 'wall'):.3f} / "
              f"{med(samples[f'{kind}|0'], 'wall'):.3f} |", flush=True)
    print(f"\n{load()} at the end.")


# -- 4. fork + exec ---------------------------------------------------------------------------


def spawn_table(python: str, qemu: str | None) -> None:
    exe = str(STATIC / "bench_spawn")
    true = shutil.which("true") or "/bin/true"
    kinds: dict[str, tuple[list[str], list[str], tuple[int, int]]] = {
        "leakdbt": ([], [true], (2, 12)),
        "native": ([], [true], (10, 400)),
    }
    if qemu:
        kinds["qemu-user (child runs natively)"] = ([qemu], [true], (10, 400))
        kinds["qemu-user (child execs qemu-x86_64 /bin/true)"] = ([qemu], [qemu, true],
                                                                  (10, 100))
    runners: dict[str, Runner] = {}
    for kind, (prefix, target, ns) in kinds.items():
        for n in ns:
            argv = [exe, str(n), *target]
            want = f"{n} of {n} exited 0\n".encode()
            runners[f"{kind}|{n}"] = (leakdbt_runner(python, argv, want) if kind == "leakdbt"
                                      else Runner([*prefix, *argv], None, want))
    print(f"\n### fork + exec of {true} ({ROUNDS} interleaved rounds)\n")
    print(f"{load()} at the start.  bench_spawn N: N times fork, execv, waitpid; process "
          "CPU (the children's included) and wall fitted against N (every sample a point).\n")
    samples = interleaved(runners)
    print("| runner | N | process CPU (s) | wall (s) | per fork+exec, CPU (ms) | "
          "per fork+exec, wall (ms) |")
    print("|---|---|---|---|---|---|")
    for kind, (_, _, ns) in kinds.items():
        per = {}
        for field in ("cpu", "wall"):
            xs = [float(n) for n in ns for _ in samples[f"{kind}|{n}"]]
            ys = [float(getattr(s, field)) for n in ns for s in samples[f"{kind}|{n}"]]
            per[field] = fit_line(xs, ys)[0]
        for n in ns:
            s = samples[f"{kind}|{n}"]
            print(f"| {kind} | {n} | {med(s, 'cpu'):.3f} | {med(s, 'wall'):.3f} | "
                  f"{per['cpu'] * 1e3:.2f} | {per['wall'] * 1e3:.2f} |", flush=True)
    print(f"\n{load()} at the end.")


# -- 5. single-threaded exec against an older tree --------------------------------------------


def reference_table(python: str, _qemu: str | None) -> None:
    reference = os.environ.get("LEAKDBT_REFERENCE")
    print("\n### Single-threaded exec: this tree against LEAKDBT_REFERENCE\n")
    if not reference:
        print("Skipped: set LEAKDBT_REFERENCE to an older installed leakdbt tree.")
        return
    ref = Path(reference).resolve()
    ref_python = ref / ".venv" / "bin" / "python"
    trees = {"this tree": (python, REPO),
             "reference": (str(ref_python) if ref_python.exists() else python, ref)}
    workloads = {"sha256 32 MiB": ["sha256", "32"], "modexp 300k": ["modexp", "300000"]}
    runners: dict[str, Runner] = {}
    for label, (prog, *args) in workloads.items():
        argv = [str(STATIC / prog), *args]
        want = native_output(argv)
        for tree, (py, root) in trees.items():
            runners[f"{label}|{tree}"] = leakdbt_runner(py, argv, want, tree=root)
    print(f"{load()} at the start; reference: {ref}.\n")
    samples = interleaved(runners)
    print("| workload | tree | wall (s) | process CPU (s) | guest CPU (s) | "
          "guest CPU vs reference | process CPU min–max (s) |")
    print("|---|---|---|---|---|---|---|")
    for label in workloads:
        base = med(samples[f"{label}|reference"], "guest_cpu")
        for tree in trees:
            s = samples[f"{label}|{tree}"]
            cpus = [x.cpu for x in s]
            print(f"| {label} | {tree} | {med(s, 'wall'):.3f} | {med(s, 'cpu'):.3f} | "
                  f"{med(s, 'guest_cpu'):.3f} | {med(s, 'guest_cpu') / base:.3f}x | "
                  f"{min(cpus):.3f}–{max(cpus):.3f} |", flush=True)
    print(f"\n{load()} at the end.")


SECTIONS = {"threads": threads_table, "switches": switch_table, "signals": signal_table,
            "spawn": spawn_table, "reference": reference_table}


def run(python: str, only: Sequence[str] = ()) -> None:
    """The section: every table, or those named in ``only`` (keys of SECTIONS)."""
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"unknown table(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(SECTIONS)}")
    qemu = shutil.which("qemu-x86_64")
    print("\n## Threads, signals and processes (issue 17)")
    for name, table in SECTIONS.items():
        if only and name not in only:
            continue
        table(python, qemu)


if __name__ == "__main__":
    run(str(REPO / ".venv" / "bin" / "python"), sys.argv[1:])
