"""Forked snapshots (leakdbt.leakage.snapshot): a check whose trials fork from one run up to
the first access of a secret reports exactly what the same check with every trial run
afresh reports; the snapshot is used only where it is sound, and abandoned (the trials then
run afresh) where the process cannot be forked for them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from leakdbt.contract import load
from leakdbt.contract.profiles import get_profile
from leakdbt.leakage import snapshot, trials
from leakdbt.leakage.check import CheckOptions, run_check, trial_setup
from leakdbt.leakage.snapshot import unsound_reason
from leakdbt.leakage.trials import trial_inputs
from tests.conftest import REPO, binary
from tests.unit.dbt.harness import compile_program

CONTRACTS = REPO / "contracts"
CPU = "intel-skylake"

# Reads the clock and prints before it reads its secret (argv[1], or $SECRET with mode
# "env"), writes it out, branches on it and reads the clock and getrandom again.
PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv)
{
    struct timespec t0, t1;
    unsigned char r[4];
    const char *mode = argc > 2 ? argv[2] : "argv";
    clock_gettime(CLOCK_REALTIME, &t0);
    if (write(1, "start\n", 6) != 6) return 2;
    const char *s = mode[0] == 'e' ? getenv("SECRET") : argv[1];
    if (s == NULL || write(1, s, 4) != 4) return 4;
    clock_gettime(CLOCK_REALTIME, &t1);
    if (getrandom(r, sizeof r, 0) != sizeof r) return 5;
    volatile unsigned acc = 0;
    for (int i = 0; s[i]; i++) {
        if (s[i] > '7') acc += (unsigned)(t1.tv_nsec % 7) + r[0];
        else acc ^= (unsigned)i;
    }
    printf("\n%u %ld %ld %02x\n", acc, t0.tv_nsec, t1.tv_nsec, r[1]);
    return 0;
}
"""

# No libc (whose start-up code reads past argv[0] with vector loads, into argv[1]): the
# first access of the secret argv[1] is the kernel's, write(2) of it, unless mode (argv[2])
# "none" never touches it; mode "open" first opens a file and keeps it open.
RAW = r"""
static long sys3(long n, long a, long b, long c)
{
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c)
                     : "rcx", "r11", "memory");
    return r;
}
__attribute__((noreturn, used)) void start_c(long *sp)
{
    char **argv = (char **)(sp + 1);
    const char *mode = argv[2];
    if (mode[0] == 'o' && sys3(2, (long)"/dev/null", 0, 0) < 0) sys3(60, 3, 0, 0);
    if (mode[0] != 'n') sys3(1, 1, (long)argv[1], 4);
    sys3(1, 1, (long)"\n", 1);
    sys3(60, 0, 0, 0);
    __builtin_unreachable();
}
__asm__(".globl _start\n_start:\n mov %rsp, %rdi\n and $-16, %rsp\n call start_c\n");
"""
RAW_FLAGS = ["-nostdlib", "-ffreestanding", "-fno-stack-protector"]


def _both(exe: str, contract: Path, trials: int = 8, modes: tuple[str, ...] = ("original",),
          args: list[str] | None = None, jobs: int = 2) -> tuple[dict[str, object], dict[str, int]]:
    """The check's report with snapshots, asserted equal (but for its wall time) to the
    report without; and how the snapshots went."""
    c = load(contract, binary=exe)
    reports = []
    before = dict(snapshot.STATS)
    for snaps in (True, False):
        report = run_check(exe, c, get_profile(CPU), CheckOptions(modes, trials=trials,
                                                                 jobs=jobs, snapshots=snaps),
                           args)
        reports.append({k: v for k, v in dataclasses.asdict(report).items() if k != "seconds"})
    assert reports[0] == reports[1]
    return reports[0], {k: snapshot.STATS[k] - before[k] for k in before}


@pytest.mark.parametrize("program", ["ct_modexp", "secret_div", "sbox_round"])
def test_argv_secrets_fork_from_a_snapshot_and_report_the_same(built: Path, program: str
                                                               ) -> None:
    report, stats = _both(binary("static", program), CONTRACTS / f"{program}.toml",
                          modes=("original", "hardened"))
    assert report["findings"]  # leaky programs: the comparison is not of empty reports
    assert stats["templates"] >= 2 and stats["abandoned"] == 0
    assert stats["forked"] >= 16  # every trial of both modes forked


def test_dynamic_build_and_one_job_and_caches_handed_back(built: Path) -> None:
    """The children hand the symbolic names they computed back to the parent (later
    children start with them, as the trials of one worker process do)."""
    trials.SYMBOLIC.clear()
    c = load(CONTRACTS / "sbox_round.toml", binary=binary("dynamic", "sbox_round"))
    run_check(binary("dynamic", "sbox_round"), c, get_profile(CPU),
              CheckOptions(trials=2, jobs=1, directed_rounds=0))
    assert any("sub_bytes_key" in name for name in trials.SYMBOLIC.values())
    report, stats = _both(binary("dynamic", "sbox_round"), CONTRACTS / "sbox_round.toml",
                          trials=6, jobs=1)
    assert report["findings"] and stats["forked"] >= 6 and stats["abandoned"] == 0


