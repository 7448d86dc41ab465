"""``make bench``: leakdbt vs native vs qemu-user vs raw Unicorn, measured side by side.

Each workload runs REPEAT times per runner; the median wall time is reported, with ratios to
native and to the fastest raw-Unicorn configuration.  Raw Unicorn runs the same static image
with only the hooks a program cannot do without (a ``syscall`` hook; plus the TLB-fill hook in
the configuration that needs it).  Results are printed as a Markdown table.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "test_binaries" / "build" / "static"
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
STARTUP_REPEAT = max(5, int(os.environ.get("BENCH_STARTUP_REPEAT", "11")))
WORKLOADS = {
    "sha256 32 MiB": ("sha256", ["32"]),
    "modexp 300k": ("modexp", ["300000"]),
}


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, bytes]:
    start = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, check=True, env=env)
    return time.perf_counter() - start, p.stdout


def raw_unicorn(exe: str, args: list[str], virtual_tlb: bool) -> bytes:
    """Run a static non-PIE program on bare Unicorn; return its stdout."""
    from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_HOOK_TLB_FILL, UC_MODE_64, Uc
    from unicorn import x86_const as x

    from leakdbt.loader.elf import load_image

    img = load_image(exe)
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    regions: list[tuple[int, int, int]] = []

    def mmap(addr: int, size: int, prot: int) -> None:
        uc.mem_map(addr, size, prot if virtual_tlb else 7)
        regions.append((addr, addr + size, prot))

    for seg in img.segments:
        lo, hi = seg.vaddr & ~0xFFF, (seg.end + 0xFFF) & ~0xFFF
        f = seg.flags
        prot = (1 if f & 4 else 0) | (2 if f & 2 else 0) | (4 if f & 1 else 0)
        mmap(lo, hi - lo, prot)
        uc.mem_write(seg.vaddr, img.data[seg.offset:seg.offset + seg.filesz])
    brk = [max(r[1] for r in regions)]
    top = 0x7FFF_FFFF_F000
    mmap(top - (8 << 20), 8 << 20, 3)
    argv = [exe.encode(), *(a.encode() for a in args)]
    sp = top - 4096
    ptrs = []
    for a in argv:
        uc.mem_write(sp, a + b"\0")
        ptrs.append(sp)
        sp += len(a) + 1
    phdr = next(s.vaddr + img.phoff - s.offset for s in img.segments
                if s.offset <= img.phoff < s.offset + s.filesz)
    words = [len(argv), *ptrs, 0, 0, 3, phdr, 4, img.phentsize, 5, img.phnum, 6, 4096,
             25, top - 4096, 0, 0]
    sp = (top - 8192) & ~0xF
    uc.mem_write(sp, struct.pack(f"<{len(words)}Q", *words))
    uc.reg_write(x.UC_X86_REG_RSP, sp)
    out = bytearray()
    exited: list[bool] = []
    next_map = [0x7000_0000_0000]

    def syscall(uc: Uc, _ud: object) -> None:
        nr = uc.reg_read(x.UC_X86_REG_RAX)
        a = [uc.reg_read(r) for r in (x.UC_X86_REG_RDI, x.UC_X86_REG_RSI, x.UC_X86_REG_RDX)]
        ret = -38
        if nr == 1:
            out.extend(uc.mem_read(a[1], a[2]))
            ret = a[2]
        elif nr == 10:  # mprotect: RELRO only; permissions stay as mapped
            ret = 0
        elif nr == 20:
            ret = 0
            for i in range(a[2]):
                base, size = struct.unpack("<QQ", uc.mem_read(a[1] + 16 * i, 16))
                out.extend(uc.mem_read(base, size))
                ret += size
        elif nr == 12:
            if a[0] > brk[0]:
                new = (a[0] + 0xFFF) & ~0xFFF
                mmap(brk[0], new - brk[0], 3)
                brk[0] = new
            ret = brk[0] if a[0] == 0 else a[0]
        elif nr == 9:
            size = (a[1] + 0xFFF) & ~0xFFF
            mmap(next_map[0], size, 3)
            ret, next_map[0] = next_map[0], next_map[0] + size
        elif nr == 158 and a[0] == 0x1002:
            uc.reg_write(x.UC_X86_REG_FS_BASE, a[1])
            ret = 0
        elif nr in (60, 231):
            exited.append(True)
            uc.emu_stop()
            return
        uc.reg_write(x.UC_X86_REG_RAX, ret & (2**64 - 1))

    uc.hook_add(UC_HOOK_INSN, syscall, None, 1, 0, x.UC_X86_INS_SYSCALL)
    if virtual_tlb:
        from unicorn import UC_TLB_VIRTUAL

        uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)

        def fill(uc: Uc, vaddr: int, access: int, entry: object, _ud: object) -> bool:
            for lo, hi, prot in regions:
                if lo <= vaddr < hi:
                    entry.paddr = vaddr & ~0xFFF  # type: ignore[attr-defined]
                    entry.perms = prot  # type: ignore[attr-defined]
                    return True
            return False

        uc.hook_add(UC_HOOK_TLB_FILL, fill)
    try:
        uc.emu_start(img.entry, 0xFFFF_FFFF_FFFF_FFFF)
    except Exception:
        if not exited:  # stopping from a syscall hook may surface as an engine error
            raise
    return bytes(out)


def raw_main() -> None:
    mode, exe, *args = sys.argv[2:]
    sys.stdout.buffer.write(raw_unicorn(exe, args, mode == "vtlb"))


def main() -> None:
    leakdbt = [str(REPO / ".venv" / "bin" / "leakdbt"), "exec"]
    qemu = shutil.which("qemu-x86_64")
    py = [sys.executable, __file__, "--raw"]
    runners: dict[str, list[str] | None] = {
        "native": [],
        "qemu-user": [qemu] if qemu else None,
        "raw Unicorn (default TLB, RWX)": [*py, "default"],
        "raw Unicorn (real perms + virtual TLB)": [*py, "vtlb"],
        "leakdbt exec": leakdbt,
    }
    print(f"machine: {os.cpu_count()} cores; median of {REPEAT} runs; wall time in seconds\n")
    print("| workload | runner | time (s) | vs native | vs best raw Unicorn |")
    print("|---|---|---|---|---|")
    for label, (prog, args) in WORKLOADS.items():
        exe = str(BUILD / prog)
        times: dict[str, float] = {}
        expected = None
        for name, prefix in runners.items():
            if prefix is None:
                continue
            samples = []
            for _ in range(REPEAT):
                t, out = timed([*prefix, exe, *args])
                expected = expected or out
                if out != expected:
                    raise SystemExit(f"{name} printed different output for {label}")
                samples.append(t)
            times[name] = statistics.median(samples)
        best_raw = min(v for k, v in times.items() if k.startswith("raw"))
        for name, t in times.items():
            print(f"| {label} | {name} | {t:.3f} | {t / times['native']:.1f}x | "
                  f"{t / best_raw:.2f}x |")
    startup_bench(leakdbt)
    translation_bench(leakdbt)
    hardening_bench(leakdbt)
    equivalent_bench(leakdbt)
    check_bench(leakdbt)
    long_check_bench(leakdbt[:1])
    adaptive_bench(leakdbt)
    analyze_bench(leakdbt)
    limits_bench(leakdbt)
    harden_file_bench(leakdbt[:1])
    suite_bench(leakdbt[:1])
    processes_bench()
    corpus_bench(leakdbt)
    public_bench(leakdbt)


def limits_bench(leakdbt: list[str]) -> None:
    """The cost of counting instructions: a plain run vs the same run under --max-insns
    (a limit it never reaches) and --count-insns, with the native block counter, and
    --max-insns with the Python block counter that replaces it when it is not built.  A
    hot loop of tiny blocks (the worst case for a per-block count) and a program of long
    blocks; runs interleaved, median wall time and median CPU time (user + system)."""
    import resource

    python_counter = [str(REPO / ".venv" / "bin" / "python"), "-c",
                      "import sys; from leakdbt.machine.machine import Machine; "
                      "Machine.native_counting = False; from leakdbt.cli import main; "
                      "main(sys.argv[1:])", *leakdbt[1:]]
    variants = {"plain": [], "--max-insns (never reached)": ["--max-insns", str(1 << 40)],
                "--count-insns": ["--count-insns"]}

    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    for label, name, args in (("region_loop 20000000 (tight loop)", "region_loop",
                               ["20000000"]),
                              ("sha256 4 MiB (long blocks)", "sha256", ["4"])):
        exe = str(BUILD / name)
        runners = {k: [*leakdbt, *v, exe, *args] for k, v in variants.items()}
        runners["--max-insns, Python block counter"] = [*python_counter, "--max-insns",
                                                        str(1 << 40), exe, *args]
        wall: dict[str, list[float]] = {k: [] for k in runners}
        cpu: dict[str, list[float]] = {k: [] for k in runners}
        expected = None
        for _ in range(REPEAT):
            for k, argv in runners.items():
                before = children_cpu()
                t, out = timed(argv)
                cpu[k].append(children_cpu() - before)
                wall[k].append(t)
                expected = expected or out
                if out != expected:
                    raise SystemExit(f"{k} changed {name}'s output")
        w = {k: statistics.median(v) for k, v in wall.items()}
        c = {k: statistics.median(v) for k, v in cpu.items()}
        print(f"\n### Counting instructions: {label}, median of {REPEAT} interleaved runs\n")
        print("| run | wall (s) | wall vs plain | CPU (s) | CPU vs plain |\n|---|---|---|---|---|")
        for k in runners:
            print(f"| {k} | {w[k]:.3f} | {w[k] / w['plain']:.2f}x | {c[k]:.3f} | "
                  f"{c[k] / c['plain']:.2f}x |", flush=True)


def startup_bench(leakdbt: list[str]) -> None:
    """Static hello-world, whole process: leakdbt exec vs a bare Unicorn script
    (bench/bare_unicorn.py) vs native, interleaved so that load changes hit all three.
    Wall time, and the child's CPU time (user + system), which other load disturbs less."""
    import resource
    import tempfile

    hello = str(BUILD / "hello")
    runners = {"native": [hello],
               "bare Unicorn script": [sys.executable, str(REPO / "bench" / "bare_unicorn.py"),
                                       hello],
               "leakdbt exec": [*leakdbt, hello]}
    wall: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    expected = None

    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    # Bytecode is cached, as after an install (PYTHONDONTWRITEBYTECODE would recompile every
    # leakdbt module on every start); the cache lives in a scratch directory, warmed once.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory() as cache:
        env["PYTHONPYCACHEPREFIX"] = cache
        for argv in runners.values():
            timed(argv, env)
        for _ in range(STARTUP_REPEAT):
            for name, argv in runners.items():
                before = children_cpu()
                t, out = timed(argv, env)
                cpu[name].append(children_cpu() - before)
                expected = expected or out
                if out != expected:
                    raise SystemExit(f"{name} printed different output for hello")
                wall[name].append(t)
    w = {name: statistics.median(times) for name, times in wall.items()}
    c = {name: statistics.median(times) for name, times in cpu.items()}
    bare = "bare Unicorn script"
    print(f"\n### Start-up: static hello-world, whole process (median of {STARTUP_REPEAT} "
          "interleaved runs)\n")
    print("| runner | wall (s) | best wall (s) | wall vs native | wall vs bare Unicorn "
          "| CPU (s) | CPU vs bare Unicorn |")
    print("|---|---|---|---|---|---|---|")
    for name in runners:
        print(f"| {name} | {w[name]:.3f} | {min(wall[name]):.3f} | "
              f"{w[name] / w['native']:.0f}x | {w[name] / w[bare]:.2f}x | {c[name]:.3f} | "
              f"{c[name] / c[bare]:.2f}x |")


