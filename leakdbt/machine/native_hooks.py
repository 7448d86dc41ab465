"""Native (C) hooks for layers above the machine, which may not touch the engine.

A C callback compiled elsewhere in leakdbt (e.g. leakdbt/leakage/_trace.c, loaded with
ctypes) is registered with the engine's C API here, with the engine functions and numbers
it needs handed over as plain values: the pointers to ``uc_emu_stop`` and ``uc_reg_read``,
the register numbers of RSP and RIP, and the access type of a write.  The same way as
:class:`leakdbt.machine.blockcount.NativeBlockCounter` registers its hooks.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

from unicorn import UC_HOOK_BLOCK, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UcError
from unicorn import x86_const as x86
from unicorn.unicorn_const import UC_MEM_WRITE
from unicorn.unicorn_py3 import unicorn as _binding

from leakdbt.machine.machine import Machine

KINDS = {"block": UC_HOOK_BLOCK, "memory": UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE}


@dataclass(frozen=True)
class EngineFunctions:
    """What a C hook needs of the engine, as plain numbers."""

    emu_stop: int  # address of uc_emu_stop(uc)
    reg_read: int  # address of uc_reg_read(uc, regid, value)
    rsp: int  # register numbers
    rip: int
    write_type: int  # the access type a memory hook gets for a write


def engine_functions() -> EngineFunctions:
    """The engine's functions and numbers (see :class:`EngineFunctions`)."""
    lib = _binding.uclib
    return EngineFunctions(
        ctypes.cast(lib.uc_emu_stop, ctypes.c_void_p).value or 0,
        ctypes.cast(lib.uc_reg_read, ctypes.c_void_p).value or 0,
        x86.UC_X86_REG_RSP, x86.UC_X86_REG_RIP, UC_MEM_WRITE)


def engine_handle(machine: Machine) -> int:
    """The machine's engine handle, the first argument of the engine's C functions."""
    uch: Any = machine.uc._uch
    return int(uch.value)


def add_native_hook(machine: Machine, kind: str, function: Any, data: ctypes.Structure,
                    keep: object) -> None:
    """Register the C function ``function`` (a ctypes function of the shared object) as a
    hook of ``kind`` ("block" or "memory") everywhere, called with ``data`` (a ctypes
    object, passed by reference) as its user data; ``keep`` stays alive as long as the
    engine (the owner of ``data`` and of any Python callbacks the C code calls)."""
    uc = machine.uc
    handle = _binding.uc_hook_h()
    status = _binding.uclib.uc_hook_add(
        uc._uch, ctypes.byref(handle), KINDS[kind], ctypes.cast(function, ctypes.c_void_p),
        ctypes.byref(data), ctypes.c_uint64(1), ctypes.c_uint64(0))
    if status != 0:
        raise UcError(status)
    uc._callbacks[handle.value] = keep  # the engine keeps its hooks' owners alive
