"""Hardened files natively (issue 18): the last section of ``make bench``, alone with
``python bench/run.py harden-file`` or ``python bench/harden_file.py``.

For each leaky test program whose contract has regions, the original file and its
``leakdbt harden`` copy run natively, side by side, interleaved (original and hardened
alternate, the order switching each round, so that the load of this shared machine falls on
both alike):

- **whole program**: the wall time of the static program, ``WHOLE_RUNS`` rounds;
- **the timing builds** (``make -C test_binaries timing``: test_binaries/timing/): ``main``
  called ``DUDECT_N`` times per file in ``CHUNKS`` runs, each of dudect's fixed or random
  class (drawn per call; the same draws for both files of a chunk), with rdtsc around each
  ``main`` call and around each call of each *protected function* (the contract's
  ``protect.functions``, timed by thunks at its call sites; their bytes are the other
  builds', so the contract hardens them alike);
- **dudect**: Welch's t of the fixed vs the random class with dudect's crops
  (:func:`leakdbt.leakage.timing.compare`, the statistics of ``leakdbt check --timing``),
  per ``main`` call and per protected function.

Secrets (argv[1], the fixed class): those of the hardening bench; the verifiers' fixed class
is the right tag with its last byte changed, so both classes are rejected (a public outcome)
and only the first difference's position varies.
"""

from __future__ import annotations

import math
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STATIC = REPO / "test_binaries" / "build" / "static"
TIMING = REPO / "test_binaries" / "build" / "timing"
DUDECT_N = int(os.environ.get("BENCH_DUDECT_N", "100000"))
CHUNKS = max(2, int(os.environ.get("BENCH_DUDECT_CHUNKS", "10")))
WHOLE_RUNS = max(3, int(os.environ.get("BENCH_WHOLE_RUNS", "11")))
CPU = "intel-skylake"  # every latency class variable: every pass runs
CHANGES_RESULTS = {"fp_secret"}  # FTZ/DAZ changes results on subnormals, by design

TIMED_SECRETS = {  # test_binaries/Makefile's TIMED -> the fixed class's argv[1]
    "ct_modexp": "0123456789abcdef",
    "idea_mul": "0123456789abcdef0011223344556677",
    "mac_verify": "bb72509640bec05a5283b4422cda9c00",
    "tag_check": "00112233445566778899aabbccddee00",
    "sbox_round": "2b7e151628aed2a6abf7158809cf4f3c",
    "ttable_round": "2b7e151628aed2a6abf7158809cf4f3c",
    "secret_div": "fffffffffffffffd",
    "fp_secret": "c0de",
}


@dataclass
class Timing:
    """The records of timing runs of one file (test_binaries/timing/harness.c's format)."""

    names: list[str]
    floors: list[int] = field(default_factory=list)  # per run: an empty timed call
    classes: list[int] = field(default_factory=list)  # per main call: 0 fixed, 1 random
    main: list[float] = field(default_factory=list)  # per main call: its cycles
    cycles: list[list[float]] = field(default_factory=list)  # [function][main call]
    calls: list[list[int]] = field(default_factory=list)  # [function][main call]

    def add(self, data: bytes) -> None:
        """Append one run's records."""
        (k,), at = struct.unpack_from("<I", data), 4
        names = []
        for _ in range(k):
            end = data.index(b"\0", at)
            names.append(data[at:end].decode())
            at = end + 1
        if names != self.names:
            raise SystemExit(f"timing build names {names}, expected {self.names}")
        self.floors.append(struct.unpack_from("<Q", data, at)[0])
        at += 8
        if not self.cycles:
            self.cycles, self.calls = [[] for _ in names], [[] for _ in names]
        record = struct.Struct(f"<BQ{k}Q{k}Q")
        for row in record.iter_unpack(data[at:]):
            self.classes.append(row[0])
            self.main.append(float(row[1]))
            for i in range(k):
                self.cycles[i].append(float(row[2 + i]))
                self.calls[i].append(row[2 + k + i])

    def split(self, values: list[float]) -> tuple[list[float], list[float]]:
        """``values`` (one per main call) as (fixed class, random class)."""
        out: tuple[list[float], list[float]] = ([], [])
        for cls, v in zip(self.classes, values, strict=True):
            out[cls].append(v)
        return out