def median_time(argv: list[str], expected: bytes | None = None) -> tuple[float, bytes]:
    samples, out = [], b""
    for _ in range(REPEAT):
        t, out = timed(argv)
        if expected is not None and out != expected:
            raise SystemExit(f"different output from {' '.join(argv)}")
        samples.append(t)
    return statistics.median(samples), out


def translation_bench(leakdbt: list[str]) -> None:
    """Contract regions in fast and hardened (identity) mode, and --translate-all."""
    exe = str(BUILD / "region_loop")
    contract = ["--contract", str(REPO / "contracts" / "region_loop.toml")]
    modes = {"--contract --mode fast": ["--mode", "fast"],
             "--contract --mode hardened (entry jumps)": ["--mode", "hardened"],
             "--contract --mode hardened --stats (entry hooks, counted)":
             ["--mode", "hardened", "--stats"]}
    for calls, labels in ((20_000_000, list(modes)[:2]), (1_000_000, list(modes))):
        print(f"\n### Translation: region_loop, {calls:,} region entries (static)\n")
        print("| runner | time (s) | vs plain exec | per region entry vs fast (µs) |")
        print("|---|---|---|---|")
        plain, out = median_time([*leakdbt, exe, str(calls)])
        print(f"| plain leakdbt exec | {plain:.3f} | 1.000x | |")
        fast = 0.0
        for label in labels:
            t = median_time([*leakdbt, *contract, *modes[label], exe, str(calls)], out)[0]
            fast = fast or t
            per = f"{(t - fast) / calls * 1e6:.3f}" if t is not fast else ""
            print(f"| {label} | {t:.3f} | {t / plain:.3f}x | {per} |")
    calls = 3_000_000
    print("\n### --translate-all, whole program (static)\n")
    print("| workload | plain exec (s) | --translate-all (s) | ratio |")
    print("|---|---|---|---|")
    for label, (prog, args) in {**WORKLOADS, "region_loop 3M": ("region_loop", [str(calls)]),
                                "hello": ("hello", [])}.items():
        exe = str(BUILD / prog)
        plain, out = median_time([*leakdbt, exe, *args])
        every = median_time([*leakdbt, "--translate-all", exe, *args], out)[0]
        print(f"| {label} | {plain:.3f} | {every:.3f} | {every / plain:.2f}x |")


