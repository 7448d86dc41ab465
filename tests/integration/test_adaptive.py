"""Adaptive mode end to end: the monitor follows a scripted detector (exact switch
sequence, hold-down, policies), program output stays native's under any switching, and with
the real procfs detector a busy process on our CPU switches a pinned run to hardened and
back when it exits; one on the other CPU counts for a co-resident adversary only."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import LEAKDBT, REPO, binary, run_leakdbt, run_native

CONTRACT = REPO / "contracts" / "region_loop.toml"  # same-core adversary, adaptive policy
CALLS = "500000"


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() \
        else []


def adaptive(tmp_path: Path, detector: str, contract: Path = CONTRACT,
             extra: tuple[str, ...] = (), calls: str = CALLS) -> tuple[object, list[dict]]:
    log = tmp_path / "events.jsonl"
    run = run_leakdbt(["exec", "--contract", str(contract), "--mode", "adaptive",
                       "--detector", detector, "--events", str(log), "--stats", *extra,
                       binary("static", "region_loop"), calls])
    return run, events(log)


# One tick per millisecond: windows of 100 ticks outlast the guest's start-up.
@pytest.mark.parametrize("script", [
    "alone*5,core*100,alone",
    "core*100,alone*100,core*50,alone",
    "alone*2,error*100,alone",
    "machine*100,cache*100,alone",  # neither matters to a same-core adversary
])
def test_scripted_tenancy_switches_exactly_and_keeps_the_output(
        built: Path, tmp_path: Path, script: str) -> None:
    native = run_native([binary("static", "region_loop"), CALLS])
    run, log = adaptive(tmp_path, f"schedule:{script}", extra=("--poll-ms", "1",
                                                                "--hold-ms", "3"))
    assert (run.status, run.stdout) == (0, native.stdout), run.stderr.decode()  # type: ignore[attr-defined]
    # the modes the script implies: hardened whenever it says core or error, fast once the
    # 3 ms hold-down has passed after that; the first entry is the starting decision
    wanted = []
    for item in script.split(","):
        state = item.split("*")[0]
        mode = "hardened" if state in ("core", "error") else "fast"
        if not wanted or wanted[-1] != mode:
            wanted.append(mode)
    assert [e["mode"] for e in log] == wanted
    assert log[0]["initial"] and not any(e["initial"] for e in log[1:])
    stats = run.stderr.decode()  # type: ignore[attr-defined]
    monitor_switches = re.search(r"^\s+switches\s+(\d+)$", stats, re.M)  # the monitor's
    assert monitor_switches is not None and int(monitor_switches[1]) == len(wanted) - 1
    fast, hardened = _entries(stats)
    assert fast + hardened == int(CALLS)
    if "core" in script or "error" in script:
        assert hardened > 0
    if wanted[-1] == "fast":
        assert fast > 0


def _entries(stats: str) -> tuple[int, int]:
    line = next(x for x in stats.splitlines() if "tiny_region" in x and "'fast'" in x)
    counts = ast.literal_eval(line.split(None, 1)[1])
    return counts["fast"], counts["hardened"]


@pytest.mark.parametrize(("policy", "mode"), [("always", "hardened"), ("never", "fast")])
def test_always_and_never_regions_ignore_the_detector(built: Path, tmp_path: Path,
                                                      policy: str, mode: str) -> None:
    contract = tmp_path / "c.toml"
    contract.write_text(CONTRACT.read_text().replace('policy = "adaptive"',
                                                     f'policy = "{policy}"'))
    run, log = adaptive(tmp_path, "schedule:core*3,alone*3,core", contract)
    assert run.status == 0, run.stderr.decode()  # type: ignore[attr-defined]
    assert log == []  # no monitor runs
    fast, hardened = _entries(run.stderr.decode())  # type: ignore[attr-defined]
    assert (fast, hardened) == ((int(CALLS), 0) if mode == "fast" else (0, int(CALLS)))


def _busy(cpu: int) -> subprocess.Popen[bytes]:
    """A busy process pinned to ``cpu``: command name "yes" from its exec on (before it, a
    forked Python, which the run trusts)."""
    return subprocess.Popen(["yes"], stdout=subprocess.DEVNULL,
                            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))


def _pinned_run(tmp_path: Path, contract: Path, busy_cpu: int) -> list[dict]:
    """leakdbt on CPU 0 runs region_loop long enough; once its log shows the starting
    decision, a busy process starts on ``busy_cpu`` and is killed when the log shows the
    switch to hardened (or after a bounded number of polls of the log)."""
    log = tmp_path / "events.jsonl"
    cmd = ["taskset", "-c", "0", *LEAKDBT, "exec", "--contract", str(contract), "--mode",
           "adaptive", "--detector", "procfs", "--poll-ms", "5", "--hold-ms", "50",
           "--trust-name", "python", "--trust-name", "python3", "--trust-name", "pytest",
           "--events", str(log), binary("static", "region_loop"), "400000000"]
    guest = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    busy = None
    try:
        for _ in range(400):  # until the starting decision is logged
            if events(log):
                break
            time.sleep(0.02)
        busy = _busy(busy_cpu)
        for _ in range(150):  # until the monitor reacts (or clearly does not)
            if any(_saw_busy(e) for e in events(log)):
                break
            time.sleep(0.02)
        busy.kill()
        busy.wait()
        for _ in range(150):  # until it is back to fast (or clearly is not)
            log_now = events(log)
            if any(_saw_busy(e) for e in log_now) and log_now[-1]["mode"] == "fast":
                break
            time.sleep(0.02)
    finally:
        if busy is not None and busy.poll() is None:
            busy.kill()
        guest.kill()
        guest.wait()
    return events(log)


def test_procfs_sees_a_busy_process_on_our_cpu_and_its_exit(built: Path,
                                                            tmp_path: Path) -> None:
    log = _pinned_run(tmp_path, CONTRACT, busy_cpu=0)
    first = next((i for i, e in enumerate(log) if _saw_busy(e)), None)
    assert first is not None, log
    assert log[first]["mode"] == "hardened"
    assert any(c["name"] == "yes" and c["shares"] == "core" for c in log[first]["cotenants"])
    assert any(e["mode"] == "fast" for e in log[first:]), log  # back after it exited


def _saw_busy(event: dict) -> bool:
    """Other processes may come and go on the machine while the tests run (compilers of
    other tests): only switches the busy process caused count."""
    return event["mode"] == "hardened" and any(c["name"] == "yes"
                                               for c in event["cotenants"])


def test_other_cpu_counts_for_a_co_resident_adversary_only(built: Path,
                                                           tmp_path: Path) -> None:
    """CPU 1 is not an SMT sibling of CPU 0 here, so a busy process there is no same-core
    neighbour; whether it shares the last-level cache decides for a co-resident one."""
    llc = _shares_llc(0, 1)
    same_core = _pinned_run(tmp_path, CONTRACT, busy_cpu=1)
    assert not any(_saw_busy(e) for e in same_core), same_core
    resident = tmp_path / "co.toml"
    resident.write_text(CONTRACT.read_text().replace('adversary = "same-core"',
                                                     'adversary = "co-resident"'))
    (tmp_path / "events.jsonl").unlink(missing_ok=True)
    log = _pinned_run(tmp_path, resident, busy_cpu=1)
    assert any(_saw_busy(e) for e in log) == llc, log


def _shares_llc(a: int, b: int) -> bool:
    base = Path("/sys/devices/system/cpu")
    levels = sorted((base / f"cpu{a}" / "cache").glob("index*"),
                    key=lambda p: int((p / "level").read_text()))
    if not levels:
        return False
    shared = (levels[-1] / "shared_cpu_list").read_text().strip()
    cpus: set[int] = set()
    for part in shared.split(","):
        lo, _, hi = part.partition("-")
        cpus |= set(range(int(lo), int(hi or lo) + 1))
    return b in cpus