def timing_run(exe: str, secret: str, n: int, seed: int, into: Timing) -> None:
    """``n`` timed main calls of a timing build, appended to ``into``."""
    with tempfile.NamedTemporaryFile(suffix=".bin") as out:
        env = dict(os.environ, LEAKDBT_TIMING=f"{n}:{out.name}:{seed}")
        subprocess.run([exe, secret], env=env, check=True, capture_output=True)
        into.add(Path(out.name).read_bytes())


def dudect(fixed: list[float], random_: list[float]) -> tuple[float, float]:
    """|t| over all measurements and the largest |t| of dudect's crops."""
    from leakdbt.leakage.timing import CROP_PERCENTILES, compare

    q = compare("cycles", "cycles", fixed, random_, CROP_PERCENTILES)
    return abs(q.t_uncropped), abs(q.t)


def contract_functions(prog: str) -> list[str]:
    """The contract's protected functions (what the timing build times)."""
    import tomllib

    with open(REPO / "contracts" / f"{prog}.toml", "rb") as f:
        return list(tomllib.load(f)["protect"]["functions"])


def harden(leakdbt: list[str], prog: str, exe: str, out: str) -> None:
    subprocess.run([*leakdbt, "harden", "--contract", str(REPO / "contracts" / f"{prog}.toml"),
                    "--cpu", CPU, "-o", out, exe], check=True, capture_output=True)


def whole_program(pair: tuple[str, str], secret: str, expected: bytes | None
                  ) -> tuple[float, float]:
    """Median wall time of the original and the hardened program, runs interleaved (any
    exit status: the verifiers exit 1 on a wrong tag); each prints ``expected`` unless
    that is None."""
    samples: tuple[list[float], list[float]] = ([], [])
    for r in range(WHOLE_RUNS):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            start = time.perf_counter()
            out = subprocess.run([pair[i], secret], capture_output=True).stdout
            samples[i].append(time.perf_counter() - start)
            if expected is not None and out != expected:
                raise SystemExit(f"different output from {pair[i]} {secret}")
    return statistics.median(samples[0]), statistics.median(samples[1])


