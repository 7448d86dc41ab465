"""Guest address space: Linux-style mappings on top of Unicorn memory.

Every mapping is made with its real permissions (not RWX) and the engine runs with a virtual
TLB (``UC_TLB_VIRTUAL``) whose fill callback hands out identity translations with the mapping's
permissions.  That keeps Unicorn's fast path for guest stores (see docs/architecture.md) and
gives us one place that sees the first use of every page, which :mod:`leakdbt.machine.vex`
uses to vet code pages before they run.

The same callback gives a code page two views (a split TLB): data accesses see the page
itself, instruction fetches may see a *shadow* — a copy in a physical arena above user space
into which the translator writes entry jumps.  The guest thus reads its original bytes while
executing patched ones; see docs/translation.md.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from unicorn import UC_PROT_EXEC, UC_PROT_READ, UC_PROT_WRITE, Uc, UcError
from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH

from leakdbt.errors import LimitExceeded


class GuestMemoryFault(Exception):
    """A guest pointer passed to a system call is not mapped (handlers turn it into -EFAULT)."""

    def __init__(self, address: int) -> None:
        super().__init__(f"bad guest address {address:#x}")
        self.address = address


PAGE = 0x1000
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4  # Linux PROT_* equal Unicorn's UC_PROT_*
assert (PROT_READ, PROT_WRITE, PROT_EXEC) == (UC_PROT_READ, UC_PROT_WRITE, UC_PROT_EXEC)

SHADOW_BASE = 0x8000_0000_0000  # physical arena for shadow code pages: no guest address
SHADOW_SIZE = 64 << 20
MMAP_TOP = 0x7FFF_F7FF_F000  # first address below which mmap(NULL) places mappings
MMAP_BOTTOM = 0x1_0000_0000
MMAP_MIN = 0x1_0000  # Linux's vm.mmap_min_addr
USER_TOP = 0x7FFF_FFFF_F000


ENGINE_CHUNK = 16 << 20  # smallest piece a large mapping is handed to the engine in
ENGINE_PIECES = 256  # most pieces one mapping is cut into (see AddressSpace._engine_map)


def engine_chunk(size: int) -> int:
    """Piece size for a ``size``-byte mapping: ENGINE_CHUNK, or the power of two that keeps
    the mapping within ENGINE_PIECES pieces."""
    return max(ENGINE_CHUNK, 1 << max(size // ENGINE_PIECES - 1, 0).bit_length())


def page_down(x: int) -> int:
    return x & ~(PAGE - 1)


def page_up(x: int) -> int:
    return (x + PAGE - 1) & ~(PAGE - 1)


@dataclass
class Vma:
    """One mapping: [start, end) with Linux PROT_* bits and a label for /proc-style listings."""

    start: int
    end: int
    prot: int
    name: str
    guest: bool = True  # False: leakdbt's own memory, never reachable from the guest
    pinned: bool = False  # leakdbt's memory the guest runs but may not unmap or change
    engine_fetch: bool = False  # not guest memory, but the engine may fetch from it (probes)


class AddressSpace:
    """The guest's mappings; owns every ``mem_map``/``mem_unmap`` call on the engine."""

    def __init__(self, uc: Uc, max_bytes: int = 0) -> None:
        self.uc = uc
        self.max_bytes = max_bytes
        self._vmas: list[Vma] = []
        self._starts: list[int] = []
        self.mapped_bytes = 0
        self.brk_start = 0
        self.brk = 0
        self.last_fault: tuple[int, int] | None = None  # (address, access) seen by the TLB
        self.exec_page_listeners: list[Callable[[int], None]] = []
        # Called with (start, end) before mappings in that range change or go away.
        self.change_listeners: list[Callable[[int, int], None]] = []
        self.shadows: dict[int, int] = {}  # code page -> physical page of its executed view
        self._shadow_free: list[int] = []
        self._vetted_pages: set[int] = set()
        self._changing = False

    # -- lookups -----------------------------------------------------------------------------

    def code_pages_in_use(self) -> list[int]:
        """Executable pages the engine has used so far (each was shown to the
        ``exec_page_listeners`` when first used)."""
        return sorted(self._vetted_pages)

    def find(self, address: int) -> Vma | None:
        """The mapping containing ``address``."""
        i = bisect.bisect_right(self._starts, address) - 1
        if i >= 0 and address < self._vmas[i].end:
            return self._vmas[i]
        return None

    def vmas(self) -> list[Vma]:
        return [v for v in self._vmas if v.guest]

    def is_free(self, start: int, end: int) -> bool:
        i = bisect.bisect_left(self._starts, end) - 1
        return i < 0 or self._vmas[i].end <= start

    def find_free(self, size: int, top: int = MMAP_TOP) -> int:
        """Highest free range of ``size`` bytes below ``top`` (Linux's top-down mmap layout)."""
        hi = top
        for v in reversed(self._vmas):
            if v.start >= hi:
                continue
            if v.end <= hi - size:
                break
            hi = min(hi, v.start)
        start = page_down(hi - size)
        if start < MMAP_BOTTOM:
            raise MemoryError
        return start

    def find_free_near(self, lo: int, hi: int, size: int, reach: int = (1 << 31) - (1 << 24)
                       ) -> int:
        """A free range of ``size`` bytes all of which lies within ``reach`` of all of
        [lo, hi) (so rel32 jumps and RIP-relative operands span the distance): the highest
        one below ``lo`` if there is one, else the lowest above ``hi``."""
        floor = max(hi - reach, MMAP_MIN)
        top = lo
        for v in reversed(self._vmas):  # below lo, highest first
            if v.start >= top:
                continue
            if v.end <= top - size and top - size >= floor:
                return page_down(top - size)
            top = min(top, v.start)
        if top - size >= floor:
            return page_down(top - size)
        start = page_up(hi)
        for v in self._vmas:  # above hi, lowest first
            if v.end <= start:
                continue
            if v.start >= start + size:
                break
            start = page_up(v.end)
        if start + size > min(lo + reach, USER_TOP):
            raise MemoryError(f"no free {size}-byte range within 2 GiB of {lo:#x}")
        return start

    def map_pinned(self, start: int, size: int, prot: int, name: str) -> None:
        """Map leakdbt memory inside user space (e.g. the code cache): the guest may use it
        as ``prot`` allows, but its unmap/mprotect calls leave it alone."""
        with self._change():
            self.uc.mem_map(start, size, prot)
        self._insert(Vma(start, start + size, prot, name, pinned=True))

    # -- changes -----------------------------------------------------------------------------

    def map_reserved(self, start: int, size: int, prot: int, name: str,
                     guest: bool = True, engine_fetch: bool = False) -> None:
        """Map memory for leakdbt itself above USER_TOP, where guest calls cannot reach;
        ``guest=False`` also keeps guest instructions from touching it (``engine_fetch``
        still lets instruction fetches in: the engine probes its stop page that way)."""
        self._insert(Vma(start, start + size, prot, name, guest, engine_fetch=engine_fetch))
        with self._change():
            self.uc.mem_map(start, size, prot)

    def map(self, start: int, size: int, prot: int, name: str = "") -> None:
        """Map zeroed pages at [start, start+size), replacing whatever was there (MAP_FIXED)."""
        end = page_up(start + size)
        start = page_down(start)
        if end <= start:
            return
        if end > USER_TOP:
            raise MemoryError(f"mapping {start:#x}-{end:#x} reaches beyond user space")
        if any(v.pinned for v in self._overlapping(start, end)):
            raise MemoryError(f"{start:#x}-{end:#x} overlaps leakdbt's code cache")
        replaced = self._overlap(start, end)
        if self.max_bytes and self.mapped_bytes - replaced + (end - start) > self.max_bytes:
            raise LimitExceeded(
                f"--max-memory {self.max_bytes} bytes exceeded by a {end - start}-byte mapping"
            )
        self.unmap(start, end - start)
        with self._change():
            self._engine_map(start, end, prot)
        self._insert(Vma(start, end, prot, name))
        self.mapped_bytes += end - start

    def _engine_map(self, start: int, end: int, prot: int) -> None:
        """``mem_map`` [start, end) in aligned pieces of at most ``engine_chunk(end - start)``.

        The engine reserves memory lazily, but a later partial ``mem_protect``/``mem_unmap``
        copies the whole region it splits (an mprotect of one page of a 4 GiB bss touched all
        4 GiB).  Pieces bound that copy; their number is bounded too, because the engine's
        map time grows quadratically with its region count.  Raises MemoryError (ENOMEM)
        when the host refuses the reservation."""
        chunk = engine_chunk(end - start)
        done = start
        try:
            while done < end:
                piece_end = min((done // chunk + 1) * chunk, end)
                self.uc.mem_map(done, piece_end - done, prot)
                done = piece_end
        except UcError as e:
            if done > start:
                self.uc.mem_unmap(start, done - start)
            raise MemoryError(f"cannot reserve {end - start} bytes at {start:#x}: {e}") from None

    def unmap(self, start: int, size: int) -> None:
        """Remove every mapped page in [start, start+size) (never leakdbt's own pages)."""
        end = min(page_up(start + size), USER_TOP)
        changed = False
        if self._overlapping(start, end):
            self._before_change(start, end)
        for v in self._overlapping(start, end):
            if v.pinned:
                continue
            lo, hi = max(v.start, start), min(v.end, end)
            with self._change():
                self.uc.mem_unmap(lo, hi - lo)
            self.mapped_bytes -= hi - lo
            self._remove(v)
            if v.start < lo:
                self._insert(Vma(v.start, lo, v.prot, v.name))
            if hi < v.end:
                self._insert(Vma(hi, v.end, v.prot, v.name))
            changed = True
        if changed:
            self._forget_pages(start, end)

    def protect(self, start: int, size: int, prot: int) -> bool:
        """Change permissions; False when part of the range is not mapped (Linux: -ENOMEM)."""
        end = page_up(start + size)
        if end > USER_TOP:
            return False
        vs = self._overlapping(start, end)
        covered = sum(min(v.end, end) - max(v.start, start) for v in vs)
        if covered != end - start:
            return False
        self._before_change(start, end)
        for v in vs:
            if v.pinned:
                continue
            lo, hi = max(v.start, start), min(v.end, end)
            with self._change():
                self.uc.mem_protect(lo, hi - lo, prot)
            self._remove(v)
            for a, b, p in ((v.start, lo, v.prot), (lo, hi, prot), (hi, v.end, v.prot)):
                if a < b:
                    self._insert(Vma(a, b, p, v.name))
        self._forget_pages(start, end)
        return True

    # -- shadow code pages ------------------------------------------------------------------

    def enable_shadows(self) -> None:
        """Map the physical arena that holds shadow code pages (once, before running)."""
        if not self.find(SHADOW_BASE):
            self.map_reserved(SHADOW_BASE, SHADOW_SIZE, PROT_READ | PROT_WRITE | PROT_EXEC,
                              "[leakdbt shadow code]", guest=False)
            self._shadow_free = list(range(SHADOW_BASE + SHADOW_SIZE - PAGE, SHADOW_BASE - 1,
                                           -PAGE))

    def write_code_view(self, address: int, data: bytes) -> None:
        """Make instruction fetches at ``address`` see ``data``; data reads keep seeing the
        original bytes.  Translations of the changed bytes are dropped (when the engine has
        used the page: a page vetted for the first time has none)."""
        end = address + len(data)
        for page in range(page_down(address), end, PAGE):
            lo, hi = max(address, page), min(end, page + PAGE)
            used = page in self._vetted_pages
            phys = self.shadows.get(page)
            if phys is None:
                if not self._shadow_free:
                    raise MemoryError("the shadow code arena is full")
                if used:
                    self.uc.ctl_remove_cache(lo, hi)  # translations made from the page itself
                phys = self._shadow_free.pop()
                self.uc.mem_write(phys, bytes(self.uc.mem_read(page, PAGE)))
                self.shadows[page] = phys
                if used:
                    self.flush_tlb()
            self.uc.mem_write(phys + lo - page, data[lo - address:hi - address])
            if used:
                self.uc.ctl_remove_cache(lo, hi)  # translations made from the shadow

    def read_code_view(self, address: int, size: int) -> bytes:
        """The bytes instruction fetches see at [address, address+size): a page's shadow
        where it has one (:meth:`write_code_view`), else what :meth:`read` returns."""
        out = b""
        while size > 0:
            page = page_down(address)
            n = min(size, page + PAGE - address)
            phys = self.shadows.get(page)
            out += self.read(address, n) if phys is None else \
                bytes(self.uc.mem_read(phys + address - page, n))
            address, size = address + n, size - n
        return out

    def is_used(self, page: int) -> bool:
        """Has the engine used code page ``page`` since it was mapped or changed?"""
        return page in self._vetted_pages

    def drop_shadows(self, start: int, end: int) -> None:
        """Return the pages in [start, end) to a single view (their own bytes)."""
        pages = [p for p in self.shadows if page_down(start) <= p < end]
        for page in pages:
            if page in self._vetted_pages:
                self.uc.ctl_remove_cache(page, page + PAGE)  # the shadow's translations
            self._shadow_free.append(self.shadows.pop(page))
        if pages:
            self.flush_tlb()

    def _before_change(self, start: int, end: int) -> None:
        for listener in self.change_listeners:
            listener(start, end)
        self.drop_shadows(start, end)

    @contextmanager
    def _change(self) -> Iterator[None]:
        """Run an engine memory operation, then drop every TLB entry it may have made."""
        self._changing = True
        try:
            yield
        finally:
            self._changing = False
            self.flush_tlb()

    def flush_tlb(self) -> None:
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    # -- guest memory for system calls (GuestMemory protocol) -------------------------------

    def read(self, address: int, size: int) -> bytes:
        if size <= 0:
            return b""
        self._check(address, size)
        try:
            return bytes(self.uc.mem_read(address, size))
        except UcError:
            raise GuestMemoryFault(address) from None

    def write(self, address: int, data: bytes) -> None:
        if not data:
            return
        self._check(address, len(data))
        try:
            self.uc.mem_write(address, data)
        except UcError:
            raise GuestMemoryFault(address) from None

    def read_cstring(self, address: int, limit: int = 4096) -> bytes:
        out = bytearray()
        while len(out) < limit:
            chunk_end = min(page_down(address) + PAGE, address + limit - len(out))
            chunk = self.read(address, chunk_end - address)
            nul = chunk.find(b"\0")
            if nul >= 0:
                out += chunk[:nul]
                return bytes(out)
            out += chunk
            address = chunk_end
        return bytes(out)

    # -- the TLB fill callback -------------------------------------------------------------

    def tlb_fill(self, uc: Uc, vaddr: int, access: int, entry: object, _ud: object) -> bool:
        """Identity-map the page with its mapping's permissions, or record a fault."""
        v = self.find(vaddr)
        if self._changing and v is not None:
            # Unicorn probes pages with a code fetch while it maps, unmaps or protects memory
            # (to invalidate translations); a refused probe leaves a pending CPU exception.
            # Grant it; the TLB is flushed when the change is done.
            entry.paddr = page_down(vaddr)  # type: ignore[attr-defined]
            entry.perms = v.prot | PROT_EXEC  # type: ignore[attr-defined]
            return True
        need = _ACCESS_PROT.get(access, PROT_READ)
        if v is not None and v.engine_fetch and need == PROT_EXEC:
            entry.paddr, entry.perms = page_down(vaddr), PROT_EXEC  # type: ignore[attr-defined]
            return True  # a guest that jumps there hits int3: Machine reports SIGSEGV
        if v is None or not v.guest or not (v.prot & need):
            self.last_fault = (vaddr, access)
            return False
        page = page_down(vaddr)
        if v.prot & PROT_EXEC:
            if page not in self._vetted_pages:
                for listener in self.exec_page_listeners:
                    listener(page)  # before the page counts as used: see write_code_view
                self._vetted_pages.add(page)
            shadow = self.shadows.get(page)
            if shadow is not None:
                # Split view: fetches see the shadow, data accesses the page itself.  An entry
                # grants one or the other, so the engine refills it when the use changes.
                if need == PROT_EXEC:
                    entry.paddr, entry.perms = shadow, PROT_EXEC  # type: ignore[attr-defined]
                else:
                    entry.paddr, entry.perms = page, v.prot & ~PROT_EXEC  # type: ignore[attr-defined]
                return True
        entry.paddr = page  # type: ignore[attr-defined]
        entry.perms = v.prot  # type: ignore[attr-defined]
        return True

    # -- internals -------------------------------------------------------------------------

    def _check(self, address: int, size: int) -> None:
        end = address + size
        while address < end:
            v = self.find(address)
            if v is None or not v.guest:
                raise GuestMemoryFault(address)
            address = v.end

    def _overlapping(self, start: int, end: int) -> list[Vma]:
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        out = []
        while i < len(self._vmas) and self._vmas[i].start < end:
            if self._vmas[i].end > start:
                out.append(self._vmas[i])
            i += 1
        return out

    def _overlap(self, start: int, end: int) -> int:
        return sum(min(v.end, end) - max(v.start, start) for v in self._overlapping(start, end))

    def _insert(self, v: Vma) -> None:
        i = bisect.bisect_left(self._starts, v.start)
        self._vmas.insert(i, v)
        self._starts.insert(i, v.start)

    def _remove(self, v: Vma) -> None:
        i = bisect.bisect_left(self._starts, v.start)
        del self._vmas[i]
        del self._starts[i]

    def _forget_pages(self, start: int, end: int) -> None:
        if (end - start) // PAGE < len(self._vetted_pages):
            for p in range(page_down(start), end, PAGE):
                self._vetted_pages.discard(p)
        else:
            self._vetted_pages = {p for p in self._vetted_pages if not start <= p < end}


# UC_MEM_READ = 16, UC_MEM_WRITE = 17, UC_MEM_FETCH = 18 in the TLB-fill callback.
_ACCESS_PROT = {16: PROT_READ, 17: PROT_WRITE, 18: PROT_EXEC}
