"""Calls through the GOT, resolved as the dynamic linker binds them: what
``RegionView.resolve_indirect`` and, for functions of other modules, ``RegionView.callee``
answer (docs/passes.md, "Predicated calls").

A region is hardened while the program runs, so the GOT is there to read.  The slot an
indirect ``jmp``/``call [rip + X]`` goes through must be a GOT slot (it has a ``JUMP_SLOT`` or
``GLOB_DAT`` relocation naming a symbol): a function pointer of the program's own may change
and is never resolved.  A slot that holds the address of a function (outside any PLT) is
bound, and that function is the target.  A slot that still points into a PLT (lazy binding)
or holds nothing yet is resolved the way ld.so will bind it: the first module, in lookup
order (the main program, then the libraries in the order they were loaded, the dynamic
linker last), that exports a function of that name.  An IFUNC, or a name with several
symbol versions, is resolved only once bound (its resolver, or the caller's version
requirement, decides).

Addresses are in the region's module's terms: a function of another module at runtime
address R is ``R - bias``, and its blocks are decoded at those addresses, so that passes and
the relocator treat its instructions as the region's own (their RIP-relative operands still
denote their own module's data).

When the translator hardens a module's regions as the module is loaded, its GOT is not
relocated yet and the libraries it imports from are not loaded: a resolution asked for then
is put off (:class:`ResolveLater`), and the region is hardened when it is first entered.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable

from leakdbt.dbt.cfg import NORETURN, FunctionCFG, recover
from leakdbt.errors import LeakDBTError, TranslationError
from leakdbt.loader.dynsym import linkage
from leakdbt.loader.functions import code_functions
from leakdbt.loader.image import PF_X
from leakdbt.loader.modules import LoadedModule, ModuleMap
from leakdbt.x86.insn import Flow, Insn

__all__ = ["Linker", "ResolveLater", "lookup_order"]

Reader = Callable[[int, int], bytes | None]  # guest memory; None where it cannot be read


class ResolveLater(TranslationError):
    """A region whose hardening needs the GOT resolved, asked for before the program ran."""


def lookup_order(modules: ModuleMap, loaded: list[LoadedModule]) -> list[LoadedModule]:
    """ld.so's global lookup order: the main program, the other modules as they were loaded
    (``loaded``), the dynamic linker (the main program's interpreter) last; mapped ones."""
    mapped = modules.modules()
    main = next((m for m in mapped if m.is_main), None)
    interp = main.image.interpreter if main is not None and main.image is not None else None
    interp_name = interp.rsplit("/", 1)[-1] if interp else None

    def is_interp(m: LoadedModule) -> bool:
        return interp_name is not None and interp_name in (
            m.name, m.image.soname if m.image is not None else None)

    order = [m for m in loaded if m in mapped and not m.is_main]
    order.sort(key=is_interp)  # stable: load order otherwise
    return ([main] if main is not None else []) + order


class Linker:
    """Resolves calls of one module's region (loaded at ``module.base``)."""

    def __init__(self, modules: ModuleMap, module: LoadedModule, read: Reader,
                 loaded: Callable[[], list[LoadedModule]], running: bool) -> None:
        self.modules = modules
        self.module = module
        self.bias = module.base
        self.read = read
        self.loaded = loaded
        self.running = running  # False: the module is being loaded (its GOT is not bound)
        self.put_off = False  # a resolution was asked for too early

    def resolve(self, insn: Insn) -> int | str:
        """``RegionView.resolve_indirect``: the target of ``insn`` through its GOT slot."""
        if insn.flow not in (Flow.INDIRECT_JUMP, Flow.INDIRECT_CALL) or insn.rip_target is None:
            return "its target is not read from a RIP-relative slot"
        slot = insn.rip_target + self.bias
        owner = self.modules.find(slot)
        if owner is None or owner.image is None:
            return f"its slot at {slot:#x} is in no loaded module"
        name = linkage(owner.image).slots.get(slot - owner.base)
        if name is None:
            return (f"its slot at {slot:#x} is not a GOT slot of {owner.name} (a function "
                    "pointer the program may change)")
        if not self.running:
            self.put_off = True
            return f"the GOT slot of {name} is bound only when the program runs"
        raw = self.read(slot, 8)
        if raw is not None and len(raw) == 8:
            value = struct.unpack("<Q", raw)[0]
            bound = self._function_at(value)
            if bound is not None:
                return value - self.bias
        return self._lookup(name, slot)

    def _function_at(self, address: int) -> LoadedModule | None:
        """The module whose code (outside its PLT) holds runtime ``address``, if any."""
        mod = self.modules.find(address)
        if mod is None or mod.image is None:
            return None
        link = address - mod.base
        seg = mod.image.segment_at(link)
        if seg is None or not seg.flags & PF_X or linkage(mod.image).in_plt(link):
            return None
        return mod

    def _lookup(self, name: str, slot: int) -> int | str:
        """The first definition of ``name`` in lookup order, as ld.so will bind it."""
        for mod in lookup_order(self.modules, self.loaded()):
            if mod.image is None:
                continue
            export = linkage(mod.image).exports.get(name)
            if export is None:
                continue
            if export.ifunc:
                return (f"{name} is an IFUNC of {mod.name}, whose resolver chooses the "
                        f"function when the GOT slot at {slot:#x} is bound (it is not yet)")
            if export.versions > 1:
                return (f"{name} has {export.versions} versioned definitions in {mod.name}; "
                        f"the GOT slot at {slot:#x} is not bound yet")
            return export.value + mod.base - self.bias
        return f"{name} (GOT slot at {slot:#x}, not bound yet) is defined in no loaded module"

    def shown(self, insn: Insn) -> Insn:
        """``insn`` of another module's function as messages show it: a direct branch's
        operand is its runtime target, not the address in the region's module's terms."""
        if insn.flow in (Flow.CALL, Flow.JUMP, Flow.BRANCH) and insn.target is not None:
            return dataclasses.replace(insn, op_str=f"{insn.target + self.bias:#x}")
        return insn

    def callee(self, address: int) -> FunctionCFG | None:
        """The CFG of the function of another module at ``address`` (runtime minus the
        region's bias), decoded at that address; None if there is none."""
        runtime = address + self.bias
        mod = self.modules.find(runtime)
        if mod is None or mod.image is None or mod is self.module:
            return None
        image = mod.image
        link = runtime - mod.base
        func = next((f for f in code_functions(image) if f.value == link), None)
        if func is None:
            return None
        delta = mod.base - self.bias
        lo, hi = image.extent(func)

        def read(a: int, size: int) -> bytes:
            return image.read(a - delta, size)

        def symbol_at(a: int) -> str | None:
            names = image.functions_at(a - delta)
            return next((n for n in names if n in NORETURN), names[0] if names else None)

        try:
            return recover(func.name, address, [(lo + delta, hi + delta)], read, (), symbol_at)
        except LeakDBTError:
            return None
