"""Counting guest instructions block by block, for ``--max-insns`` and ``--count-insns``.

A block hook adds each block's instruction count as the block begins and, under a limit,
stops the engine before the first block that would carry the count past it; Machine.run
then has the engine count the last few instructions itself (``emu_start(count=...)``), so
the limit is exact.  Two implementations with one interface (:class:`BlockCounter`):

- :class:`NativeBlockCounter`: the hook is C (``_blockcount.c``, built at install), so a
  block that has run before costs no Python at all.  Counts are kept per (address, size);
  the engine's new-block reports (``UC_HOOK_EDGE_GENERATED``, with the block's own count)
  fill and refresh them as blocks are translated, so a block retranslated from changed
  code is not counted with its old count; Python (:func:`block_instructions`) is called
  only for a block met without such a report, once.
- :class:`PythonBlockCounter`: the same logic as a Python hook (a Python call per block
  executed; several times slower), used when the native object was not built.

A block is counted whole as it begins.  When it does not run to its end — a fault inside
it, or an engine stop from a code hook before its first instruction — the count is ahead
of the instructions really run; :meth:`BlockCounter.fault_at` takes back the instructions
a fault skipped (Machine.run calls it for every synchronous fault, before the guest's
handler runs), because the engine-counted final step must start from an exact count.  A
block left by a hook that moves rip before it runs is not taken back (docs/cli.md).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from typing import Any

from unicorn import UC_HOOK_BLOCK, UC_HOOK_EDGE_GENERATED, Uc, UcError
from unicorn.unicorn_py3 import unicorn as _binding

from leakdbt.machine.extension import load_extension
from leakdbt.machine.memory import GuestMemoryFault
from leakdbt.x86.disasm import strict_decoder

NO_LIMIT = (1 << 64) - 1

# Reads the bytes instruction fetches see at (address, size) (Machine passes
# AddressSpace.read_code_view: a patched page's shadow where it has one).
CodeReader = Callable[[int, int], bytes]
Fail = Callable[[BaseException], None]


def block_instructions(uc: Uc, read_code: CodeReader, address: int, size: int) -> int:
    """How many instructions the engine's block at ``address`` of ``size`` bytes holds.

    The engine's own count when the block it has cached at ``address`` is this one (same
    size); otherwise the instructions decoded from the bytes, with a trailing undecodable
    piece counting as one (the engine ends a block at an invalid instruction, counted)."""
    try:
        tb = uc.ctl_request_cache(address)
    except UcError:
        tb = None
    if tb is not None and tb[0] == address and tb[2] == size:
        return int(tb[1])
    code = read_code(address, size)
    n = used = 0
    for _addr, insn_size, _mnemonic, _ops in strict_decoder().disasm_lite(code, address):
        n, used = n + 1, used + insn_size
    return n + (1 if used < len(code) else 0)


def instructions_before(read_code: CodeReader, block: int, size: int, address: int) -> int:
    """Instructions of block (block, size) that start before ``address`` (decoded)."""
    code = read_code(block, size)
    n = 0
    for insn_addr, _size, _mnemonic, _ops in strict_decoder().disasm_lite(code, block):
        if insn_addr >= address:
            break
        n += 1
    return n


class BlockCounter:
    """The interface Machine.run uses; see the module docstring."""

    native: bool

    def __init__(self, read_code: CodeReader) -> None:
        self._read_code = read_code

    @property
    def done(self) -> int:
        """Instructions counted so far."""
        raise NotImplementedError

    @done.setter
    def done(self, value: int) -> None:
        raise NotImplementedError

    @property
    def limit_reached(self) -> bool:
        """The hook stopped the engine before a block that would pass the limit."""
        raise NotImplementedError

    @property
    def final_step(self) -> bool:
        """Machine.run's engine-counted last step runs: count, never stop."""
        raise NotImplementedError

    @final_step.setter
    def final_step(self, value: bool) -> None:
        raise NotImplementedError

    @property
    def distinct_blocks(self) -> int:
        """Blocks whose instructions were counted by :func:`block_instructions` (the
        blocks neither seen before nor reported by the engine as it translated them)."""
        raise NotImplementedError

    def last_block(self) -> tuple[int, int, int]:
        """(address, size, instructions) of the block counted last ((0, 0, 0): none)."""
        raise NotImplementedError

    def forget_code(self) -> None:
        """Code may have changed in place: count every block afresh from now on."""

    def set_limit(self, limit: int) -> None:
        """Stop before the block that would carry the count past ``limit`` (0: never)."""
        raise NotImplementedError

    def clear_limit_reached(self) -> None:
        """The stop at the limit was dealt with (a thread quantum): count on."""
        raise NotImplementedError

    def fault_at(self, rip: int) -> None:
        """A synchronous fault at ``rip`` ended the block counted last: take back its
        instructions after the faulting one (the engine's count, like a code hook, counts
        the faulting instruction itself: it began).  A fault outside that block (an
        instruction fetch that faulted before any of the next block ran) takes back
        nothing."""
        address, size, count = self.last_block()
        if count and address <= rip < address + size:
            try:
                ran = instructions_before(self._read_code, address, size, rip) + 1
            except GuestMemoryFault:  # the code is gone: nothing to decode
                return
            if ran < count:
                self.done -= count - ran
                self._forget_last()

    def _forget_last(self) -> None:
        raise NotImplementedError