HARDENING = {  # program -> a secret (argv[1]) for the hardening bench
    "ct_modexp": "0123456789abcdef",
    "idea_mul": "0123456789abcdef0011223344556677",
    "mac_verify": "bb72509640bec05a5283b4422cda9c97",
    "sbox_round": "2b7e151628aed2a6abf7158809cf4f3c",
    "ttable_round": "2b7e151628aed2a6abf7158809cf4f3c",
    "secret_div": "fffffffffffffffd",
    "fp_secret": "c0de",
}


def region_instructions(exe: str, contract: str, secret: str | list[str], mode: str) -> int:
    """Guest instructions executed inside the contract's regions (original code in fast
    mode, the hardened copies — and the entry jumps — in hardened mode), counted
    in-process; ``secret``: the program's argument, or its arguments."""
    sys.path.insert(0, str(REPO))
    from leakdbt.contract import load
    from leakdbt.contract.profiles import get_profile
    from leakdbt.dbt.dispatch import Mode
    from leakdbt.leakage.findings import LeakKind
    from leakdbt.leakage.observe import RunObserver
    from leakdbt.run.protect import protection
    from leakdbt.run.session import ExecOptions, execute

    protected = protection(load(contract, binary=exe), get_profile(BENCH_CPU))
    observers: list[RunObserver] = []
    options = ExecOptions(
        argv=[exe, *([secret] if isinstance(secret, str) else secret)], env=[], mode=Mode(mode),
        regions=protected.regions, hardener=protected.hardener(),
        on_start=lambda m, d: observers.append(
            RunObserver(m, [LeakKind.CONTROL_FLOW], 64, [], None, ranges=d.code_ranges())))
    with open(os.devnull, "w") as null:
        saved = os.dup(1)
        os.dup2(null.fileno(), 1)
        try:
            execute(exe, options)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
    return observers[0].trace.instructions


BENCH_CPU = "intel-skylake"  # every latency class variable: every pass runs
CHANGES_RESULTS = {"fp_secret"}  # FTZ/DAZ changes results on subnormals, by design


def guest_instructions(argv: list[str]) -> int:
    p = subprocess.run([*argv[:2], "--count-insns", "--stats", *argv[2:]],
                       capture_output=True, text=True, check=True)
    return int(next(line.split(":")[1] for line in p.stderr.splitlines()
                    if "guest instructions" in line))


def hardening_bench(leakdbt: list[str]) -> None:
    """Each hardening test program, original (fast) vs hardened, side by side."""
    print(f"\n### Hardening: test programs, original vs hardened (static, --cpu {BENCH_CPU})\n")
    print("| program | passes | insns in regions, orig → hardened | region ratio | "
          "program insns ratio | wall time orig / hardened (s) | wall ratio |")
    print("|---|---|---|---|---|---|---|")
    for prog, secret in HARDENING.items():
        exe = str(BUILD / prog)
        contract = str(REPO / "contracts" / f"{prog}.toml")
        base = [*leakdbt, "--contract", contract, "--cpu", BENCH_CPU]
        runs = {mode: [*base, "--mode", mode, exe, secret] for mode in ("fast", "hardened")}
        native = subprocess.run([exe, secret], capture_output=True, check=True).stdout
        times = {m: median_time(argv, None if m == "hardened" and prog in CHANGES_RESULTS
                                else native)[0] for m, argv in runs.items()}
        insns = {m: guest_instructions(argv) for m, argv in runs.items()}
        region = {m: region_instructions(exe, contract, secret, m) for m in runs}
        stats = subprocess.run([*runs["hardened"][:-2], "--stats", exe, secret],
                               capture_output=True, text=True, check=True).stderr
        passes = sorted({p for line in stats.splitlines() if "'passes'" in line
                         for p in line.split("[")[1].split("]")[0].replace("'", "").split(", ")
                         if p})
        print(f"| {prog} | {', '.join(passes)} | {region['fast']:,} → {region['hardened']:,} | "
              f"{region['hardened'] / region['fast']:.1f}x | "
              f"{insns['hardened'] / insns['fast']:.2f}x | "
              f"{times['fast']:.3f} / {times['hardened']:.3f} | "
              f"{times['hardened'] / times['fast']:.2f}x |")


