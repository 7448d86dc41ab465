"""The dispatcher: regions run from the chosen cache, switching at run time keeps the
program's output, every entry is counted in the mode it ran in, and stale code never runs."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from unicorn import UC_HOOK_CODE, Uc

from leakdbt.contract import load
from leakdbt.dbt.dispatch import Dispatcher, Mode, requests_from_contract
from leakdbt.machine.machine import Machine
from leakdbt.run.session import ExecOptions, execute
from tests.conftest import KINDS, REPO, binary, run_leakdbt, run_native

REGION_LOOP = REPO / "contracts" / "region_loop.toml"
CHECKSUM = REPO / "contracts" / "checksum_self.toml"
SWITCH_LOOP = REPO / "contracts" / "switch_loop.toml"
CALLS = 20_000


def _run(exe: str, contract: Path, args: list[str], mode: Mode,
         on_start: object = None, count: bool = True) -> tuple[int, Dispatcher]:
    regions = requests_from_contract(load(contract, binary=exe))
    seen: list[Dispatcher] = []

    def start(machine: Machine, d: Dispatcher | None) -> None:
        assert d is not None
        seen.append(d)
        if callable(on_start):
            on_start(machine, d)

    options = ExecOptions(argv=[exe, *args], env=[], regions=regions, mode=mode,
                          count_entries=count, on_start=start)
    result = execute(exe, options)
    return result.exit_status, seen[0]


def _copy_runs(machine: Machine, d: Dispatcher, counter: list[int]) -> None:
    """Count executions of each region copy's first instruction (a test-only hook)."""
    for site in d.sites:
        def hit(uc: Uc, address: int, size: int, _ud: object) -> None:
            counter[0] += 1
        machine.uc.hook_add(UC_HOOK_CODE, hit, None, site.translation.entry,
                            site.translation.entry)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", [Mode.FAST, Mode.HARDENED])
def test_each_mode_runs_its_cache(built: Path, capfd: pytest.CaptureFixture[str], kind: str,
                                  mode: Mode) -> None:
    exe = binary(kind, "region_loop")
    native = run_native([exe, str(CALLS)])
    copies = [0]
    status, d = _run(exe, REGION_LOOP, [str(CALLS)], mode,
                     lambda m, disp: _copy_runs(m, disp, copies))
    assert status == 0
    assert capfd.readouterr().out.encode() == native.stdout
    (site,) = d.sites
    other = Mode.FAST if mode is Mode.HARDENED else Mode.HARDENED
    assert site.entries == {mode: CALLS, other: 0}
    assert copies[0] == (CALLS if mode is Mode.HARDENED else 0)


@pytest.mark.parametrize("kind", KINDS)
def test_switching_many_times_keeps_output_and_counts(
        built: Path, capfd: pytest.CaptureFixture[str], kind: str) -> None:
    """A monitor thread flips the mode every 0.5 ms while the region runs 300,000 times:
    the output is native's, the entries per mode add up to the calls the program makes, and
    the copy runs exactly as often as hardened entries (a stale entry jump, or a stale
    translation of one, would make them differ)."""
    exe = binary(kind, "region_loop")
    calls = 300_000
    native = run_native([exe, str(calls)])
    stop = threading.Event()
    copies = [0]

    def on_start(machine: Machine, d: Dispatcher) -> None:
        _copy_runs(machine, d, copies)

        def monitor() -> None:
            mode = Mode.HARDENED
            while not stop.wait(0.0005):
                d.set_mode(mode)
                mode = Mode.FAST if mode is Mode.HARDENED else Mode.HARDENED

        threading.Thread(target=monitor, daemon=True).start()

    try:
        status, d = _run(exe, REGION_LOOP, [str(calls)], Mode.FAST, on_start)
    finally:
        stop.set()
    assert status == 0
    assert capfd.readouterr().out.encode() == native.stdout
    (site,) = d.sites
    assert site.entries[Mode.FAST] + site.entries[Mode.HARDENED] == calls
    assert site.entries[Mode.FAST] > 0 and site.entries[Mode.HARDENED] > 0
    assert d.stats.switches >= 20
    assert copies[0] == site.entries[Mode.HARDENED]


@pytest.mark.parametrize("kind", KINDS)
def test_entry_jumps_switch_at_safe_points(built: Path, capfd: pytest.CaptureFixture[str],
                                           kind: str) -> None:
    """Without entry counting, regions are entered by jumps written into the code's
    executed view.  The test flips the mode after every phase's getppid system call: the
    copy runs exactly CALLS times in each hardened phase and never in a fast one, so no
    stale jump and no stale translation of one ever ran."""
    phases, calls = 9, 500
    exe = binary(kind, "switch_loop")
    native = run_native([exe, str(phases), str(calls)])
    copies = [0]
    per_phase: list[tuple[Mode, int]] = []

    def on_start(machine: Machine, d: Dispatcher) -> None:
        (site,) = d.sites
        assert site.patch is not None  # entered by a jump, not a hook
        _copy_runs(machine, d, copies)
        handler = machine.syscall_handler
        assert handler is not None

        def syscall(m: Machine) -> None:
            number = m.reg("rax")
            handler(m)
            if number == 110:  # getppid: a phase ended
                per_phase.append((d.mode, copies[0]))
                d.set_mode(Mode.FAST if d.mode is Mode.HARDENED else Mode.HARDENED)

        machine.syscall_handler = syscall

    status, d = _run(exe, SWITCH_LOOP, [str(phases), str(calls)], Mode.FAST, on_start,
                     count=False)
    assert status == 0
    assert capfd.readouterr().out.encode() == native.stdout
    before = 0
    for mode, total in per_phase:
        assert total - before == (calls if mode is Mode.HARDENED else 0), per_phase
        before = total
    assert len(per_phase) == phases and d.stats.switches == phases


