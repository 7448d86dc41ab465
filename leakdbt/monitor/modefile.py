"""The mode file of adaptive hardened files (docs/harden.md): one page whose word 0 tells every
program that maps it whether to run its regions' originals (:data:`FAST_WORD`) or their
hardened copies (any other value); region ``i`` counts its entries at ``64 + 16 * i`` (fast)
and ``72 + 16 * i`` (hardened).

:class:`ModeFile` is the writer's side, what ``leakdbt monitor`` drives through
:class:`~leakdbt.monitor.monitor.Monitor`; the reader's side is the machine code of
:mod:`leakdbt.elfpatch.adaptive`, which maps the file only when it is safe (below).
"""

from __future__ import annotations

import mmap
import os
import stat
import struct

from leakdbt.dbt.mode import Mode
from leakdbt.errors import UsageError

DEFAULT_MODE_FILE = "/dev/shm/leakdbt-mode"
PAGE = 0x1000
FAST_WORD = 0x54534146  # b"FAST", little-endian
HARDENED_WORD = 0  # any value but FAST_WORD runs hardened; 0 is also an unmapped page's
COUNTERS = 64  # offset of region 0's counters in the mode page
MAX_REGIONS = (PAGE - COUNTERS) // 16
_WORD = struct.Struct("<I")
_COUNT = struct.Struct("<QQ")


def mode_word(mode: Mode) -> int:
    """The word that makes programs run ``mode``."""
    return FAST_WORD if mode is Mode.FAST else HARDENED_WORD


def entry_counts(page: bytes, region: int) -> tuple[int, int]:
    """(fast, hardened) entries of region ``region`` recorded in ``page``."""
    fast, hardened = _COUNT.unpack_from(page, COUNTERS + 16 * region)
    return fast, hardened


class ModeFile:
    """A mode file opened for writing its word, hardened until :meth:`set_mode` says
    otherwise.  Created (mode 0600, one zero page) if missing; refused with a
    :class:`UsageError` if programs would ignore it: not a regular file, or writable by group
    or others, or owned by neither root nor us (the rules of the programs' start-up code)."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as e:
            raise UsageError(f"--mode-file {path}: {e.strerror or e}") from None
        try:
            st = os.fstat(fd)
            problem = _unsafe(st)
            if problem:
                raise UsageError(f"--mode-file {path}: {problem}; programs would ignore it")
            if st.st_size < PAGE:
                os.ftruncate(fd, PAGE)  # zero-filled: the hardened word, no counts
            self._page = mmap.mmap(fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.mode = Mode.HARDENED
        self.set_mode(Mode.HARDENED)

    def set_mode(self, mode: Mode) -> None:
        """Write the word of ``mode``: the next region entry of every program runs it."""
        _WORD.pack_into(self._page, 0, mode_word(mode))  # one aligned 4-byte store
        self.mode = mode

    def counts(self, region: int) -> tuple[int, int]:
        """(fast, hardened) entries of region ``region``, summed over every program."""
        return entry_counts(bytes(self._page[:PAGE]), region)

    def close(self) -> None:
        """Leave the word hardened (fail-safe: nobody watches any more) and unmap."""
        self.set_mode(Mode.HARDENED)
        self._page.flush()
        self._page.close()


def _unsafe(st: os.stat_result) -> str:
    """Why the programs' start-up code would not map a file with status ``st`` ('' if it
    would, size aside: the writer makes it a whole page)."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    if st.st_uid not in (0, os.getuid()):
        return f"owned by uid {st.st_uid}, neither root nor us"
    return ""