def interleaved_timing(pair: tuple[str, str], secret: str, names: list[str]
                       ) -> tuple[Timing, Timing]:
    """DUDECT_N timed main calls of each timing build, in CHUNKS alternating runs."""
    result = (Timing(names), Timing(names))
    per = -(-DUDECT_N // CHUNKS)
    for chunk in range(CHUNKS):
        for i in ((0, 1) if chunk % 2 == 0 else (1, 0)):
            timing_run(pair[i], secret, per, chunk + 1, result[i])
    return result


def per_call(t: Timing, k: int) -> float:
    """Median cycles per call of function ``k`` over the fixed-class main calls."""
    values = [c / n for c, n, cls in zip(t.cycles[k], t.calls[k], t.classes, strict=True)
              if cls == 0 and n]
    return statistics.median(values) if values else float("nan")


def uptime() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def run(leakdbt: list[str]) -> None:
    """Print the section's two tables (Markdown)."""
    subprocess.run(["make", "-s", "-C", str(REPO / "test_binaries"), "timing"], check=True,
                   capture_output=True)
    programs, functions = [], []
    step = 0  # the time stamp counter's step: the gcd of the first 1,000 readings
    counted = [0, 0]  # readings that are multiples of it, all readings
    load = [uptime()]
    with tempfile.TemporaryDirectory() as tmp:
        for prog, secret in TIMED_SECRETS.items():
            names = contract_functions(prog)
            static = (str(STATIC / prog), f"{tmp}/{prog}")
            timing = (str(TIMING / prog), f"{tmp}/{prog}.timing")
            harden(leakdbt, prog, *static)
            harden(leakdbt, prog, *timing)
            want = subprocess.run([static[0], secret], capture_output=True).stdout
            expected = None if prog in CHANGES_RESULTS else want
            for exe in timing:  # without LEAKDBT_TIMING, the timing builds are the program
                got = subprocess.run([exe, secret], capture_output=True).stdout
                if expected is not None and got != expected:
                    raise SystemExit(f"{exe} {secret} printed {got!r}, not {expected!r}")
            whole = whole_program(static, secret, expected)
            timed = interleaved_timing(timing, secret, names)
            readings = [int(v) for t in timed for v in (*t.main, *(c for f in t.cycles for c in f))]
            step = step or math.gcd(*readings[:1000])
            counted[0] += sum(v % step == 0 for v in readings)
            counted[1] += len(readings)
            cyc = [statistics.median(t.split(t.main)[0]) for t in timed]
            ts = [dudect(*t.split(t.main)) for t in timed]
            programs.append(
                f"| {prog} | {cyc[0]:,.0f} → {cyc[1]:,.0f} | {cyc[1] / cyc[0]:.2f}x | "
                f"{whole[0] * 1e3:.2f} / {whole[1] * 1e3:.2f} | "
                f"{ts[0][0]:.1f} / {ts[0][1]:.1f} | {ts[1][0]:.1f} / {ts[1][1]:.1f} |")
            for k, name in enumerate(names):
                calls = statistics.median(timed[0].calls[k])
                if calls != statistics.median(timed[1].calls[k]):
                    raise SystemExit(f"{prog}: {name} called {calls} times per main "
                                     "originally, differently hardened")
                pc = [per_call(t, k) for t in timed]
                fts = [dudect(*t.split(t.cycles[k])) for t in timed]
                floor = statistics.median([*timed[0].floors, *timed[1].floors])
                net = [c - floor for c in pc]
                ratio = f"{net[1] / net[0]:.1f}x" if net[0] > 0 else "— (orig at the floor)"
                shown = " → ".join(f"{v:,.0f}" if v > 0 else "≤ 0" for v in net)
                functions.append(
                    f"| {prog} | {name} | {calls:g} | {floor:.0f} | {pc[0]:,.0f} → {pc[1]:,.0f} | "
                    f"{shown} | {ratio} | "
                    f"{fts[0][0]:.1f} / {fts[0][1]:.1f} | {fts[1][0]:.1f} / {fts[1][1]:.1f} |")
            load.append(uptime())
            print(f"  {prog} done (load {load[-1]})", file=sys.stderr, flush=True)
    print(f"\n### Hardened files, natively (static, --cpu {CPU}; {DUDECT_N:,} timed main calls "
          f"per file in {CHUNKS} interleaved runs; load average {load[0]} at the start, "
          f"{load[-1]} at the end; {100 * counted[0] / counted[1]:.2f}% of the cycle "
          f"readings are multiples of {step})\n")
    print("| program | cycles/main() orig → hardened (median, fixed class) | ratio | "
          "whole program orig / hardened (ms, median) | dudect \\|t\\| main() orig "
          "(all / best crop) | dudect \\|t\\| main() hardened (all / best crop) |")
    print("|---|---|---|---|---|---|")
    print("\n".join(programs))
    print("\n| program | protected function | calls per main() | timer floor (cycles) | "
          "cycles/call orig → hardened (median, fixed class, floor included) | net of the "
          "floor | net ratio | dudect \\|t\\| orig (all / best crop) | dudect \\|t\\| hardened "
          "(all / best crop) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(functions), flush=True)


if __name__ == "__main__":
    run([str(REPO / ".venv" / "bin" / "leakdbt")])
