"""Mode switches with parked threads: the dispatcher rewrites an entry jump only when no
thread — the running one or one parked with its saved rip inside the bytes the jump covers
(Machine.parked_pcs) — would resume in the middle of it; the program computes what native
computes."""

from __future__ import annotations

from pathlib import Path

from unicorn import UC_HOOK_CODE, Uc

from leakdbt.contract import load
from leakdbt.dbt.dispatch import Dispatcher, Mode, requests_from_contract
from leakdbt.machine.machine import Machine
from leakdbt.run.session import ExecOptions, execute
from leakdbt.x86.insn import decode
from tests.conftest import REPO, binary, run_native

SWITCH_LOOP = REPO / "contracts" / "switch_loop.toml"
GETPPID = 110


def test_a_parked_rip_inside_an_entry_jump_defers_the_switch(
        built: Path, capfd: object) -> None:
    """A fake parked thread sits after the region's first instruction (inside the 5 bytes
    the jump would cover) from the end of phase 0 to the end of phase 3: the switch to
    hardened asked for at the end of phase 0 waits — the jump is not written and the copy
    never runs — and once the thread has moved on, the next switch installs it and every
    later phase runs the copy.  The output is native's."""
    phases, calls = 8, 300
    exe = binary("static", "switch_loop")
    native = run_native([exe, str(phases), str(calls)])
    parked: list[int] = []
    asked = [0]
    copies = [0]
    per_phase: list[tuple[Mode, bool, int]] = []

    def parked_pcs() -> list[int]:
        asked[0] += 1
        return list(parked)

    def on_start(machine: Machine, d: Dispatcher | None) -> None:
        assert d is not None
        (site,) = d.sites
        assert site.patch is not None and not site.installed  # a jump, fast for now
        first = decode(machine.mem.read(site.entry, 16), site.entry)
        assert first is not None and site.entry < first.next < site.entry + len(site.patch)
        machine.parked_pcs.append(parked_pcs)

        # Count entries into the copy.  The engine may stop at an instruction after its
        # code hook ran and run it again when it resumes (a run cut into slices, which a
        # loaded machine makes more likely): a second hook call at the copy's entry before
        # its next instruction ran is that, not a second entry.
        entry = site.translation.entry
        second = decode(machine.mem.read(entry, 16), entry)
        assert second is not None
        at_entry = [False]

        def hit(uc: Uc, address: int, size: int, _ud: object) -> None:
            if not at_entry[0]:
                copies[0] += 1
            at_entry[0] = True

        def moved_on(uc: Uc, address: int, size: int, _ud: object) -> None:
            at_entry[0] = False

        machine.uc.hook_add(UC_HOOK_CODE, hit, None, entry, entry)
        machine.uc.hook_add(UC_HOOK_CODE, moved_on, None, second.next, second.next)
        handler = machine.syscall_handler
        assert handler is not None

        def syscall(m: Machine) -> None:
            number = m.reg("rax")
            handler(m)
            if number != GETPPID:
                return
            per_phase.append((d.mode, site.installed, copies[0]))
            if len(per_phase) == 1:
                parked[:] = [first.next]  # a thread parked after step's first instruction
                d.set_mode(Mode.HARDENED)
            elif len(per_phase) == 4:
                parked.clear()  # it ran on
                d.set_mode(Mode.HARDENED)

        machine.syscall_handler = syscall

    regions = requests_from_contract(load(SWITCH_LOOP, binary=exe))
    options = ExecOptions(argv=[exe, str(phases), str(calls)], env=[], regions=regions,
                          mode=Mode.FAST, count_entries=False, on_start=on_start)
    assert execute(exe, options).exit_status == 0
    assert capfd.readouterr().out.encode() == native.stdout  # type: ignore[attr-defined]
    assert asked[0] >= 1  # the switch looked at the parked thread
    assert len(per_phase) == phases
    # phases 1-3 (recorded at their ends, entries 1-3): still fast, no jump, no copy run
    assert [(mode, installed) for mode, installed, _ in per_phase[:4]] == \
        [(Mode.FAST, False)] * 4
    assert per_phase[3][2] == 0
    # phases 4-7: hardened, every call through the copy
    for (mode, installed, total), (_, _, before) in zip(per_phase[4:], per_phase[3:],
                                                        strict=False):
        assert (mode, installed, total - before) == (Mode.HARDENED, True, calls)
