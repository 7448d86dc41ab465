"""The dispatcher: routes execution between the fast cache (the original code) and the
hardened cache (translated regions), and switches between them at safe points.

Mechanism (docs/translation.md): a region in hardened mode has a 5-byte ``jmp`` to its copy
written over its first bytes — in the *shadow* view of the code page, which only instruction
fetches see (:meth:`AddressSpace.write_code_view`), so the guest still reads its original
code.  Fast mode is the untouched original.  Entering a region therefore costs no Python call
in either mode; the engine's translations of the changed bytes are dropped whenever they
change.  A region whose first bytes cannot hold the jump (a block shorter than 5 bytes that
ends the region) is entered through a code hook on its first instruction instead.

``--translate-all`` uses the same jumps: every selected function's entry first jumps to a
trap in the code cache; its first execution translates the function, and the entry then
jumps straight to the copy.
"""

from __future__ import annotations

import bisect
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from leakdbt.contract.mapping import Plan
from leakdbt.contract.model import Contract, RegionKind
from leakdbt.dbt.calls import Linker, ResolveLater
from leakdbt.dbt.cfg import function_cfg
from leakdbt.dbt.codecache import CodeCache
from leakdbt.dbt.harden import Hardener, RegionNeeds
from leakdbt.dbt.mode import Mode
from leakdbt.dbt.region import CodeRegion, RegionError, form_region
from leakdbt.dbt.relocate import Translation, relocate
from leakdbt.errors import LeakDBTError, TranslationError
from leakdbt.loader.functions import code_functions
from leakdbt.loader.image import PF_X, Image, Symbol, per_image
from leakdbt.loader.modules import LoadedModule, ModuleMap
from leakdbt.machine.machine import Machine
from leakdbt.machine.memory import PAGE, PROT_WRITE, page_down
from leakdbt.x86.asm import assemble
from leakdbt.x86.disasm import direct_targets, rel32_targets
from leakdbt.x86.insn import Flow, decode

JMP_SIZE = 5
RETRY_SECONDS = 0.0002  # a mode switch that found the guest in the way tries again after


@dataclass(frozen=True)
class RegionRequest:
    """A region to translate: where it starts in which module (link-time address)."""

    module: str | None  # None: the main program; else a library's file name or soname
    function: int  # link-time address of the function symbol that contains it
    address: int
    name: str  # as the contract wrote it, for messages
    branch: bool | None = None  # force a branch region (True), a block (False), or infer
    loop: bool = False  # a loop region headed at ``address``
    whole_function: bool = False  # the whole function (``address`` is its entry)
    needs: RegionNeeds | None = None  # what the contract asks of it (None: copy only)


@dataclass
class Site:
    """A translated region or function, installed in one loaded module."""

    name: str
    entry: int  # runtime address of the original first instruction
    translation: Translation
    patch: bytes | None  # the jump written over the entry in hardened mode (None: hook)
    original: bytes  # the bytes the patch covers
    mode: Mode
    entries: dict[Mode, int] = field(default_factory=lambda: {Mode.FAST: 0, Mode.HARDENED: 0})
    installed: bool = False  # the shadow view holds the patch
    trap: bool = False  # --translate-all: the patch jumps to a trap, not yet to a copy
    # (address, size) of each translation block the engine made of the copy ahead of time
    pretranslated: list[tuple[int, int]] = field(default_factory=list)


class BoundsSource(Protocol):
    """Where the ``.bounds`` lines of hardened code get the guest memory holding an address
    (leakdbt.run.allocations): :meth:`activate` before the first such copy is made,
    :meth:`bounds` → (start, size), (0, 0) when unknown; ``where`` is the runtime address of
    the original instruction the line belongs to, for reports; ``mapped``: the line's
    ``mapped`` flag (leakdbt.plugin_api.allocation_bounds)."""

    def activate(self) -> None: ...

    def bounds(self, address: int, where: int, mapped: bool = False) -> tuple[int, int]: ...