EQUIVALENTS = {  # contract -> (program, argv[1:]) for the ct-equivalent bench
    "sodium_verify_memcmp": ("sodium_verify", ["00" * 32, "memcmp"]),
    "ossl_modexp_leaky": ("ossl_modexp", ["0123456789abcdef" * 4, "leaky"]),
}


def equivalent_bench(leakdbt: list[str]) -> None:
    """Whole functions replaced by a constant-time equivalent: the whole program, fast
    (original function) vs hardened, side by side."""
    print(f"\n### ct-equivalent: whole functions (static, --cpu {BENCH_CPU})\n")
    print("| contract | program insns, fast → hardened | ratio | wall time fast / hardened (s) "
          "| wall ratio |")
    print("|---|---|---|---|---|")
    for name, (prog, args) in EQUIVALENTS.items():
        exe = str(BUILD / prog)
        contract = str(REPO / "contracts" / f"{name}.toml")
        base = [*leakdbt, "--contract", contract, "--cpu", BENCH_CPU]
        runs = {mode: [*base, "--mode", mode, exe, *args] for mode in ("fast", "hardened")}
        native = subprocess.run([exe, *args], capture_output=True).stdout
        times = {m: median_time(argv, native)[0] for m, argv in runs.items()}
        insns = {m: guest_instructions(argv) for m, argv in runs.items()}
        print(f"| {name} | {insns['fast']:,} → {insns['hardened']:,} | "
              f"{insns['hardened'] / insns['fast']:.2f}x | "
              f"{times['fast']:.3f} / {times['hardened']:.3f} | "
              f"{times['hardened'] / times['fast']:.2f}x |")


def observer_rate(exe: str, contract: str, args: list[str], observers: tuple[str, ...]
                  ) -> tuple[int, float]:
    """Guest instructions in scope and host seconds of one check trial with ``observers``."""
    sys.path.insert(0, str(REPO))
    from leakdbt.contract import load
    from leakdbt.dbt.dispatch import Mode
    from leakdbt.leakage.trials import Observation, TrialSetup, trial_inputs

    c = load(contract, binary=exe)
    c = replace(c, check=replace(c.check, args=tuple(args)))
    setup = TrialSetup(exe, c, Mode.FAST)
    trial = trial_inputs(c, 1, 0)[0]
    what = Observation(observers, 64, ("int-div", "fp-div", "fp-sqrt", "fp-subnormal")
                       if "latency" in observers else ())
    started = time.perf_counter()
    run = setup.run(trial, what)
    return run.trace.instructions, time.perf_counter() - started


def check_bench(leakdbt: list[str]) -> None:
    """Observer speed, and whole 16-trial checks."""
    exe = str(BUILD / "sha256")
    contract = str(REPO / "contracts" / "sha256.toml")
    print("\n### leakdbt check: observer speed (sha256 1 MiB, one trial, scope block())\n")
    print("| observers | guest insns in scope | host time (s) | traced insns/s |")
    print("|---|---|---|---|")
    plain = median_time([*leakdbt, exe, "1"])[0]
    print(f"| none (plain `leakdbt exec`, whole run) | | {plain:.2f} | |")
    for observers in (("control-flow",), ("control-flow", "latency"),
                      ("control-flow", "latency", "memory")):
        n, t = observer_rate(exe, contract, ["1"], observers)
        print(f"| {' + '.join(observers)} | {n:,} | {t:.2f} | {n / t:,.0f} |")
    print("\n### leakdbt check: 16 trials (static builds, --cpu intel-skylake)\n")
    print("| contract | mode | jobs | wall time (s) | leak points |")
    print("|---|---|---|---|---|")
    check = [leakdbt[0], "check", "--cpu", "intel-skylake", "--trials", "16"]
    for name, program in (("ct_modexp", "ct_modexp"), ("ossl_modexp_leaky", "ossl_modexp"),
                          ("ossl_modexp_ct", "ossl_modexp")):
        for mode, jobs in (("original", "1"), ("original", "2")):
            argv = [*check, "--mode", mode, "--jobs", jobs, "--format", "json", "--contract",
                    str(REPO / "contracts" / f"{name}.toml"), str(BUILD / program)]
            started = time.perf_counter()
            out = subprocess.run(argv, capture_output=True, text=True)
            took = time.perf_counter() - started
            if out.returncode not in (0, 1):
                raise SystemExit(f"check failed: {out.stderr}")
            points = len(json.loads(out.stdout)["findings"])
            print(f"| {name} | {mode} | {jobs} | {took:.2f} | {points} |")


LONG_CHECK = ("ossl_powm1024", "ossl_powm1024")  # 4.6M guest instructions in scope per trial
OBSERVER_SETS = (("control-flow",), ("control-flow", "variable-latency"),
                 ("control-flow", "variable-latency", "memory-access"))


