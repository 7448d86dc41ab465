"""The native recorder of the control-flow and memory-access observers (``_trace.c``).

Built at install as an optional extension, like the block counter
(leakdbt/machine/blockcount.py): without a C compiler, :func:`native_library` is None and
:class:`leakdbt.leakage.observe.RunObserver` records with its Python hooks, which give the
same traces and digests (:func:`mix` is the digest step of both).  The C side keeps the
scope's state for the block and memory hooks; Python enters the scope (:meth:`enter`),
hears when it may have been left (``leave``), and reads the events and figures with
:meth:`sync`.  A long run's arrays can be emptied as it goes (:meth:`flush_every`,
:meth:`forget`): block numbers then go on from the blocks forgotten.
"""

from __future__ import annotations

import ctypes
import functools
from array import array
from collections.abc import Callable

from leakdbt.machine.extension import load_extension
from leakdbt.machine.machine import Machine
from leakdbt.machine.native_hooks import add_native_hook, engine_functions, engine_handle

MASK = (1 << 64) - 1
K = 0x9E3779B97F4A7C15


def mix(digest: int, x: int) -> int:
    """One step of the running digest (``tr_mix`` in _trace.c): 64-bit, order-sensitive."""
    d = ((digest ^ x) * K) & MASK
    return d ^ (d >> 32)


class _Vec(ctypes.Structure):
    _fields_ = (("data", ctypes.c_void_p), ("len", ctypes.c_uint64), ("cap", ctypes.c_uint64))


_MissFn = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint32,
                           ctypes.POINTER(ctypes.c_uint64))
_LeaveFn = ctypes.CFUNCTYPE(None)


class _State(ctypes.Structure):
    """Mirror of ``struct tr_state`` in _trace.c (checked by its size)."""

    _fields_ = (
        ("active", ctypes.c_int32),
        ("full", ctypes.c_int32),
        ("failed", ctypes.c_int32),
        ("out_of_memory", ctypes.c_int32),
        ("entry_rsp", ctypes.c_uint64),
        ("everywhere", ctypes.c_int32),
        ("rsp_id", ctypes.c_int32),
        ("rip_id", ctypes.c_int32),
        ("write_type", ctypes.c_int32),
        ("unit", ctypes.c_uint64),
        ("flow_digest", ctypes.c_uint64),
        ("memory_digest", ctypes.c_uint64),
        ("instructions", ctypes.c_uint64),
        ("cost", ctypes.c_uint64),
        ("cur_address", ctypes.c_uint64),
        ("cur_size", ctypes.c_uint64),
        ("emu_stop", ctypes.c_void_p),
        ("reg_read", ctypes.c_void_p),
        ("miss", ctypes.c_void_p),
        ("leave", ctypes.c_void_p),
        ("table", ctypes.c_void_p),
        ("mask", ctypes.c_uint64),
        ("used", ctypes.c_uint64),
        ("starts", _Vec), ("lasts", _Vec), ("rsps", _Vec),
        ("mblocks", _Vec), ("pcs", _Vec), ("units", _Vec), ("writes", _Vec),
        ("base", ctypes.c_uint64),
        ("flush_at", ctypes.c_uint64),
        ("flush_events", ctypes.c_uint64),
        ("flush", ctypes.c_void_p),
    )


@functools.cache
def native_library() -> ctypes.CDLL | None:
    """The built ``_trace`` shared object, or None (not built, or another layout)."""
    def declare(lib: ctypes.CDLL) -> None:
        lib.tr_release.argtypes = [ctypes.c_void_p]
        lib.tr_release.restype = None
        lib.tr_enter.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64,
                                 ctypes.c_uint64]
        lib.tr_enter.restype = None
        lib.tr_forget.argtypes = [ctypes.c_void_p]
        lib.tr_forget.restype = None
        _ = lib.tr_block_hook, lib.tr_memory_hook

    return load_extension("leakdbt.leakage._trace", "tr_struct_size", ctypes.sizeof(_State),
                          declare)


# (instructions, cost, address of the last instruction) of the block (address, size)
BlockFigures = Callable[[int, int], tuple[int, int, int]]