@pytest.mark.parametrize("mode", [Mode.FAST, Mode.HARDENED])
def test_region_in_a_shared_library(built: Path, tmp_path: Path,
                                    capfd: pytest.CaptureFixture[str], mode: Mode) -> None:
    """A region named ``libc.so.6:printf`` is translated when ld.so maps libc, at libc's
    real load address, and entered by its entry jump in hardened mode only."""
    contract = tmp_path / "libc.toml"
    text = REGION_LOOP.read_text().replace('at = "tiny_region"', 'at = "libc.so.6:printf"')
    contract.write_text(text.replace('functions = ["tiny_region"]\n', ""))
    exe = binary("dynamic", "region_loop")
    native = run_native([exe, "100"])
    copies = [0]

    def on_start(machine: Machine, d: Dispatcher) -> None:
        assert d.sites == []  # libc is not mapped yet

        def watch(_module: object) -> None:  # runs after the dispatcher translated
            if d.sites and not copies[1:]:
                copies.append(1)
                _copy_runs(machine, d, copies)

        d.modules.listeners.append(watch)

    status, d = _run(exe, contract, ["100"], mode, on_start, count=False)
    assert status == 0
    assert capfd.readouterr().out.encode() == native.stdout
    (site,) = d.sites
    assert site.name == "libc.so.6:printf" and site.patch is not None
    assert copies[0] == (1 if mode is Mode.HARDENED else 0)


@pytest.mark.parametrize("kind", KINDS)
def test_guest_reads_its_original_code_in_both_modes(built: Path, kind: str) -> None:
    exe = binary(kind, "checksum_self")
    native = run_native([exe])
    for mode in ("fast", "hardened"):
        # The regions are whole blocks no pass hardens: the test is about reading code.
        guest = run_leakdbt(["exec", "--contract", str(CHECKSUM), "--mode", mode, "--stats",
                             "--allow-unhardened", exe])
        assert guest.stdout == native.stdout, guest.stderr.decode()
        assert guest.status == 0
        stats = guest.stderr.decode()
        assert "regions translated:        2" in stats
        entries = {"fast": "{'fast': 1, 'hardened': 0}",
                   "hardened": "{'fast': 0, 'hardened': 1}"}[mode]
        assert "main  " in stats and entries in stats, stats


@pytest.mark.parametrize("kind", KINDS)
def test_regions_are_translated_ahead_of_their_first_run(built: Path, kind: str) -> None:
    """Before the guest starts, the engine has translated the whole of every region copy
    (the sizes are the engine's own), so the first run does not reveal which path it took."""
    exe = binary(kind, "region_loop")
    covered: list[bool] = []

    def on_start(machine: Machine, d: Dispatcher) -> None:
        (site,) = d.sites
        t = site.translation
        tbs = sorted(site.pretranslated)
        assert {a for a, _ in tbs} >= set(t.blocks)
        at = t.base
        for address, size in tbs:  # contiguous, from the copy's start to its end
            assert address == at
            at += size
        covered.append(at == t.end)

    status, _d = _run(exe, REGION_LOOP, ["10"], Mode.HARDENED, on_start, count=False)
    assert status == 0
    assert covered == [True]


SWITCH_C = r"""
#include <stdio.h>
__attribute__((noipa)) long sw(long x, long y)
{
    switch (x & 7) {
    case 0: return y * 3 + 1;
    case 1: return y ^ 0x55;
    case 2: return y - 17;
    case 3: return y << 3;
    case 4: return y / 7;
    case 5: return ~y;
    case 6: return y * y + 5;
    default: return y + 99;
    }
}
int main(void)
{
    long acc = 1;
    for (long i = 0; i < 1000; i++)
        acc = sw(i, acc) + i;
    printf("%ld\\n", acc);
    return 0;
}
"""


@pytest.mark.parametrize("flags", [["-static"], ["-static-pie", "-fPIE"]])
def test_translate_all_keeps_switch_cases_in_the_copy(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], flags: list[str]) -> None:
    """A jump-table jump in a copy reads original addresses; the case targets get entry
    jumps back into the copy, so of the original function only those jumps ever run."""
    import subprocess

    from unicorn import UC_HOOK_BLOCK

    from leakdbt.dbt.cfg import function_cfg
    from leakdbt.loader.elf import load_image

    src = tmp_path / "sw.c"
    src.write_text(SWITCH_C)
    exe = tmp_path / "sw"
    subprocess.run(["gcc", "-O2", *flags, "-o", str(exe), str(src)], check=True)
    native = run_native([str(exe)])
    image = load_image(exe)
    func = image.symbol("sw")
    assert func is not None
    cfg = function_cfg(image, func)
    (table,) = cfg.jump_tables.values()
    bias = 0x5555_5555_4000 if image.is_pie else 0
    allowed = {func.value + bias} | {t + bias for t in table.targets}
    ran: dict[int, int] = {}

    def on_start(machine: Machine, d: Dispatcher | None) -> None:
        def block(uc: Uc, address: int, size: int, _ud: object) -> None:
            ran[address] = size

        machine.uc.hook_add(UC_HOOK_BLOCK, block, None, func.value + bias,
                            func.value + bias + func.size - 1)

    options = ExecOptions(argv=[str(exe)], env=[], translate_all=["sw"], on_start=on_start)
    assert execute(str(exe), options).exit_status == 0
    assert capfd.readouterr().out.encode() == native.stdout
    assert ran and set(ran) <= allowed, sorted(map(hex, set(ran) - allowed))
    assert all(size == 5 for size in ran.values())  # only the entry jumps themselves