def _contract(tmp_path: Path, secret: str, args: list[str]) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(f'version = 1\n[[secret]]\nname = "s"\n{secret}\nlength = 2\n'
                    'format = "hex"\n[protect]\nadversary = "co-resident"\n'
                    f"[check]\ntrials = 8\nargs = {args!r}\n".replace("'", '"'))
    return path


@pytest.mark.parametrize(("secret", "args"), [("argv = 1", []),
                                              ('env = "SECRET"', ["pub", "env"])])
def test_secret_read_first_by_the_kernel_and_clocks_after_the_fork(
        built: Path, tmp_path: Path, secret: str, args: list[str]) -> None:
    """Each trial prints its own secret (the output leak is found as without snapshots); the
    virtual clock and getrandom, read before and after the fork, give every trial what a
    fresh run gets; an env secret forks as an argv secret does."""
    exe = str(compile_program(tmp_path, "snap", {"snap.c": PROGRAM}, "static"))
    report, stats = _both(exe, _contract(tmp_path, secret, args))
    assert stats["forked"] >= 8 and stats["abandoned"] == 0  # directed trials too
    outputs = report["outputs"]
    assert isinstance(outputs, list)
    assert any("standard output depends on the secrets" in o for o in outputs)
    assert report["findings"]  # the branch on the secret's digits


def _raw(tmp_path: Path) -> str:
    return str(compile_program(tmp_path, "raw", {"raw.c": RAW}, "static", RAW_FLAGS))


def test_first_access_by_the_kernel_is_the_snapshot_point(built: Path, tmp_path: Path
                                                          ) -> None:
    """No guest instruction reads the secret: write(2) does, and each trial prints its own
    value (an output leak)."""
    report, stats = _both(_raw(tmp_path), _contract(tmp_path, "argv = 1", ["x", "write"]))
    assert stats["forked"] >= 8 and stats["abandoned"] == 0
    outputs = report["outputs"]
    assert isinstance(outputs, list) and len(outputs) == 1
    assert "standard output depends on the secrets" in outputs[0]


@pytest.mark.parametrize("mode", ["open", "none"])
def test_snapshot_abandoned_when_the_process_cannot_be_forked_or_secret_untouched(
        built: Path, tmp_path: Path, mode: str) -> None:
    """A file open at the first access (its offset would be the children's), or a secret
    never accessed: the template is the first trial's plain run, the others run afresh."""
    report, stats = _both(_raw(tmp_path), _contract(tmp_path, "argv = 1", ["x", mode]))
    assert stats["templates"] >= 1 and stats["forked"] == 0
    assert stats["abandoned"] == stats["templates"]
    outputs = report["outputs"]
    assert isinstance(outputs, list)
    assert (mode == "open") == any("standard output" in o for o in outputs)


def test_snapshot_not_used_where_unsound(built: Path, tmp_path: Path) -> None:
    """A register secret (placed at a function's entry), a standard-input secret, a
    per-trial timeout, a single trial: every trial runs afresh."""
    exe = binary("static", "modexp")
    c = load(CONTRACTS / "modexp.toml", binary=exe)
    setup = trial_setup(exe, c, get_profile(CPU), "original", 0)
    inputs = trial_inputs(c, 4, 1)
    assert unsound_reason(setup, inputs).endswith("is not an argv or env secret")
    before = dict(snapshot.STATS)
    run_check(exe, c, get_profile(CPU), CheckOptions(trials=4, jobs=1))
    assert before == snapshot.STATS

    stdin = tmp_path / "stdin.toml"
    stdin.write_text('version = 1\n[[secret]]\nname = "k"\nstdin = true\nlength = 4\n'
                     '[protect]\nadversary = "co-resident"\n')
    cs = load(stdin, binary=exe)
    assert unsound_reason(trial_setup(exe, cs, get_profile(CPU), "original", 0),
                          trial_inputs(cs, 4, 1)) == "secret k is not an argv or env secret"

    argv = load(CONTRACTS / "ct_modexp.toml", binary=binary("static", "ct_modexp"))
    ok = trial_setup(exe, argv, get_profile(CPU), "original", 0)
    assert unsound_reason(ok, trial_inputs(argv, 4, 1)) == ""
    assert unsound_reason(ok, trial_inputs(argv, 1, 1)) == "a single trial"
    timed = dataclasses.replace(ok, timeout=5.0)
    assert "timeout" in unsound_reason(timed, trial_inputs(argv, 4, 1))