@dataclass
class DispatchStats:
    """What --stats reports about translation."""

    regions: int = 0
    functions_translated: int = 0
    refused: dict[str, str] = field(default_factory=dict)  # name -> reason (translate-all)
    translate_seconds: float = 0.0
    switches: int = 0
    switched_at: list[tuple[str, float]] = field(default_factory=list)  # (mode, time.time())


class Dispatcher:
    """Owns the code cache and every region's entry; see the module docstring."""

    def __init__(self, machine: Machine, modules: ModuleMap, regions: Sequence[RegionRequest],
                 mode: Mode = Mode.HARDENED, count_entries: bool = False,
                 translate_all: Sequence[str] | None = None,
                 translate: Callable[[CodeRegion, int, Callable[[int], int]], Translation]
                 = relocate, hardener: Hardener | None = None,
                 bounds: BoundsSource | None = None) -> None:
        self.machine = machine
        self.bounds = bounds
        self.mem = machine.mem
        self.cache = CodeCache(machine.mem)
        self.modules = modules
        self.requests = list(regions)
        self.mode = mode
        self.count_entries = count_entries
        self.translate_all = translate_all
        self.translate = translate
        self.hardener = hardener
        self.sites: list[Site] = []
        self.stats = DispatchStats()
        self.running = False
        self._by_page: dict[int, list[Site]] = {}
        # trap address -> the function and its entry-jump site
        self._traps: dict[int, tuple[LoadedModule, Symbol, Site]] = {}
        self._counted: list[Site] = []  # regions with an entry hook
        self._loaded: list[LoadedModule] = []  # in load order (the GOT's lookup order)
        machine.resumable = True
        self.mem.enable_shadows()
        self.mem.exec_page_listeners.append(self._on_exec_page)
        self.mem.change_listeners.append(self._on_change)
        modules.listeners.append(self._on_module)
        for mod in modules.modules():
            self._on_module(mod)

    # -- modules ------------------------------------------------------------------------

    def _on_module(self, mod: LoadedModule) -> None:
        self._loaded.append(mod)
        image = mod.image
        if image is None:
            return
        started = time.perf_counter()
        for req in self.requests:
            if mod.is_named(req.module):
                self._translate_region(mod, image, req)
        if self.translate_all is not None:
            self._plant_traps(mod, image)
        self.stats.translate_seconds += time.perf_counter() - started

    def _translate_region(self, mod: LoadedModule, image: Image, req: RegionRequest) -> None:
        try:
            region = request_region(image, req, mod.name)
        except RegionError as e:
            if self.hardener is None or not self.hardener.allow_unhardened:
                raise
            self.hardener.not_formed(req.name, e.one_line())  # its original code runs
            return
        try:
            site = self._site_or_none(mod, region, req)
        except ResolveLater:
            self._at_first_entry(mod, region, req)
            return
        if site is None:
            return
        self.stats.regions += 1
        if site.patch is None:
            self._counted.append(site)
            self.machine.hooks.at(site.entry, lambda address, size: self._on_entry(site))
        self._prepare(site)

    def _at_first_entry(self, mod: LoadedModule, region: CodeRegion, req: RegionRequest
                        ) -> None:
        """Harden ``region`` when it is first entered: its calls go through a GOT that the
        dynamic linker binds after loading (leakdbt.dbt.calls).  One hook on its entry
        translates it, then enters it while it has no entry jump (counting entries, or
        no jump fits); once the jump is installed the hook goes."""
        found: list[Site | None] = []

        def entered(address: int, size: int) -> None:
            if not found:
                site = self._site_or_none(mod, region, req, running=True)
                found.append(site)
                if site is None:  # it runs where it is, reported
                    self.machine.defer(lambda: self.machine.hooks.remove(hook))
                    return
                self.stats.regions += 1
                if site.patch is None:
                    self._counted.append(site)
                else:
                    self.machine.defer(lambda: self.machine.hooks.remove(hook))
                    if site.mode is Mode.HARDENED:  # this entry: the jump comes later
                        self.machine.set_reg("rip", site.translation.entry)
                self._prepare(site)
            if found[0] is not None and found[0].patch is None:
                self._on_entry(found[0])

        hook = self.machine.hooks.at(region.entry + mod.base, entered)

    def _site_or_none(self, mod: LoadedModule, region: CodeRegion, req: RegionRequest,
                      running: bool = False) -> Site | None:
        """:meth:`_site` for ``req``'s region.  When unhardened regions may run, a region
        whose code cannot be copied at all (not even its original: the hardener's last
        resort) is recorded as not formed, with the reason, and None returned: its original
        code runs in place.  ResolveLater passes through."""
        seen = len(self.hardener.outcomes) if self.hardener is not None else 0
        try:
            return self._site(mod, region, jump=not self.count_entries, needs=req.needs,
                              running=running)
        except ResolveLater:
            raise
        except TranslationError as e:
            if self.hardener is None or not self.hardener.allow_unhardened:
                raise
            del self.hardener.outcomes[seen:]  # one outcome for the region
            self.hardener.not_formed(req.name, e.one_line())
            return None

    def _site(self, mod: LoadedModule, region: CodeRegion, jump: bool = True,
              needs: RegionNeeds | None = None, running: bool = False) -> Site:
        """Translate ``region`` into the cache — hardened as ``needs`` says when there is a
        hardener; ``jump``: enter it by an entry jump where one fits (else, and when
        counting entries, by a hook on its first instruction); ``running``: the program
        runs (its GOT is bound), else the module is being loaded."""
        lo, hi = mod.start, mod.end

        def place(size: int) -> int:
            return self.cache.reserve(size, lo, hi)

        if self.hardener is not None and needs is not None:
            linker = Linker(self.modules, mod, self._read, lambda: list(self._loaded),
                            running)
            t = self.hardener.translate(region, needs, mod.base, place, mod.image, linker)
        else:
            t = self.translate(region, mod.base, place)
        self.cache.write(t.base, t.code)
        if t.probes:
            self._hook_probes(t)
        entry = region.entry + mod.base
        patch: bytes | None = assemble(f"jmp {t.entry:#x}", entry) if jump else None
        if patch and not _patchable(region, mod.image, entry, len(patch), mod.base):
            patch = None
        original = _bytes_at(t.source, entry, len(patch) if patch else 0)
        site = Site(region.name, entry, t, patch, original, self.mode)
        self._add_site(site)
        return site

    def _hook_probes(self, t: Translation) -> None:
        """A hook on each ``.bounds REG, OFF`` line of the copy (before the engine translates
        it): it writes (start, size) of the guest memory holding REG's value to
        [rsp - OFF] and [rsp - OFF + 8] (leakdbt.plugin_api.allocation_bounds)."""
        source = self.bounds
        if source is None:
            raise TranslationError(f"{t.name}: its hardened code needs run-time allocation "
                                   "bounds, which this run does not learn")
        source.activate()
        starts = sorted(t.origin)
        rsp = self.machine.reg_reader("rsp")
        for address, (register, offset, mapped) in t.probes.items():
            i = bisect.bisect_right(starts, address) - 1
            where = t.origin[starts[i]] if i >= 0 else address
            try:
                read = self.machine.reg_reader(register)
            except KeyError:
                raise TranslationError(f"{t.name}: '.bounds {register}' names no "
                                       "register") from None

            def probe(_address: int, _size: int, read: Callable[[], int] = read,
                      offset: int = offset, where: int = where, mapped: bool = mapped) -> None:
                start, size = source.bounds(read(), where, mapped)
                self.mem.write(rsp() - offset, struct.pack("<QQ", start, size))

            self.machine.hooks.at(address, probe)

    def _prepare(self, site: Site) -> None:
        """Translate the copy's blocks ahead of their first run (so a first run does not
        reveal which path it took), and install the entry jump in hardened mode."""
        def work() -> None:
            for start in site.translation.blocks:
                site.pretranslated += self._pretranslate(start, site.translation)
            if site.mode is Mode.HARDENED:
                self._install(site)

        if self.running:
            self.machine.defer(work)
        else:
            work()

    def _pretranslate(self, start: int, t: Translation) -> list[tuple[int, int]]:
        """Have the engine translate the copy's block at ``start`` (in as many translation
        blocks as it takes to reach the next block); the (address, size) of each."""
        made: list[tuple[int, int]] = []
        address = start
        while t.base <= address < t.end:
            size = self.machine.translate_block(address)
            if size <= 0:
                break
            made.append((address, size))
            address += size
            if address in t.blocks:
                break
        return made

    def _read(self, address: int, size: int) -> bytes | None:
        """Guest memory, None where it is not mapped (what a GOT slot holds)."""
        try:
            return self.mem.read(address, size)
        except LeakDBTError:
            return None

    # -- the entry jump -----------------------------------------------------------------

    def _install(self, site: Site) -> None:
        if site.patch is None or site.installed or not self._source_intact(site):
            return
        self.mem.write_code_view(site.entry, site.patch)
        site.installed = True

    def _uninstall(self, site: Site) -> None:
        if site.installed:
            self.mem.write_code_view(site.entry, site.original)
            site.installed = False

    def _source_intact(self, site: Site) -> bool:
        """Is the original code still what was translated, and not writable?"""
        for address, raw in site.translation.source:
            v = self.mem.find(address)
            if v is None or v.prot & PROT_WRITE:
                return False
            if self.mem.read(address, len(raw)) != raw:
                return False
        return True

    def _on_exec_page(self, page: int) -> None:
        """First use of a code page (again): put the entry jumps back into its view."""
        for site in self._by_page.get(page, ()):
            if site.mode is Mode.HARDENED and not site.installed:
                if any(self.mem.is_used(p) for p in _patch_pages(site) if p != page):
                    # A page the engine already uses needs its translations dropped, which
                    # cannot happen inside this TLB fill: between engine runs, then.
                    self.machine.defer(partial(self._install, site))
                else:
                    self._install(site)

    def _on_change(self, start: int, end: int) -> None:
        """Mappings in [start, end) change: their shadow views are about to be dropped."""
        for site in self.sites:
            if site.installed and site.patch and (
                    site.entry < end and start < site.entry + len(site.patch)):
                site.installed = False

    def _on_entry(self, site: Site) -> None:
        mode = site.mode  # once: another thread may switch it
        site.entries[mode] += 1
        if site.patch is None and mode is Mode.HARDENED:
            self.machine.set_reg("rip", site.translation.entry)

    # -- switching ------------------------------------------------------------------------

    def set_mode(self, mode: Mode) -> None:
        """Run every region from ``mode``'s cache from its next entry on.  Thread-safe: a
        region entered through a hook reads the mode at entry; entry jumps are rewritten on
        the emulation thread, once no guest thread (running or parked) is inside the bytes
        they cover.  Copies are never dropped, so a thread parked in one runs on there."""
        if self.running and any(site.patch is not None for site in self.sites):
            self.machine.defer(lambda: self._switch(mode))
        else:
            self._switch(mode)

    def _switch(self, mode: Mode) -> None:
        pcs = self.machine.resume_pcs() if self.running else []
        if any(s.patch and s.entry < pc < s.entry + len(s.patch)
               for s in self.sites for pc in pcs):
            # A thread — the running one, or a parked one (Machine.parked_pcs) — is inside
            # the first instructions of an original region, which the jump would cover (it
            # would resume in the middle of the jump): let the guest run on a little (a
            # parked thread moves on at its turn) and try again.
            timer = threading.Timer(RETRY_SECONDS,
                                    lambda: self.machine.defer(lambda: self._switch(mode)))
            timer.daemon = True
            timer.start()
            return
        self.mode = mode
        for site in self.sites:
            if site.mode is mode or site.trap:
                continue
            site.mode = mode
            if mode is Mode.HARDENED:
                self._install(site)
            else:
                self._uninstall(site)
        self.stats.switches += 1
        self.stats.switched_at.append((mode.value, time.time()))

    # -- translate-all ----------------------------------------------------------------------

    def _plant_traps(self, mod: LoadedModule, image: Image) -> None:
        wanted = self.translate_all or ()
        funcs = []
        for func in code_functions(image):
            if wanted and func.name not in wanted and f"{mod.name}:{func.name}" not in wanted:
                continue
            start, end = image.extent(func)
            seg = image.segment_at(func.value)
            if (end - start >= JMP_SIZE and seg is not None and seg.flags & PF_X
                    and _straight_entry(image, func.value)
                    and not _entries_within(image, func.value + 1, func.value + JMP_SIZE,
                                            True)):
                funcs.append(func)
        if not funcs:
            return
        # One trap byte per function, contiguous, so that one hook covers exactly them.
        traps = self.cache.reserve(len(funcs), mod.start, mod.end)
        self.cache.write(traps, b"\xcc" * len(funcs))
        for trap, func in enumerate(funcs, traps):
            entry = func.value + mod.base
            patch = assemble(f"jmp {trap:#x}", entry)
            original = image.read(func.value, len(patch))
            site = Site(func.name, entry, Translation(func.name, trap, b"\xcc", trap,
                                                      source=((entry, original),)),
                        patch, original, Mode.HARDENED, trap=True)
            self._traps[trap] = (mod, func, site)
            self._add_site(site)
        self.machine.hooks.on_code(self._on_trap, traps, traps + len(funcs))

    def _on_trap(self, address: int, size: int) -> None:
        """First call of a function under --translate-all: translate it and go there."""
        found = self._traps.pop(address, None)
        if found is None:
            return
        mod, func, trap = found
        image = mod.image
        assert image is not None
        started = time.perf_counter()
        try:
            cfg = function_cfg(image, func)
            region = CodeRegion(func.name, cfg, cfg.entry, tuple(sorted(cfg.reachable)),
                                "function")
            site = self._site(mod, region)
            if site.patch is None:
                self._remove_site(site)
                raise TranslationError("its entry cannot hold a jump")
        except LeakDBTError as e:
            self.stats.refused[f"{mod.name}:{func.name}"] = e.one_line()
            self.machine.set_reg("rip", trap.entry)
            self.machine.defer(lambda: self._uninstall(trap))
            return
        finally:
            self.stats.translate_seconds += time.perf_counter() - started
        self.stats.functions_translated += 1
        self._remove_site(trap)
        cases = self._case_sites(mod, region, site)
        self.machine.set_reg("rip", site.translation.entry)

        def retarget() -> None:  # the entry jump now goes to the copy, and so do the cases
            self.mem.write_code_view(site.entry, site.patch or b"")
            site.installed = True
            for case in cases:
                self._install(case)

        self.machine.defer(retarget)

    def _case_sites(self, mod: LoadedModule, region: CodeRegion, site: Site) -> list[Site]:
        """Entry jumps at the targets of the function's jump tables, so that a table jump
        in the copy (which reads original addresses) comes back into the copy.  A target
        gets one only if no other entry point lies in the bytes it would cover."""
        image = mod.image
        cfg = region.cfg
        targets = sorted({t for table in cfg.jump_tables.values() for t in table.targets})
        if image is None or not targets:
            return []
        copy_of = {orig: at for at, orig in site.translation.origin.items()}
        entries = set(targets) | {cfg.entry}
        taken = [(cfg.entry, cfg.entry + len(site.patch or b""))]
        ranges = region.byte_ranges
        cases = []
        for t in targets:
            copy = copy_of.get(t + mod.base)
            if copy is None or t == cfg.entry:
                continue
            patch = assemble(f"jmp {copy:#x}", t + mod.base)
            end = t + len(patch)
            if (not any(lo <= t and end <= hi for lo, hi in ranges)
                    or any(t < e < end for e in entries)
                    or any(t < b and a < end for a, b in taken)
                    or _entries_within(image, t + 1, end, True)):
                continue
            taken.append((t, end))
            original = image.read(t, len(patch))
            case = Site(f"{region.name}:case@{t:#x}", t + mod.base, site.translation, patch,
                        original, Mode.HARDENED)
            self._add_site(case)
            cases.append(case)
        return cases

    def _add_site(self, site: Site) -> None:
        self.sites.append(site)
        for page in _patch_pages(site):
            self._by_page.setdefault(page, []).append(site)

    def _remove_site(self, site: Site) -> None:
        self.sites.remove(site)
        for page in _patch_pages(site):
            self._by_page[page].remove(site)

    # -- reporting ---------------------------------------------------------------------------

    def code_ranges(self) -> list[tuple[int, int]]:
        """Runtime [start, end) of every installed region's original code and of its copy
        (a run executes one or the other, by mode): what observing the regions watches."""
        ranges: list[tuple[int, int]] = []
        for site in self.sites:
            t = site.translation
            ranges.append((t.base, t.end))
            ranges += [(address, address + len(raw)) for address, raw in t.source]
        return ranges

    def original_of(self, address: int) -> int | None:
        """The original instruction a code-cache address stands for, if any: the one it is
        a copy of, or the one whose replacement sequence (or exit jump) it lies in."""
        for site in self.sites:
            t = site.translation
            if t.base <= address < t.end and t.origin:
                starts = sorted(t.origin)
                i = bisect.bisect_right(starts, address) - 1
                return t.origin[starts[max(i, 0)]]
        return None

    def report(self) -> dict[str, object]:
        """Figures for --stats: regions, entries per region and mode, code, time."""
        return {
            "mode": self.mode.value,
            "regions translated": self.stats.regions,
            "functions translated": self.stats.functions_translated,
            "functions refused": len(self.stats.refused),
            "translated code bytes": self.cache.bytes_used,
            "translation time (s)": round(self.stats.translate_seconds, 4),
            "switches": self.stats.switches,
            "hardening": self.hardener.report() if self.hardener else None,
            "entries": {s.name: {m.value: n for m, n in s.entries.items()}
                        for s in self._counted} if self.count_entries else None,
        }