class _Counter(ctypes.Structure):
    """Mirror of ``struct bc_counter`` in _blockcount.c (checked by its size)."""

    _fields_ = (
        ("done", ctypes.c_uint64),
        ("limit", ctypes.c_uint64),
        ("last_address", ctypes.c_uint64),
        ("misses", ctypes.c_uint64),
        ("last_size", ctypes.c_uint32),
        ("last_count", ctypes.c_uint32),
        ("limit_reached", ctypes.c_int32),
        ("final_step", ctypes.c_int32),
        ("failed", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
        ("emu_stop", ctypes.c_void_p),
        ("miss", ctypes.c_void_p),
        ("table", ctypes.c_void_p),
        ("mask", ctypes.c_uint64),
        ("used", ctypes.c_uint64),
    )


_MissFn = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint32)


@functools.cache
def native_library() -> ctypes.CDLL | None:
    """The built ``_blockcount`` shared object, or None (not built, or built for a layout
    this module does not know)."""
    def declare(lib: ctypes.CDLL) -> None:
        lib.bc_clear.argtypes = lib.bc_release.argtypes = [ctypes.c_void_p]
        lib.bc_clear.restype = lib.bc_release.restype = None
        _ = lib.bc_block_hook, lib.bc_edge_hook

    return load_extension("leakdbt.machine._blockcount", "bc_struct_size",
                          ctypes.sizeof(_Counter), declare)


class NativeBlockCounter(BlockCounter):
    """The C block hook of _blockcount.c, registered with the engine's C API."""

    native = True

    def __init__(self, uc: Uc, lib: ctypes.CDLL, limit: int, read_code: CodeReader,
                 fail: Fail) -> None:
        super().__init__(read_code)
        self._lib = lib
        self._fail = fail
        self._miss = _MissFn(self._on_miss)  # kept alive as long as the counter
        self._c = _Counter(limit=limit or NO_LIMIT,
                           emu_stop=ctypes.cast(_binding.uclib.uc_emu_stop, ctypes.c_void_p),
                           miss=ctypes.cast(self._miss, ctypes.c_void_p))
        self._uc = uc
        for kind, fn in ((UC_HOOK_BLOCK, lib.bc_block_hook),
                         (UC_HOOK_EDGE_GENERATED, lib.bc_edge_hook)):
            handle = _binding.uc_hook_h()
            status = _binding.uclib.uc_hook_add(
                uc._uch, ctypes.byref(handle), kind, ctypes.cast(fn, ctypes.c_void_p),
                ctypes.byref(self._c), ctypes.c_uint64(1), ctypes.c_uint64(0))  # everywhere
            if status != 0:
                raise UcError(status)
            # The engine keeps what its hooks use alive, as the binding does for its own
            # (and this counter with it: its miss handler is a bound method).
            uc._callbacks[handle.value] = self

    def __del__(self) -> None:  # only once the engine itself is garbage
        self._lib.bc_release(ctypes.byref(self._c))

    def _on_miss(self, address: int, size: int) -> int:
        try:
            return block_instructions(self._uc, self._read_code, address, size)
        except BaseException as e:  # noqa: BLE001 - re-raised by Machine.run
            self._fail(e)  # stops the engine
            return -1

    @property
    def done(self) -> int:
        return int(self._c.done)

    @done.setter
    def done(self, value: int) -> None:
        self._c.done = value

    @property
    def limit_reached(self) -> bool:
        return bool(self._c.limit_reached)

    @property
    def final_step(self) -> bool:
        return bool(self._c.final_step)

    @final_step.setter
    def final_step(self, value: bool) -> None:
        self._c.final_step = int(value)

    @property
    def distinct_blocks(self) -> int:
        return int(self._c.misses)

    def last_block(self) -> tuple[int, int, int]:
        c = self._c
        return int(c.last_address), int(c.last_size), int(c.last_count)

    def _forget_last(self) -> None:
        self._c.last_count = 0

    def set_limit(self, limit: int) -> None:
        self._c.limit = limit or NO_LIMIT

    def clear_limit_reached(self) -> None:
        self._c.limit_reached = 0

    def forget_code(self) -> None:
        self._lib.bc_clear(ctypes.byref(self._c))


