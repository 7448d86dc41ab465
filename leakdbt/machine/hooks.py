"""Hooks on a running guest: the only way code outside the machine watches it execute.

Every callback runs under the machine's guard: an exception it raises stops the engine and is
re-raised by :meth:`Machine.run <leakdbt.machine.machine.Machine.run>` (hooks never swallow
exceptions).  Callbacks get only what they need — ``(address, size)`` for an instruction or a
block, ``(is_write, address, size)`` for a data access — never the engine.  The wrapper that
adapts the engine's arguments *is* the guard, so a hook costs one Python call per event on
top of the engine binding's own, as a bare engine hook with a guard did.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from unicorn import UC_HOOK_BLOCK, UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, Uc
from unicorn.unicorn_const import UC_MEM_WRITE

from leakdbt.errors import LeakDBTError

CodeCallback = Callable[[int, int], object]  # (address, size)
MemoryCallback = Callable[[bool, int, int], object]  # (is_write, address, size)


class Hook:
    """An installed hook, to hand back to :meth:`Hooks.remove`."""

    __slots__ = ("_handle",)

    def __init__(self, handle: int) -> None:
        self._handle = handle


class Hooks:
    """Installs guarded hooks on one machine's engine (``machine.hooks``)."""

    def __init__(self, uc: Uc, fail: Callable[[BaseException], None]) -> None:
        """``fail``: what the guard does with an exception (the machine stores it and stops)."""
        self._uc = uc
        self._fail = fail

    def on_code(self, callback: CodeCallback, start: int | None = None,
                end: int | None = None) -> Hook:
        """Call ``callback(address, size)`` before each instruction in [start, end) runs
        (every instruction without a range).  Code the engine translated before the hook was
        added does not call it: add hooks before their code runs, or :meth:`retranslate`."""
        return self._add(UC_HOOK_CODE, self._code(callback), start, end)

    def at(self, address: int, callback: CodeCallback) -> Hook:
        """Call ``callback(address, size)`` each time the instruction at ``address`` runs."""
        return self.on_code(callback, address, address + 1)

    def on_block(self, callback: CodeCallback, start: int | None = None,
                 end: int | None = None) -> Hook:
        """Call ``callback(address, size)`` as each basic block (the engine's translation
        block) starting in [start, end) begins to run (every block without a range)."""
        return self._add(UC_HOOK_BLOCK, self._code(callback), start, end)

    def on_memory(self, callback: MemoryCallback, start: int | None = None,
                  end: int | None = None) -> Hook:
        """Call ``callback(is_write, address, size)`` on every data read and write (of an
        address in [start, end) with a range).  Costly beyond its callback: any memory hook
        sends every guest access down the engine's slow path."""
        fail = self._fail

        def hook(_uc: Uc, access: int, address: int, size: int, _value: int,
                 _ud: object) -> None:
            try:
                callback(access == UC_MEM_WRITE, address, size)
            except BaseException as e:  # noqa: BLE001 - re-raised by Machine.run
                fail(e)

        return self._add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, hook, start, end)

    def remove(self, hook: Hook) -> None:
        """Uninstall ``hook``."""
        self._uc.hook_del(hook._handle)

    def retranslate(self) -> None:
        """Drop every translated block, so that hooks added since apply to code the engine
        had already translated."""
        uc: Any = self._uc  # ctl_flush_tb is missing from the engine's type stubs
        uc.ctl_flush_tb()

    def _code(self, callback: CodeCallback) -> Callable[[Uc, int, int, object], None]:
        fail = self._fail  # bound once: no attribute lookups per event

        def hook(_uc: Uc, address: int, size: int, _ud: object) -> None:
            try:
                callback(address, size)
            except BaseException as e:  # noqa: BLE001 - re-raised by Machine.run
                fail(e)

        return hook

    def _add(self, kind: int, hook: Callable[..., None], start: int | None,
             end: int | None) -> Hook:
        if start is None:
            return Hook(self._uc.hook_add(kind, hook))  # begin > end: everywhere
        if end is None or end <= start:
            raise LeakDBTError(f"internal error: empty hook range [{start:#x}, {end})")
        return Hook(self._uc.hook_add(kind, hook, None, start, end - 1))
