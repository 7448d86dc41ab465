"""Fuzz leakdbt with mutated ELF files and contracts (``make fuzz``; not part of ``make test``).

A fork server imports leakdbt once; each case runs the CLI's ``main`` in a forked child with
a wall-clock cap, and the parent collects the exit status and stderr.  It fails when any case
ends in status 125 ("internal error"), prints a traceback, or runs longer than --slow seconds.

    python fuzz/run.py [--elf N] [--contracts N] [--seed S] [--report docs/reliability.md]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import select
import signal
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "test_binaries" / "build"
ELF_BASES = [BUILD / kind / name for kind in ("static", "static-pie", "dynamic")
             for name in ("hello", "exitcode", "segfault")]
CONTRACTS = sorted((REPO / "contracts").glob("*.toml"))
INTERESTING = [0, 1, 0x38, 0x40, 0xFF, 0xFFFF, 0xFFFF_FFFF, 1 << 32, 1 << 47,
               0x7FFF_F7FF_F000, 0x7FFF_FFFF_F000, 0xFFFF_FFFF_8000_0000, 2**64 - 1]
TOML_PIECES = ["[", "]", "{", "}", "=", ".", '"', "'", "\n", "#", "0x", "+", "-", "00010",
               "9" * 30, "[[", "]]", "a.b.c", "inf", "nan", "true", "1e999", "\\u0000"]
GUEST_TIMEOUT = "5"  # --timeout for the guest; the child is killed at --slow seconds


@dataclass
class Tally:
    """What the cases of one kind ended in."""

    runs: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)  # 125, traceback or too slow: the failures
    slowest: float = 0.0
    slowest_case: str = ""
    seconds: float = 0.0


def mutate_elf(data: bytes, rng: random.Random) -> bytes:
    """One to four header-field or byte mutations of an ELF file."""
    buf = bytearray(data)
    phoff, = struct.unpack_from("<Q", buf, 32)
    phnum, = struct.unpack_from("<H", buf, 56)
    for _ in range(rng.randint(1, 4)):
        with contextlib.suppress(struct.error):  # a field past the end of a truncated file
            _mutate_once(buf, phoff, phnum, rng)
    return bytes(buf)


def _mutate_once(buf: bytearray, phoff: int, phnum: int, rng: random.Random) -> None:
    """One mutation of ``buf`` in place."""
    choice = rng.random()
    if choice < 0.4 and phnum:  # a program header field
        base = phoff + 56 * rng.randrange(phnum)
        off, fmt = rng.choice([(0, "<I"), (4, "<I"), (8, "<Q"), (16, "<Q"), (32, "<Q"),
                               (40, "<Q"), (48, "<Q")])
        value = rng.choice(INTERESTING + [rng.getrandbits(64)])
        struct.pack_into(fmt, buf, base + off, value & ((1 << 8 * struct.calcsize(fmt)) - 1))
    elif choice < 0.6:  # an ELF header field
        off, fmt = rng.choice([(16, "<H"), (24, "<Q"), (32, "<Q"), (40, "<Q"), (54, "<H"),
                               (56, "<H"), (58, "<H"), (60, "<H"), (62, "<H")])
        value = rng.choice(INTERESTING + [rng.getrandbits(64)])
        struct.pack_into(fmt, buf, off, value & ((1 << 8 * struct.calcsize(fmt)) - 1))
    elif choice < 0.8:  # random bytes somewhere
        at = rng.randrange(len(buf))
        buf[at:at + 8] = rng.randbytes(min(8, len(buf) - at))
    elif len(buf) > 64:  # truncation
        del buf[rng.randrange(64, len(buf)):]


def mutate_contract(text: str, rng: random.Random) -> str:
    """One to four textual mutations of a contract."""
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(text) + 1)
        choice = rng.random()
        if choice < 0.5:
            text = text[:at] + rng.choice(TOML_PIECES) * rng.choice([1, 1, 2, 100, 600]) \
                + text[at:]
        elif choice < 0.8:
            text = text[:at] + text[at + rng.randint(1, 40):]
        else:
            lines = text.splitlines(keepends=True)
            text = "".join(rng.sample(lines, len(lines)))
    return text


def run_case(argv: list[str], slow: float) -> tuple[int, str, float]:
    """Fork, run ``leakdbt.cli.main(argv)`` in the child; return (status, stderr, seconds)."""
    from leakdbt.cli import main

    err_r, err_w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: stdout to /dev/null, stderr to the pipe
        os.close(err_r)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(err_w, 2)
        status = 125
        try:
            main(argv)
            status = 0
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else 1
        finally:
            sys.stderr.flush()
            os._exit(status)
    os.close(err_w)
    chunks: list[bytes] = []
    deadline = start + slow
    while True:
        ready, _, _ = select.select([err_r], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            break
        chunk = os.read(err_r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(err_r)
    _, wstatus = os.waitpid(pid, 0)
    seconds = time.monotonic() - start
    code = os.waitstatus_to_exitcode(wstatus)
    status = 128 - code if code < 0 else code
    return status, b"".join(chunks).decode(errors="replace"), seconds


def judge(tally: Tally, what: str, status: int, stderr: str, seconds: float,
          slow: float) -> None:
    tally.runs += 1
    tally.statuses[status] = tally.statuses.get(status, 0) + 1
    if seconds > tally.slowest:
        tally.slowest, tally.slowest_case = seconds, what
    tally.seconds += seconds
    if status == 125 or "Traceback" in stderr or seconds >= slow:
        tally.bad.append(f"{what}: status {status}, {seconds:.1f} s: {stderr.strip()[:300]}")


def progress(kind: str, i: int, n: int, tally: Tally, start: float) -> None:
    """A line on stderr every 250 cases, so a long run shows where it is."""
    if (i + 1) % 250 == 0 or i + 1 == n:
        print(f"fuzz: {kind} {i + 1}/{n}, {len(tally.bad)} failing, "
              f"{time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)


def fuzz(n_elf: int, n_contracts: int, seed: int, slow: float, keep: Path) -> dict[str, Tally]:
    rng = random.Random(seed)
    start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="leakdbt-fuzz-"))
    tallies = {"elf": Tally(), "contract": Tally()}
    bases = [p.read_bytes() for p in ELF_BASES if p.exists()]
    texts = [p.read_text() for p in CONTRACTS]
    exe = work / "case"
    for i in range(n_elf):
        exe.write_bytes(mutate_elf(rng.choice(bases), rng))
        exe.chmod(0o755)
        status, err, secs = run_case(["exec", "--timeout", GUEST_TIMEOUT, str(exe)], slow)
        judge(tallies["elf"], f"elf case {i}", status, err, secs, slow)
        if tallies["elf"].bad and tallies["elf"].bad[-1].startswith(f"elf case {i}:"):
            (keep / f"elf_{i}").write_bytes(exe.read_bytes())
            (keep / f"elf_{i}").chmod(0o755)
        progress("elf", i, n_elf, tallies["elf"], start)
    contract = work / "case.toml"
    target = str(BUILD / "static" / "ct_modexp")
    for i in range(n_contracts):
        contract.write_text(mutate_contract(rng.choice(texts), rng))
        status, err, secs = run_case(["contract", "validate", str(contract), "--binary",
                                      target], slow)
        judge(tallies["contract"], f"contract case {i}", status, err, secs, slow)
        if secs >= slow / 2 or (tallies["contract"].bad and tallies["contract"].bad[-1]
                                .startswith(f"contract case {i}:")):
            (keep / f"contract_{i}.toml").write_text(contract.read_text())
        progress("contract", i, n_contracts, tallies["contract"], start)
    return tallies


def report(tallies: dict[str, Tally], seed: int, wall: float) -> str:
    lines = [f"Last `make fuzz` run: seed {seed}, {wall:.0f} s wall time, "
             f"{os.cpu_count()} cores.", "",
             "| input | cases | status 125 | tracebacks / too slow | slowest | mean | statuses |",
             "|---|---|---|---|---|---|---|"]
    for kind, t in tallies.items():
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(t.statuses.items()))
        mean = t.seconds / t.runs if t.runs else 0.0
        lines.append(f"| {kind} | {t.runs} | {t.statuses.get(125, 0)} | {len(t.bad)} | "
                     f"{t.slowest:.2f} s | {mean:.3f} s | {statuses} |")
    return "\n".join(lines) + "\n"


MARK_BEGIN = "<!-- fuzz results: begin (written by fuzz/run.py) -->"
MARK_END = "<!-- fuzz results: end -->"


def update_doc(path: Path, text: str) -> None:
    """Replace the results block of docs/reliability.md."""
    doc = path.read_text()
    a, b = doc.index(MARK_BEGIN) + len(MARK_BEGIN), doc.index(MARK_END)
    path.write_text(doc[:a] + "\n" + text + doc[b:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elf", type=int, default=10_000)
    ap.add_argument("--contracts", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--slow", type=float, default=10.0, help="seconds a case may take")
    ap.add_argument("--report", type=Path, default=None, help="docs/reliability.md to update")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    import leakdbt.cli  # noqa: F401 - imported once, before the first fork
    keep = Path(tempfile.mkdtemp(prefix="leakdbt-fuzz-failures-"))
    start = time.monotonic()
    tallies = fuzz(args.elf, args.contracts, args.seed, args.slow, keep)
    text = report(tallies, args.seed, time.monotonic() - start)
    print(text)
    if args.report:
        update_doc(args.report, text)
    for kind, t in tallies.items():
        if t.runs:
            print(f"slowest {kind} case: {t.slowest_case} ({t.slowest:.2f} s)", file=sys.stderr)
    bad = [b for t in tallies.values() for b in t.bad]
    for b in bad[:50]:
        print(b, file=sys.stderr)
    print(f"failing inputs (and contracts over {args.slow / 2:g} s) kept in {keep}",
          file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