class NativeRecorder:
    """The C hooks of one run, their state, and what Python has copied of it so far."""

    def __init__(self, machine: Machine, lib: ctypes.CDLL, *, memory: bool, unit: int,
                 full: bool, everywhere: bool, figures: BlockFigures,
                 leave: Callable[[], object]) -> None:
        """``figures``: the block's figures (asked once per block address); ``leave``:
        called when a block starts above the entry's stack pointer."""
        self._lib = lib
        self._figures = figures
        self._error_fail = machine.guard(self._raise)
        self._guard = machine.guard
        engine = engine_functions()
        self._uc = engine_handle(machine)
        self._miss = _MissFn(self._on_miss)  # kept alive with the recorder
        guarded_leave = machine.guard(leave)

        def on_leave() -> None:
            guarded_leave()

        self._leave = _LeaveFn(on_leave)
        self.state = _State(
            active=int(everywhere), full=int(full), everywhere=int(everywhere),
            rsp_id=engine.rsp, rip_id=engine.rip, write_type=engine.write_type, unit=unit,
            emu_stop=engine.emu_stop, reg_read=engine.reg_read,
            miss=ctypes.cast(self._miss, ctypes.c_void_p),
            leave=ctypes.cast(self._leave, ctypes.c_void_p))
        self._copied = dict.fromkeys(("starts", "mblocks"), 0)
        self._flush: object = None  # the flush callback, kept alive with the recorder
        add_native_hook(machine, "block", lib.tr_block_hook, self.state, self)
        if memory:
            add_native_hook(machine, "memory", lib.tr_memory_hook, self.state, self)

    def release(self) -> None:
        """Free the C arrays now (the run is over; its trace has been read): the engine and
        this recorder may live on, in reference cycles, until the next garbage collection."""
        self._lib.tr_release(ctypes.byref(self.state))
        self._copied = dict.fromkeys(self._copied, 0)

    def __del__(self) -> None:  # only once the engine itself is garbage
        self._lib.tr_release(ctypes.byref(self.state))

    @staticmethod
    def _raise(e: BaseException) -> None:
        raise e

    def _on_miss(self, address: int, size: int, out: ctypes.Array[ctypes.c_uint64]) -> int:
        try:
            out[0], out[1], out[2] = self._figures(address, size)
        except BaseException as e:  # noqa: BLE001 - re-raised by Machine.run
            self._error_fail(e)  # the guard stores it and stops the engine
            return -1
        return 0

    def enter(self, address: int, rsp: int) -> None:
        """The scope is entered at ``address`` with stack pointer ``rsp``."""
        self._lib.tr_enter(ctypes.byref(self.state), self._uc, address, rsp)

    def set_active(self, active: bool) -> None:
        self.state.active = int(active)

    def flush_every(self, blocks: int, flush: Callable[[], object]) -> None:
        """Call ``flush`` (guarded like ``leave``) after a block when the arrays hold
        ``blocks`` blocks, or 16 times as many accesses; it copies them (:meth:`sync`) and
        empties them (:meth:`forget`)."""
        guarded = self._guard(flush)

        def on_flush() -> None:
            guarded()

        self._flush = _LeaveFn(on_flush)
        self.state.flush = ctypes.cast(self._flush, ctypes.c_void_p)
        self.state.flush_events = 16 * blocks
        self.state.flush_at = blocks

    def forget(self) -> None:
        """Empty the arrays, which :meth:`sync` has copied: the C side holds only what
        comes next (numbered after what it forgot)."""
        self._lib.tr_forget(ctypes.byref(self.state))
        self._copied = dict.fromkeys(self._copied, 0)

    @property
    def blocks(self) -> int:
        """Blocks recorded so far (full traces), forgotten ones included."""
        return int(self.state.base + self.state.starts.len)

    def check(self) -> None:
        """Raise if recording ran out of memory."""
        if self.state.out_of_memory:
            raise MemoryError("out of memory recording a full trace")

    def sync(self, starts: array[int], lasts: array[int], rsps: array[int],
             mblocks: array[int], pcs: array[int], units: array[int],
             writes: array[int]) -> None:
        """Append what the C side recorded since the last call to these arrays."""
        s = self.state
        done = self._copied["starts"]
        for vec, out in ((s.starts, starts), (s.lasts, lasts), (s.rsps, rsps)):
            out.frombytes(ctypes.string_at(vec.data + 8 * done, 8 * (vec.len - done))
                          if vec.len > done else b"")
        self._copied["starts"] = int(s.starts.len)
        done = self._copied["mblocks"]
        for vec, out in ((s.mblocks, mblocks), (s.pcs, pcs), (s.units, units)):
            out.frombytes(ctypes.string_at(vec.data + 8 * done, 8 * (vec.len - done))
                          if vec.len > done else b"")
        if s.writes.len > done:
            raw = array("Q")
            raw.frombytes(ctypes.string_at(s.writes.data + 8 * done, 8 * (s.writes.len - done)))
            writes.fromlist(raw.tolist())
        self._copied["mblocks"] = int(s.mblocks.len)
