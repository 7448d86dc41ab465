"""Calls through the GOT in analyze's verdicts: the GOT slots as the analysed run bound them.

``exec`` hardens a region whose calls go through the GOT (``call f@plt``, ``call [rip +
GOT]``) when the region is first entered, reading the slots then (leakdbt.dbt.calls): a bound
slot's function is the callee, a slot not bound yet (lazy binding) is resolved as ld.so will
bind it, and an IFUNC or a versioned name only once bound.  analyze judges regions without a
running program (leakdbt.run.protect.verdicts), so it would refuse every such call ("only
the translator resolves it").  A :class:`GotRecord` attached to one of analyze's untainted
runs (the same program, inputs and virtual time as the analysed run) copies every loaded
module's GOT at the first run of each region entry it is asked to watch; :meth:`linker`
then gives the verdict for a region the same Linker exec gives it, reading that copy.  A
region whose entry the run never reached gets no copy: its slots are resolved as if none
were bound yet (what exec would find on an entry before any binding).

What can still differ from exec: exec's earlier hardened regions call cloned callees, not
their PLT stubs, so a slot that the original code binds before this region's first entry
may still be unbound in exec; that matters only for an IFUNC or versioned name (resolved
only once bound).  For a call-site region (region growing), the copy is the one made when
the call reached the callee, after the region's entry.
"""

from __future__ import annotations

from leakdbt.contract.model import ResolvedAddress
from leakdbt.dbt.calls import Linker
from leakdbt.errors import LeakDBTError
from leakdbt.loader.dynsym import linkage
from leakdbt.loader.modules import LoadedModule, ModuleMap
from leakdbt.machine.machine import Machine

Snapshot = tuple[tuple[int, bytes], ...]  # (runtime start, bytes) of each module's GOT span


class GotRecord:
    """Every loaded module's GOT slots at the first run of chosen instructions of a run."""

    def __init__(self) -> None:
        self.machine: Machine | None = None
        self.modules: ModuleMap | None = None
        self.loaded: list[LoadedModule] = []  # in load order: ld.so's lookup order
        self.at_entry: dict[int, Snapshot] = {}  # runtime address -> the GOTs as it first ran

    def attach(self, machine: Machine, modules: ModuleMap) -> None:
        """Follow the run of ``machine`` (at its start: the modules mapped so far, then each
        one the guest's ld.so maps, as exec's dispatcher records them)."""
        self.machine, self.modules = machine, modules
        self.loaded = modules.modules()
        modules.listeners.append(self.loaded.append)

    def first_run(self, runtime: int) -> None:
        """Copy the GOTs when the instruction at ``runtime`` first runs."""
        assert self.machine is not None

        machine = self.machine

        def hook(address: int, _size: int) -> None:
            if address in self.at_entry:
                return  # run again after the engine stopped here, before the removal
            self.at_entry[address] = self.snapshot()
            machine.defer(lambda: machine.hooks.remove(handle))  # the first run only

        handle = machine.hooks.at(runtime, hook)

    def copy(self, runtime: int, snapshot: Snapshot) -> None:
        """Take ``snapshot`` as the GOTs at ``runtime``'s first run, unless one was copied."""
        self.at_entry.setdefault(runtime, snapshot)

    def snapshot(self) -> Snapshot:
        """The bytes of every loaded module's GOT span (its first to its last slot) now."""
        assert self.machine is not None and self.modules is not None
        spans = []
        for mod in self.modules.modules():
            slots = linkage(mod.image).slots if mod.image is not None else {}
            if not slots:
                continue
            lo, hi = min(slots), max(slots) + 8
            try:
                spans.append((mod.base + lo, self.machine.mem.read(mod.base + lo, hi - lo)))
            except LeakDBTError:
                continue  # not mapped (yet): read as unbound
        return tuple(spans)

    def linker(self, at: ResolvedAddress) -> Linker | None:
        """The linker exec would resolve the GOT slots of the region at ``at`` with, on its
        first entry in this run (None: its module was not loaded)."""
        mod = next((m for m in self.loaded if m.is_named(at.module)), None)
        if mod is None or self.modules is None:
            return None
        spans = self.at_entry.get(at.address + mod.base, ())

        def read(address: int, size: int) -> bytes | None:
            for start, data in spans:
                if start <= address and address + size <= start + len(data):
                    return data[address - start:address - start + size]
            return None

        loaded = list(self.loaded)
        return Linker(self.modules, mod, read, lambda: loaded, running=True)
