"""The scope of a contract: while one of ``protect.functions`` is active, callees included.

One implementation for every tool (``check``'s observers, ``analyze``'s findings): a scoped
function is *entered* when its first instruction is about to run and stays active until
that call returns — until the stack pointer rises above the one it was entered with (the
return address popped), whatever it calls in between.  A recursive or nested entry while
the scope is active changes nothing: the outermost call decides.  Without scoped functions
the whole run is the scope.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from leakdbt.contract.model import Contract
from leakdbt.loader.modules import LoadedModule, ModuleMap
from leakdbt.machine.machine import Machine


def scoped_functions(contract: Contract) -> list[tuple[str | None, int]] | None:
    """(module file name or None for the main program, link-time start) of each function
    of ``protect.functions`` (bound contract); None when the whole run is the scope."""
    binding = contract.binding
    assert binding is not None
    return [(f.module, f.start) for f in binding.functions] or None


def entries_in(functions: Sequence[tuple[str | None, int]], mod: LoadedModule) -> list[int]:
    """Runtime entries, in the loaded module ``mod``, of those of ``functions`` ((module
    file name or None for the main program, link-time start)) that it holds."""
    return [start + mod.base for module, start in functions if mod.is_named(module)]


class FunctionScope:
    """Tells whether a run is inside the scope now (see the module doc).

    ``on_enter`` callbacks hear the entry address when the scope becomes active; ``on_leave``
    callbacks when it ends.  The end is seen at the next :meth:`active` call, which must
    come before the run calls deeper again (a call after the return would go below the
    entry's stack pointer once more): at every block, by :meth:`watch` or by the caller's
    own block hook."""

    def __init__(self, machine: Machine,
                 functions: Sequence[tuple[str | None, int]] | None) -> None:
        self.machine = machine
        self.functions = list(functions) if functions is not None else None
        self.everywhere = functions is None
        self._active = self.everywhere
        self._entry_rsp = 0
        self._rsp = machine.reg_reader("rsp")
        self.on_enter: list[Callable[[int], None]] = []
        # Asked at an entry before it counts; one that returns True has stopped the engine
        # to resume at the entry (e.g. to retranslate with a new hook): the entry counts then.
        self.before_enter: list[Callable[[int], bool]] = []
        self.on_leave: list[Callable[[], None]] = []
        if not self.everywhere:
            # The scope is the run's, not a thread's: a guest thread switch inside a scoped
            # call would judge another thread's stack pointer against the entry's, so the
            # scheduler's quantum waits until the call returns (Machine.preemption_holds).
            machine.preemption_holds.append(lambda: self._active)

    def watch(self, modules: ModuleMap, returns: bool = True) -> None:
        """Hook the scoped functions' entries in the modules loaded now and those the guest
        loads later (call before the guest runs); with ``returns``, also check at every
        block whether the scoped call has returned (without: the caller calls
        :meth:`active` at every block itself)."""
        if self.functions is None:
            return
        for mod in modules.modules():
            self._add_module(mod)
        modules.listeners.append(self._add_module)
        if returns:
            self.machine.hooks.on_block(lambda address, size: self.active())

    def _add_module(self, mod: LoadedModule) -> None:
        for entry in entries_in(self.functions or (), mod):
            self.add_entry(entry)

    def add_entry(self, entry: int) -> None:
        """Enter the scope at each execution of the runtime address ``entry``."""
        self.machine.hooks.at(entry, self._on_entry)

    def _on_entry(self, address: int, size: int) -> None:
        if not self._active:
            if any([fn(address) for fn in self.before_enter]):
                return
            self._active = True
            self._entry_rsp = self._rsp()
            for fn in self.on_enter:
                fn(address)

    def active(self) -> bool:
        """Is the run inside the scope now?"""
        if self._active and not self.everywhere and self._rsp() > self._entry_rsp:
            self._active = False  # the scoped call has returned
            for fn in self.on_leave:
                fn()
        return self._active


class ScopeCounter:
    """What ``exec --stats`` reports about the scope: how often it was entered and the guest
    blocks and instructions run inside it (the same scope as ``check`` and ``analyze``).

    A block counts when it starts inside the scope; the block that enters the scope counts
    from the scoped function's first instruction (the entry hook fires after its block
    began).  Instructions per block are decoded once per (address, size)."""

    def __init__(self, machine: Machine, modules: ModuleMap,
                 functions: Sequence[tuple[str | None, int]] | None) -> None:
        self.machine = machine
        self.scope = FunctionScope(machine, functions)
        self.entries = 0
        self.blocks = 0
        self.instructions = 0
        self._sizes: dict[tuple[int, int], list[int]] = {}
        self._block = (0, 0)
        self.scope.on_enter.append(self._entered)
        self.scope.watch(modules, returns=False)
        machine.hooks.on_block(self._on_block)

    def _starts(self, address: int, size: int) -> list[int]:
        key = (address, size)
        if key not in self._sizes:
            from leakdbt.x86.disasm import instruction_starts

            self._sizes[key] = instruction_starts(self.machine.mem.read(address, size), address)
        return self._sizes[key]

    def _on_block(self, address: int, size: int) -> None:
        self._block = (address, size)
        if self.scope.active():
            self.blocks += 1
            self.instructions += len(self._starts(address, size))

    def _entered(self, entry: int) -> None:
        self.entries += 1
        address, size = self._block
        if address <= entry < address + size:
            self.blocks += 1
            self.instructions += sum(1 for a in self._starts(address, size) if a >= entry)

    def report(self) -> dict[str, int]:
        """Entries (when functions are scoped), blocks and guest instructions inside."""
        entries = {} if self.scope.everywhere else {"entries": self.entries}
        return {**entries, "blocks": self.blocks, "instructions": self.instructions}