def long_check_bench(leakdbt: list[str]) -> None:
    """16 trials of the longest scope: wall time and peak memory of whole checks (with and
    without directed trials; --jobs 1 and the default, one per core), then one trial per
    observer set and recorder (native C hooks, Python hooks): instructions per second, and
    the bytes a full trace stores per million traced instructions.  With
    ``LEAKDBT_REFERENCE=DIR`` (a leakdbt tree, e.g. an older commit's), the check with 0
    directed rounds and the default jobs runs with that tree too, right after this one's
    (the machine is shared: compare runs made close together)."""
    sys.path.insert(0, str(REPO))
    from leakdbt.contract import load
    from leakdbt.dbt.dispatch import Mode
    from leakdbt.leakage import observe
    from leakdbt.leakage.findings import LeakKind
    from leakdbt.leakage.trials import Observation, TrialSetup, trial_inputs

    name, program = LONG_CHECK
    exe, contract = str(BUILD / program), str(REPO / "contracts" / f"{name}.toml")
    reference = os.environ.get("LEAKDBT_REFERENCE")
    trees = [("this tree", str(REPO))] + ([("reference", reference)] if reference else [])
    print(f"\n### leakdbt check: 16 trials of {name} (static, --cpu intel-skylake)\n")
    print(f"Load average at the start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores).\n")
    print("| tree | directed rounds | jobs | trials run | wall time (s) | peak RSS (MiB) | "
          "leak points |")
    print("|---|---|---|---|---|---|---|")
    # A fresh parent per check, so that RUSAGE_CHILDREN's peak is this check's alone.
    peak = ("import json, resource, subprocess, sys; out = subprocess.run(sys.argv[1:], "
            "capture_output=True, text=True); print(json.dumps([out.returncode, out.stdout, "
            "out.stderr, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))")
    cli = "import sys; from leakdbt.cli import main; sys.argv[0] = 'leakdbt'; main()"
    for rounds, jobs in (("0", "1"), ("0", None), ("2", None)):
        # The reference (slow, when it is an older leakdbt) only in the configuration.
        for label, tree in trees if (rounds, jobs) == ("0", None) else trees[:1]:
            argv = [sys.executable, "-c", peak, sys.executable, "-c", cli, "check", "--cpu",
                    "intel-skylake", "--trials", "16", "--directed-rounds", rounds,
                    *(["--jobs", jobs] if jobs else []), "--format", "json",
                    "--contract", contract, exe]
            started = time.perf_counter()
            status, out, err, rss_kib = json.loads(subprocess.run(
                argv, capture_output=True, text=True, check=True, cwd=tree,
                env=dict(os.environ, PYTHONPATH=tree)).stdout)
            took = time.perf_counter() - started
            if status not in (0, 1):
                raise SystemExit(f"check failed: {err}")
            report = json.loads(out)
            trials = report["modes"][0]["trials"]
            print(f"| {label} | {rounds} | {jobs or f'default ({os.cpu_count()})'} | "
                  f"{trials} | {took:.2f} | {rss_kib / 1024:.0f} | "
                  f"{len(report['findings'])} |", flush=True)
    c = load(contract, binary=exe)
    setup = TrialSetup(exe, c, Mode.FAST)
    trial = trial_inputs(c, 1, c.check.seed)[0]
    print(f"\n### leakdbt check: one trial of {name} per observer set and recorder\n")
    print("The second of two runs in one process (the first maps and scans the code once, "
          "as a check's worker does for its first trial); the whole run, start-up and code "
          "outside the scope included, so insns/s is per instruction *in scope*.\n")
    print("*In memory*: a full trace's arrays; *stored*: what check keeps of it on disk, the "
          "trial's chunk list plus the chunks it adds to a fresh chunk store (later trials of "
          "a check add only the chunks no earlier trial had).\n")
    print("| observers | recorder | trace | guest insns in scope | host time (s) | insns/s | "
          "bytes per million insns in memory | stored |")
    print("|---|---|---|---|---|---|---|---|")
    classes = ("int-div", "fp-div", "fp-sqrt", "fp-subnormal")
    init = observe.RunObserver.__init__
    for observers in OBSERVER_SETS:
        for native in (True, False):
            for full in (False, True):
                observe.RunObserver.__init__ = functools.partialmethod(  # type: ignore
                    init, native=native)
                what = Observation(tuple(LeakKind(o) for o in observers), 64,
                                   classes if "variable-latency" in observers else (), full)
                setup.run(trial, what)
                started = time.perf_counter()
                run = setup.run(trial, what)
                took = time.perf_counter() - started
                observe.RunObserver.__init__ = init  # type: ignore[method-assign]
                t = run.trace
                held = t.blocks.nbytes() + t.memory.nbytes() + 64 * len(t.latency)
                per_million = (f"{held / t.instructions * 1e6:,.0f} | "
                               f"{stored_bytes(t) / t.instructions * 1e6:,.0f}" if full
                               else "digests only | digests only")
                print(f"| {' + '.join(observers)} | {'C' if native else 'Python'} | "
                      f"{'full' if full else 'digest'} | {t.instructions:,} | {took:.2f} | "
                      f"{t.instructions / took:,.0f} | {per_million} |", flush=True)


def stored_bytes(trace: Any) -> int:
    """Bytes a check stores on disk for one full trace: its pickled chunk list plus the
    chunks it adds to a fresh chunk store."""
    import pickle
    import tempfile

    from leakdbt.leakage.chunks import ChunkStore

    with tempfile.TemporaryDirectory() as directory:
        store = ChunkStore(directory)
        kept = store.put(trace.blocks, trace.memory, trace.latency, trace.operands,
                         trace.threads)
        store.close()
        return store.written + len(pickle.dumps(kept))