def request_region(image: Image, req: RegionRequest, where: str) -> CodeRegion:
    """The region ``req`` names in ``image`` (``where``: the module's name, for messages).
    Used by the dispatcher and by ``leakdbt harden`` (leakdbt.elfpatch) alike."""
    func = next((f for f in image.functions if f.value == req.function), None)
    if func is None:
        raise TranslationError(f"{req.name}: no function at {req.function:#x} in {where}")
    cfg = function_cfg(image, func, extra_leaders=[req.address])
    return form_region(cfg, req.address, req.name, req.branch, req.loop, req.whole_function)


def entry_jump_fits(region: CodeRegion, image: Image, size: int) -> bool:
    """May a ``size``-byte jump replace the first bytes of ``region`` (link-time)?  The
    dispatcher's rule for its entry jumps, for jumps written into a file."""
    return _patchable(region, image, region.entry, size, 0)


def requests_from_contract(contract: Contract, plan: Plan | None = None
                           ) -> list[RegionRequest]:
    """The regions of a contract bound to a binary, as the dispatcher takes them; with the
    contract's ``plan``, each says which passes harden it."""
    binding = contract.binding
    if binding is None:
        raise TranslationError("the contract is not bound to a binary")
    out = []
    for i, (region, where) in enumerate(zip(contract.protect.regions, binding.regions,
                                            strict=True)):
        kind = region.kind
        branch = None if kind in (None, RegionKind.LOOP, RegionKind.FUNCTION) \
            else kind is RegionKind.BRANCH
        needs = None
        if plan is not None:
            table = None
            if where.table is not None and where.table.start.module == where.at.module:
                table = (where.table.start.address, where.table.length)
            needs = RegionNeeds(None if kind is None else kind.value, plan.regions[i].passes,
                                table, plan.regions[i].skipped)
        out.append(RegionRequest(where.at.module, where.function.start, where.at.address,
                                 where.at.symbolic, branch, kind is RegionKind.LOOP,
                                 whole_function=kind is RegionKind.FUNCTION, needs=needs))
    return out


