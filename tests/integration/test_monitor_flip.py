"""`leakdbt monitor` and an adaptive hardened file, natively: the monitor's word flips while the
program runs, and the program counts its entries in each mode from the counter page (both
within one run); once the monitor stops (or without one) the program runs hardened.

The program (test_binaries/adaptive_flip.c) loops until it has seen a fast entry and then a
hardened one, bounded by a number of calls; the test drives the monitor's `file` detector.
Every wait is a bounded loop; nothing asserts wall time."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from leakdbt.monitor.modefile import FAST_WORD, entry_counts
from tests.conftest import REPO, binary, run_leakdbt, run_native

EXP = "0123456789abcdef"
MAX_ROUNDS = "20000000"  # a bound only: the program stops at the flip
POLLS = 3000  # how many times (10 ms apart) the test looks for what it waits for
RESULT = re.compile(rb"r=([0-9a-f]{8}) rounds=(\d+) fast=(\d+) hardened=(\d+)")


def _tenancy(path: Path, shares: str | None) -> None:
    """Write the `file` detector's state atomically: alone, or one co-tenant on `shares`."""
    tmp = path.with_suffix(".tmp")
    cotenants = [{"shares": shares, "name": "test"}] if shares else []
    tmp.write_text(json.dumps({"updated": time.time(), "cotenants": cotenants}))
    os.replace(tmp, path)


def _wait_for(condition: object) -> bool:
    for _ in range(POLLS):
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def _word(mode_file: Path) -> int:
    return int.from_bytes(mode_file.read_bytes()[:4], "little") if mode_file.exists() else -1


def test_the_word_flips_while_the_hardened_program_runs(built: Path, tmp_path: Path) -> None:
    mode_file, state = tmp_path / "mode", tmp_path / "tenancy.json"
    out = tmp_path / "adaptive_flip"
    run = run_leakdbt(["harden", "--contract", str(REPO / "contracts" / "ct_modexp.toml"),
                       "--mode", "adaptive", "--mode-file", str(mode_file), "-o", str(out),
                       binary("static", "adaptive_flip")])
    assert run.status == 0, run.stderr
    want = RESULT.search(run_native([binary("static", "adaptive_flip"), EXP, str(mode_file),
                                     "1"]).stdout)
    assert want is not None
    _tenancy(state, None)
    monitor = subprocess.Popen(
        [sys.executable, "-m", "leakdbt", "monitor", "--mode-file", str(mode_file),
         "--detector", f"file:{state}", "--poll-ms", "2", "--hold-ms", "0"],
        stderr=subprocess.PIPE)
    try:
        assert _wait_for(lambda: _word(mode_file) == FAST_WORD), "the monitor never said fast"
        program = subprocess.Popen([str(out), EXP, str(mode_file), MAX_ROUNDS],
                                   stdout=subprocess.PIPE)
        assert _wait_for(lambda: entry_counts(mode_file.read_bytes(), 0)[0] > 0)
        _tenancy(state, "core")  # a co-tenant on our core: the next poll says hardened
        stdout, _ = program.communicate(timeout=600)
        assert program.returncode == 0
    finally:
        monitor.send_signal(signal.SIGTERM)
        _, err = monitor.communicate(timeout=60)
    assert monitor.returncode == 0, err
    got = RESULT.search(stdout)
    assert got is not None, stdout
    fast, hardened = int(got[3]), int(got[4])
    assert got[1] == want[1]  # what modexp computes, in both modes
    assert fast > 0 and hardened > 0, stdout  # both modes within this one run
    assert int(got[2]) < int(MAX_ROUNDS)  # it stopped at the flip, not at the bound
    assert _word(mode_file) != FAST_WORD  # the monitor left the word hardened

    # No monitor any more: hardened only (region modexp+0x20 is entered 64 times a call).
    before = entry_counts(mode_file.read_bytes(), 0)
    alone = RESULT.search(run_native([str(out), EXP, str(mode_file), "10"]).stdout)
    assert alone is not None and alone.groups()[1:] == (b"10", b"0", b"640")
    assert entry_counts(mode_file.read_bytes(), 0) == (before[0], before[1] + 640)


def test_monitor_bad_arguments_are_one_line_with_status_2(tmp_path: Path) -> None:
    unsafe = tmp_path / "mode"
    unsafe.write_bytes(bytes(4096))
    unsafe.chmod(0o666)
    for args, says in ((["--detector", "nope"], b"no detector named"),
                       (["--poll-ms", "0"], b"--poll-ms"),
                       (["--adversary", "remote"], b"--adversary"),
                       (["--mode-file", str(unsafe)], b"writable by group or others"),
                       (["--mode-file", str(tmp_path / "m2"), "--detector", "fixed:alone",
                         str(tmp_path / "missing")], b"No such file")):
        run = run_leakdbt(["monitor", *args])
        assert run.status == 2 and says in run.stderr, (args, run.stderr)
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_monitor_runs_a_command_and_exits_with_its_status(tmp_path: Path) -> None:
    mode_file = tmp_path / "mode"
    probe = f"import sys; sys.exit(7 if open({str(mode_file)!r}, 'rb').read(4) == b'FAST' else 1)"
    run = run_leakdbt(["monitor", "--mode-file", str(mode_file), "--detector", "fixed:alone",
                       sys.executable, "-c", probe])
    assert run.status == 7, run.stderr  # the word said fast while the command ran
    assert _word(mode_file) == 0  # and hardened once it is over
    run = run_leakdbt(["monitor", "--mode-file", str(mode_file), "--detector", "fixed:cache",
                       "--adversary", "same-core", sys.executable, "-c", probe])
    assert run.status == 7  # a cache co-tenant does not matter to a same-core adversary
    run = run_leakdbt(["monitor", "--mode-file", str(mode_file), "--detector", "fixed:cache",
                       sys.executable, "-c", probe])
    assert run.status == 1  # ... but does to a co-resident one