def switch_latency(changes: int = 20, period: float = 0.4) -> list[float]:
    """Milliseconds from a co-tenant appearing (an orchestrator's state file says so) to the
    hardened entry jumps being installed, for ``changes`` appearances in one long run with
    the default poll interval and hold-down.  region_loop enters its region every few
    nanoseconds, so the next entry after the install runs hardened."""
    import tempfile
    import threading

    sys.path.insert(0, str(REPO))
    from leakdbt.contract import load
    from leakdbt.contract.profiles import get_profile
    from leakdbt.dbt.dispatch import Dispatcher, Mode
    from leakdbt.monitor.detectors import create_detector, default_context
    from leakdbt.monitor.monitor import Monitor
    from leakdbt.run.protect import protection
    from leakdbt.run.session import ExecOptions, execute

    exe = str(BUILD / "region_loop")
    c = load(REPO / "contracts" / "region_loop.toml", binary=exe)
    protected = protection(c, get_profile(BENCH_CPU))
    state = Path(tempfile.mkdtemp()) / "tenancy.json"

    def write(shares: list[str]) -> float:
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"updated": time.time(), "cotenants": [
            {"shares": s, "name": "bench"} for s in shares]}))
        tmp.replace(state)
        return time.time()

    write([])
    appeared: list[float] = []
    translators: list[Dispatcher] = []
    done = threading.Event()

    def orchestrate() -> None:
        time.sleep(0.5)  # the guest is running
        for _ in range(changes):
            appeared.append(write(["core"]))
            time.sleep(period / 2)
            write([])
            time.sleep(period / 2)
        done.set()

    def make(translator: Dispatcher) -> Monitor:
        translators.append(translator)
        return Monitor(create_detector(f"file:{state}", default_context()), translator,
                       c.protect.adversary)

    threading.Thread(target=orchestrate, daemon=True).start()
    options = ExecOptions(argv=[exe, "4000000000"], env=[], mode=Mode.HARDENED,
                          regions=protected.regions, hardener=protected.hardener(),
                          monitor=make,
                          timeout=0.8 + changes * period)
    with open(os.devnull, "w") as null:
        saved = os.dup(1)
        os.dup2(null.fileno(), 1)
        try:
            execute(exe, options)
        except Exception:  # noqa: BLE001 - the timeout ends the run
            pass
        finally:
            os.dup2(saved, 1)
            os.close(saved)
    installs = [t for mode, t in translators[0].stats.switched_at if mode == "hardened"]
    return [(min(t for t in installs if t >= a) - a) * 1000 for a in appeared
            if any(t >= a for t in installs)]


def adaptive_bench(leakdbt: list[str]) -> None:
    """Adaptive mode against fast and hardened, and how fast it reacts."""
    exe = str(BUILD / "region_loop")
    calls = "20000000"
    contract = ["--contract", str(REPO / "contracts" / "region_loop.toml")]
    print(f"\n### Adaptive mode: region_loop, {int(calls):,} region entries (static)\n")
    print("| runner | time (s) | vs fast |")
    print("|---|---|---|")
    fast, out = median_time([*leakdbt, *contract, "--mode", "fast", exe, calls])
    rows = {"--mode fast": fast}
    for label, extra in (
            ("--mode adaptive --detector procfs (alone)", ["--detector", "procfs"]),
            ("--mode adaptive --detector fixed:alone", ["--detector", "fixed:alone"]),
            ("--mode adaptive --detector fixed:core", ["--detector", "fixed:core"]),
            ("--mode hardened", None)):
        mode = ["--mode", "hardened"] if extra is None else ["--mode", "adaptive", *extra]
        rows[label] = median_time([*leakdbt, *contract, *mode, exe, calls], out)[0]
    for label, t in rows.items():
        print(f"| {label} | {t:.3f} | {t / fast:.3f}x |")
    latencies = sorted(switch_latency())
    print(f"\nco-tenant appears -> hardened entry jumps installed (file detector, default "
          f"poll and hold-down, {len(latencies)} appearances): median "
          f"{statistics.median(latencies):.1f} ms, worst {latencies[-1]:.1f} ms")


def analyze_bench(leakdbt: list[str]) -> None:
    """Taint tracking speed, and whole analyses."""
    print("\n### leakdbt analyze: taint tracking (static builds)\n")
    print("| contract | guest insns tracked | runs | analyze wall time (s) | plain exec (s) | "
          "insns/s in the taint hook |")
    print("|---|---|---|---|---|---|")
    for name, program in (("ct_modexp", "ct_modexp"), ("sbox_round", "sbox_round"),
                          ("mac_verify", "mac_verify"), ("ossl_modexp_leaky", "ossl_modexp")):
        exe = str(BUILD / program)
        contract = str(REPO / "contracts" / f"{name}.toml")
        argv = [leakdbt[0], "analyze", "--format", "json", "--contract", contract, exe]
        samples, rates = [], []
        for _ in range(REPEAT):
            started = time.perf_counter()
            out = json.loads(subprocess.run(argv, capture_output=True, text=True,
                                            check=True).stdout)
            samples.append(time.perf_counter() - started)
            rates.append(out["instructions"] / out["taint_seconds"])
        secret = {"ct_modexp": "0123456789abcdef",
                  "sbox_round": "2b7e151628aed2a6abf7158809cf4f3c",
                  "mac_verify": "bb72509640bec05a5283b4422cda9c97",
                  "ossl_modexp_leaky": "00" * 32}[name]
        extra = ["leaky"] if program == "ossl_modexp" else []
        plain = median_time([*leakdbt, exe, secret, *extra])[0]
        print(f"| {name} | {out['instructions']:,} | {out['runs']} | "
              f"{statistics.median(samples):.2f} | {plain:.2f} | "
              f"{statistics.median(rates):,.0f} |")


# -- issue 18: hardened files, natively (bench/harden_file.py) -------------------------------


def harden_file_bench(leakdbt_cmd: list[str]) -> None:
    """Original vs `leakdbt harden` file, natively: cycles per main() call and per call of
    each protected function, whole-program time, and dudect's fixed-vs-random |t| of the
    timing builds, original and hardened (bench/harden_file.py)."""
    from harden_file import run  # bench/ is this script's directory, first on sys.path

    run(leakdbt_cmd)


# -- issue 17: threads, signals and processes (bench/processes.py) ---------------------------


def processes_bench(tables: list[str] | None = None) -> None:
    """A 4-thread program against the same work in 1 thread, the cost of a thread switch and
    of a signal delivery, fork + exec of /bin/true against native and qemu-user, and plain
    exec against $LEAKDBT_REFERENCE (bench/processes.py; ``tables``: the ones to run)."""
    from processes import run  # bench/ is this script's directory, first on sys.path

    run(str(REPO / ".venv" / "bin" / "python"), tables or ())