@per_image
def _rel32_targets(image: Image) -> list[int]:
    targets: list[int] = []
    for seg in image.segments:
        if seg.flags & PF_X:
            targets += rel32_targets(image.read(seg.vaddr, seg.filesz), seg.vaddr)
    return sorted(targets)


@per_image
def _swept_targets(image: Image) -> list[int]:
    """Direct-branch targets from a linear sweep of all of ``image``'s code, sorted."""
    targets: set[int] = set()
    for seg in image.segments:
        if seg.flags & PF_X:
            targets |= direct_targets(image.read(seg.vaddr, seg.filesz), seg.vaddr)
    return sorted(targets)


def _entries_within(image: Image, lo: int, hi: int, sweep_module: bool = False) -> bool:
    """Can code be entered anywhere in [lo, hi) (link-time) other than by falling into it?

    Function symbols; rel32 branches from anywhere in the module (found at every byte
    offset, so none is missed); short branches from up to 128 bytes around, found by
    decoding from the nearest function start — or, with ``sweep_module`` (cheaper when
    asking for every function), by one linear sweep of the module.  Hand-written assembly
    does jump into other functions: glibc's ``__mempcpy_ssse3`` enters
    ``__memcpy_ssse3+3``.
    """
    funcs = [f.value for f in code_functions(image)]
    sources = [funcs, _rel32_targets(image)] + ([_swept_targets(image)] if sweep_module else [])
    for points in sources:
        i = bisect.bisect_left(points, lo)
        if i < len(points) and points[i] < hi:
            return True
    if sweep_module:
        return False
    seg = image.segment_at(lo)
    if seg is None:
        return True
    start = max(lo - 136, seg.vaddr)
    i = bisect.bisect_right(funcs, start) - 1
    if i >= 0 and funcs[i] >= seg.vaddr:
        start = funcs[i]
    end = min(hi + 136, seg.vaddr + seg.filesz)
    return any(lo <= t < hi for t in direct_targets(image.read(start, end - start), start))