class PythonBlockCounter(BlockCounter):
    """The same counter as a Python block hook: the fallback without the native object."""

    native = False

    def __init__(self, uc: Uc, limit: int, read_code: CodeReader,
                 guard: Callable[[Callable[..., object]], Callable[..., object]]) -> None:
        super().__init__(read_code)
        self._done = 0
        self._limit_reached = False
        self._final_step = False
        self._limit = limit or NO_LIMIT
        self._counts: dict[tuple[int, int], int] = {}
        self._last = (0, 0, 0)
        self._misses = 0
        uc.hook_add(UC_HOOK_BLOCK, guard(self._block))
        uc.hook_add(UC_HOOK_EDGE_GENERATED, guard(self._translated))

    def _translated(self, _uc: Uc, cur: Any, _prev: object, _ud: object) -> None:
        if cur.size and cur.icount:  # the engine's uc_tb
            self._counts[(int(cur.pc), int(cur.size))] = int(cur.icount)

    def _block(self, uc: Uc, address: int, size: int, _ud: object) -> None:
        n = self._counts.get((address, size))
        if n is None:
            self._misses += 1
            n = self._counts[(address, size)] = block_instructions(uc, self._read_code,
                                                                    address, size)
        done = self._done + n
        if done > self._limit and not self._final_step:
            self._limit_reached = True
            uc.emu_stop()  # from a block hook: stops before the block runs
            return
        self._done = done
        self._last = (address, size, n)

    @property
    def done(self) -> int:
        return self._done

    @done.setter
    def done(self, value: int) -> None:
        self._done = value

    @property
    def limit_reached(self) -> bool:
        return self._limit_reached

    @property
    def final_step(self) -> bool:
        return self._final_step

    @final_step.setter
    def final_step(self, value: bool) -> None:
        self._final_step = value

    @property
    def distinct_blocks(self) -> int:
        return self._misses

    def last_block(self) -> tuple[int, int, int]:
        return self._last

    def _forget_last(self) -> None:
        self._last = (0, 0, 0)

    def set_limit(self, limit: int) -> None:
        self._limit = limit or NO_LIMIT

    def clear_limit_reached(self) -> None:
        self._limit_reached = False

    def forget_code(self) -> None:
        self._counts.clear()


def block_counter(uc: Uc, limit: int, read_code: CodeReader, fail: Fail,
                  guard: Callable[[Callable[..., object]], Callable[..., object]],
                  native: bool = True) -> BlockCounter:
    """The native counter when the shared object is built (and ``native``), else the
    Python one."""
    lib = native_library() if native else None
    if lib is not None:
        return NativeBlockCounter(uc, lib, limit, read_code, fail)
    return PythonBlockCounter(uc, limit, read_code, guard)