CORPUS = {  # corpus harness (test_binaries/corpus, contracts/corpus) -> a secret (argv[1])
    "tc_des": "0123456789abcdef",
    "tc_aes": "2b7e151628aed2a6abf7158809cf4f3c",
    "tc_blowfish": "0123456789abcdeffedcba9876543210",
    "tc_base64": "000102030405060708090a0b0c0d0e0f10111213fcfdfeff",
    "b64_decode": "000102030405060708090a0b0c0d0e0f10111213fcfdfeff",
    "nettle_base16": "00112233445566778899aabbccddeeff",
    "nettle_des": "0123456789abcdef",
    "gmp_powm": "0123456789abcdef" * 4,
    "mbed_mpi_cmp": "8000000000000000" * 4,
    "nettle_base64": "000102030405060708090a0b0c0d0e0f10111213fcfdfeff",
    "gcry_cmp": "8000000000000000" * 4,
}


CORPUS_TIMEOUT = 900  # seconds for one analyze or check of a corpus function


def leak_points(leakdbt: str, contract: str, exe: str, secret: str, mode: str
                ) -> tuple[int | None, str]:
    """``check --mode MODE`` with the contract's trials: its leak points, or None and the
    one-line error when the run stops (a region no pass hardens)."""
    try:
        done = subprocess.run([leakdbt, "check", "--cpu", BENCH_CPU, "--mode", mode,
                               "--format", "json", "--contract", contract, exe, secret],
                              capture_output=True, text=True, timeout=CORPUS_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, f"check did not finish in {CORPUS_TIMEOUT} s"
    if done.returncode not in (0, 1):
        return None, (done.stderr.strip().splitlines() or ["?"])[-1]
    return len(json.loads(done.stdout)["findings"]), ""


def corpus_bench(leakdbt: list[str], names: list[str] | None = None) -> None:
    """Real library code (issue 15): for each corpus function, the issue's workflow with
    ct-equivalent switched off: ``analyze --write`` on a copy of its contract, then check
    original and hardened.  Leak points found (check --mode original), removed (found minus
    check --mode hardened), the regions analyze wrote and the first refusal; guest
    instructions inside the regions, fast vs hardened (counted by the RunObserver over the
    regions' code, measured, not modelled), and whole-program wall times."""
    import contextlib
    import tempfile

    from leakdbt.errors import LeakDBTError

    print(f"\n### Corpus: real library code, analyze --write then hardened (static, "
          f"--cpu {BENCH_CPU}, passes_off = [\"ct-equivalent\"])\n")
    print("| function (harness) | found | removed | regions written | refused / left | "
          "insns in regions, orig → hardened | wall native / orig / hardened (s) |")
    print("|---|---|---|---|---|---|---|")
    cli = leakdbt[0]
    for name, secret in CORPUS.items():
        if names and name not in names:
            continue
        exe = str(BUILD / "corpus" / name)
        with tempfile.TemporaryDirectory() as tmp:
            contract = str(Path(tmp) / f"{name}.toml")
            shutil.copy(REPO / "contracts" / "corpus" / f"{name}.toml", contract)
            try:
                written = subprocess.run([cli, "analyze", "--cpu", BENCH_CPU, "--contract",
                                          contract, "--write", exe, secret],
                                         capture_output=True, text=True,
                                         timeout=CORPUS_TIMEOUT).stdout.count(": written")
            except subprocess.TimeoutExpired:
                print(f"| {name} | | | analyze did not finish in {CORPUS_TIMEOUT} s | | | |",
                      flush=True)
                continue
            found, _ = leak_points(cli, contract, exe, secret, "original")
            left, refusal = leak_points(cli, contract, exe, secret, "hardened")
            native = subprocess.run([exe, secret], capture_output=True).stdout
            base = [*leakdbt, "--contract", contract, "--cpu", BENCH_CPU]
            fast_t = median_time([*leakdbt, exe, secret], native)[0]  # no contract: original
            hard = subprocess.run([*base, "--mode", "hardened", exe, secret],
                                  capture_output=True)
            same = hard.returncode == 0 and hard.stdout == native
            hard_t = median_time([*base, "--mode", "hardened", exe, secret])[0] if same \
                else None
            counts: dict[str, int | None] = {"fast": None, "hardened": None}
            for mode in counts if written else ():  # no region: no dispatcher to count in
                with contextlib.suppress(LeakDBTError):  # refused: no hardened count
                    counts[mode] = region_instructions(exe, contract, secret, mode)
            native_t = median_time([exe, secret], native)[0]
        removed = "—" if left is None or found is None else str(found - left)
        if left is None:
            why = f"run stops: {refusal.removeprefix('leakdbt: ')}"
        elif not same:
            why = "hardened output differs from native"
        else:
            why = f"{left} left" if left else "none"
        insns = " → ".join("—" if counts[m] is None else f"{counts[m]:,}"
                           for m in ("fast", "hardened"))
        wall = f"{native_t:.3f} / {fast_t:.3f} / " + ("—" if hard_t is None
                                                      else f"{hard_t:.3f}")
        print(f"| {name} | {found} | {removed} | {written} | {why} | {insns} | {wall} |",
              flush=True)


PUBLIC_RUNS = {"umod_modexp": ["0123456789abcdef"],  # program -> its arguments
               "public_mode": ["0123456789abcdef", "9"]}


def public_bench(leakdbt: list[str]) -> None:
    """Public branches kept in predicated clones: the contract ``analyze --write`` gives,
    with the ``public`` key it writes and without it (every clone branch if-converted),
    side by side: guest instructions inside the regions (RunObserver, measured) and
    whole-program wall time."""
    import re
    import tempfile

    print(f"\n### Public branches in predicated clones (static, --cpu {BENCH_CPU})\n")
    print("| program | public (analyze) | insns in regions: orig / without public / with | "
          "wall native / orig / without / with (s) |")
    print("|---|---|---|---|")
    cli = leakdbt[0]
    for prog, args in PUBLIC_RUNS.items():
        exe = str(BUILD / prog)
        native = subprocess.run([exe, *args], capture_output=True, check=True).stdout
        with tempfile.TemporaryDirectory() as tmp:
            with_public = Path(tmp) / "with.toml"
            shutil.copy(REPO / "contracts" / f"{prog}.toml", with_public)
            subprocess.run([cli, "analyze", "--cpu", BENCH_CPU, "--contract",
                            str(with_public), "--write", exe, *args],
                           capture_output=True, check=True)
            text = with_public.read_text()
            declared = "; ".join(re.findall(r"^public = \[(.*)\]$", text, re.M)) or "none"
            without = Path(tmp) / "without.toml"
            without.write_text(re.sub(r"^public = .*\n", "", text, flags=re.M))
            contracts = {"without": str(without), "with": str(with_public)}
            insns = {"orig": region_instructions(exe, str(with_public), args, "fast")}
            times = {"native": median_time([exe, *args], native)[0],
                     "orig": median_time([*leakdbt, exe, *args], native)[0]}
            for label, contract in contracts.items():
                insns[label] = region_instructions(exe, contract, args, "hardened")
                times[label] = median_time([*leakdbt, "--contract", contract, "--cpu",
                                            BENCH_CPU, "--mode", "hardened", exe, *args],
                                           native)[0]
        print(f"| {prog} | {declared} | " + " / ".join(f"{insns[k]:,}" for k in insns)
              + " | " + " / ".join(f"{times[k]:.3f}" for k in times) + " |", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--raw":
        raw_main()
    elif sys.argv[1:] == ["startup"]:  # just the start-up section
        startup_bench([str(REPO / ".venv" / "bin" / "leakdbt"), "exec"])
    elif sys.argv[1:] == ["limits"]:  # just the --max-insns section
        limits_bench([str(REPO / ".venv" / "bin" / "leakdbt"), "exec"])
    elif sys.argv[1:] == ["long-check"]:  # just the long-scope check section
        long_check_bench([str(REPO / ".venv" / "bin" / "leakdbt")])
    elif sys.argv[1:] == ["harden-file"]:  # just the hardened-files section
        harden_file_bench([str(REPO / ".venv" / "bin" / "leakdbt")])
    elif sys.argv[1:2] == ["threads"]:  # just threads, signals and processes (of the tables named)
        processes_bench(sys.argv[2:])
    elif sys.argv[1:] == ["public"]:  # just the public-branches section
        public_bench([str(REPO / ".venv" / "bin" / "leakdbt"), "exec"])
    elif sys.argv[1:2] == ["corpus"]:  # just the corpus section (of the functions named)
        corpus_bench([str(REPO / ".venv" / "bin" / "leakdbt"), "exec"], sys.argv[2:])
    else:
        main()


# (contract, program, args, mode): the 8 entries of the suite benchmark
SUITE_ENTRIES = [("ct_modexp", "ct_modexp", None, "both"),
                 ("idea_mul", "idea_mul", None, "original"),
                 ("mac_verify", "mac_verify", None, "original"),
                 ("sbox_round", "sbox_round", None, "hardened"),
                 ("ttable_round", "ttable_round", None, "original"),
                 ("secret_div", "secret_div", None, "original"),
                 ("sha256", "sha256", ["0"], "original"),
                 ("sodium_verify_ct", "sodium_verify", None, "original")]
SUITE_TRIALS = 8


def suite_bench(leakdbt: list[str]) -> None:
    """``leakdbt suite`` of 8 entries on 1 and 2 local Dask workers vs the same checks one by
    one, and Dask's scheduling overhead per task (a no-op task, 1 worker)."""
    import tempfile

    print(f"\n### leakdbt suite: 8 entries, {SUITE_TRIALS} trials each, no directed rounds "
          "(static builds, --cpu intel-skylake)\n")
    print("| how | wall time (s) | exit status |")
    print("|---|---|---|")
    lines = ["version = 1", "[defaults]", f"trials = {SUITE_TRIALS}", f'cpu = "{BENCH_CPU}"',
             "directed_rounds = 0"]
    singles = []
    for contract, program, args, mode in SUITE_ENTRIES:
        path = REPO / "contracts" / f"{contract}.toml"
        lines += ["[[entry]]", f'binary = "{BUILD / program}"', f'contract = "{path}"',
                  f'mode = "{mode}"'] + ([f"args = {json.dumps(args)}"] if args else [])
        singles.append([*leakdbt, "check", "--cpu", BENCH_CPU, "--trials", str(SUITE_TRIALS),
                        "--directed-rounds", "0", "--mode", mode, "--contract", str(path),
                        str(BUILD / program), *(args or [])])
    started = time.perf_counter()
    worst = max(subprocess.run(argv, capture_output=True).returncode for argv in singles)
    print(f"| 8 x `leakdbt check`, one by one | {time.perf_counter() - started:.1f} | {worst} |")
    with tempfile.TemporaryDirectory() as tmp:
        suite = os.path.join(tmp, "suite.toml")
        with open(suite, "w") as f:
            f.write("\n".join(lines) + "\n")
        for workers in (1, 2):
            started = time.perf_counter()
            done = subprocess.run([*leakdbt, "suite", "--workers", str(workers), suite],
                                  capture_output=True, text=True)
            took = time.perf_counter() - started
            if done.returncode not in (0, 1):
                raise SystemExit(f"suite failed: {done.stderr}")
            print(f"| `leakdbt suite --workers {workers}` (cluster start-up included) | "
                  f"{took:.1f} | {done.returncode} |")
    from distributed import Client, LocalCluster

    tasks = 500
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        client.submit(abs, -1).result()  # warm up
        started = time.perf_counter()
        client.gather([client.submit(abs, -n, pure=False) for n in range(tasks)])
        per_task = (time.perf_counter() - started) / tasks
    print(f"\nDask scheduling overhead: {per_task * 1000:.2f} ms per no-op task "
          f"({tasks} tasks, 1 local worker process)")