def _patch_pages(site: Site) -> range:
    """The pages the site's entry jump lies on."""
    if site.patch is None:
        return range(0)
    return range(page_down(site.entry), site.entry + len(site.patch), PAGE)


def _straight_entry(image: Image, address: int) -> bool:
    """Do the first JMP_SIZE bytes at ``address`` run in sequence (no ``ret`` or jump
    before their end), so a function's copy can cover all the bytes its entry jump takes?"""
    code = image.read(address, JMP_SIZE + 15)
    at = address
    while at < address + JMP_SIZE:
        insn = decode(code[at - address:], at)
        if insn is None:
            return False
        if insn.flow in (Flow.RETURN, Flow.JUMP, Flow.INDIRECT_JUMP, Flow.STOP) \
                and insn.next < address + JMP_SIZE:
            return False
        at = insn.next
    return True


def _patchable(region: CodeRegion, image: Image | None, entry: int, size: int, bias: int
               ) -> bool:
    """Can ``size`` bytes at the region's entry be replaced by a jump?  They must all be the
    region's own bytes (executed only after its entry), no other entry point (a function
    symbol, a jump-table target) may lie inside them, and no call among them may return
    inside them."""
    ranges = [(a + bias, b + bias) for a, b in region.byte_ranges]
    if not any(lo <= entry and entry + size <= hi for lo, hi in ranges):
        return False
    link = entry - bias
    cfg = region.cfg
    targets = {t for table in cfg.jump_tables.values() for t in table.targets}
    if any(link < t < link + size for t in targets):
        return False
    if image is not None and _entries_within(image, link + 1, link + size):
        return False
    for block in region.block_list():
        for insn in block.insns:
            at = insn.address + bias
            calls = insn.flow in (Flow.CALL, Flow.INDIRECT_CALL)
            if calls and entry <= at < entry + size and insn.next + bias < entry + size:
                return False
    return True


def _bytes_at(source: tuple[tuple[int, bytes], ...], address: int, size: int) -> bytes:
    """``size`` original bytes from ``address``, taken from a translation's source."""
    out = bytearray()
    for at, raw in sorted(source):
        if at <= address + len(out) < at + len(raw) and len(out) < size:
            off = address + len(out) - at
            out += raw[off:off + size - len(out)]
    if len(out) != size:
        raise TranslationError(f"the {size} bytes at {address:#x} are not all region code")
    return bytes(out)
