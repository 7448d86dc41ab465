"""Source lines for link-time addresses, from the DWARF line tables (``.debug_line``).

The line number programs of every compilation unit are run once per file (with pyelftools,
imported here lazily: it is only needed when a report wants source lines) into sorted rows,
one array per sequence, so that each lookup is two binary searches.  DWARF versions 2 to 5
are read; file names are joined with their include directory and the compilation directory
the way the line program header says (in DWARF 5 directory and file index 0 are valid and
entry 0 names the compilation directory and the primary source file; before DWARF 5 file
indices start at 1 and directory 0 is the compilation directory).

Addresses are link-time addresses of the file (for a PIE, as if loaded at 0).  A file without
line information (stripped, or not an ELF file) yields no table; malformed DWARF never raises:
whatever cannot be read is left out.
"""

from __future__ import annotations

import bisect
import os
import posixpath
import stat
from dataclasses import dataclass
from functools import lru_cache
from typing import Any


@dataclass(frozen=True)
class SourceLine:
    """A source position from DWARF line information."""

    file: str  # as the line table names it (absolute when the compiler recorded it so)
    line: int
    column: int = 0


MAX_ROWS = 1 << 24  # line table rows kept per file; hostile DWARF costs at most this much


@dataclass(frozen=True)
class _Sequence:
    """One contiguous run of addresses ``[start, end)`` from a line program."""

    start: int
    end: int
    addresses: tuple[int, ...]  # ascending; rows[i] holds from addresses[i] to the next one
    rows: tuple[SourceLine | None, ...]  # None: the address has no line (line 0)


class LineTable:
    """The DWARF line table of one ELF file, for fast repeated lookups.

    ``LineTable(path)`` reads the whole ``.debug_line`` of the file at ``path``; a file without
    one (or unreadable, or malformed) gives an empty table whose lookups return None.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        seqs = _read_sequences(self.path)
        seqs.sort(key=lambda s: (s.start, s.end))
        self._seqs = seqs
        self._starts = [s.start for s in seqs]
        # _reach[i]: the largest end among sequences 0..i, to stop the backward scan early
        # when sequences overlap (functions discarded by the linker keep theirs at 0).
        reach, top = [], 0
        for s in seqs:
            top = max(top, s.end)
            reach.append(top)
        self._reach = reach

    def __bool__(self) -> bool:
        return bool(self._seqs)

    def __len__(self) -> int:
        return sum(len(s.addresses) for s in self._seqs)

    def lookup(self, link_address: int) -> SourceLine | None:
        """The source line of the instruction at ``link_address``, or None if not known.

        The row that covers the address is the last one at or before it in the sequence whose
        range holds it (an end_sequence row ends the range; the address it names is not part
        of it).  Rows with line 0 (code without a source line) give None.
        """
        i = bisect.bisect_right(self._starts, link_address) - 1
        while i >= 0 and self._reach[i] > link_address:
            seq = self._seqs[i]
            if seq.start <= link_address < seq.end:
                j = bisect.bisect_right(seq.addresses, link_address) - 1
                return seq.rows[j] if j >= 0 else None
            i -= 1
        return None


def line_table(path: str | os.PathLike[str]) -> LineTable | None:
    """The line table of the ELF file at ``path``, or None when it has no line information.

    Cached per file (by path, size and modification time): a rebuilt binary is read again.
    """
    spath = os.fspath(path)
    try:
        st = os.stat(spath)
    except OSError:
        return None
    table = _cached_table(os.path.realpath(spath), st.st_size, st.st_mtime_ns)
    return table if table else None


@lru_cache(maxsize=32)
def _cached_table(path: str, size: int, mtime_ns: int) -> LineTable:
    return LineTable(path)


def lookup_source(path: str | os.PathLike[str], link_address: int) -> SourceLine | None:
    """The source line of ``link_address`` in the ELF file at ``path``, if DWARF names one."""
    table = line_table(path)
    return None if table is None else table.lookup(link_address)


def _read_sequences(path: str) -> list[_Sequence]:
    try:
        from elftools.elf.elffile import ELFFile
    except ImportError:  # pragma: no cover - pyelftools is a dependency
        return []
    seqs: list[_Sequence] = []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return []  # a FIFO or device would hang the reader
            elf = ELFFile(f)
            if not any(elf.get_section_by_name(n) for n in (".debug_line", ".zdebug_line")):
                return []
            dwarf = elf.get_dwarf_info(relocate_dwarf_sections=False)
            budget = [MAX_ROWS]
            for cu in dwarf.iter_CUs():
                try:
                    _read_cu(dwarf, cu, seqs, budget)
                except Exception:  # a malformed unit is skipped, others kept
                    continue
                if budget[0] <= 0:
                    break
    except Exception:  # malformed ELF or DWARF: what was read so far stays
        pass
    return seqs


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return os.fsdecode(value)
    return str(value) if value is not None else ""


def _file_names(lineprog: Any, comp_dir: str) -> dict[int, str]:
    """File index → path, as the line program header defines them."""
    header = lineprog.header
    version = header["version"]
    dirs = [_text(d) for d in header["include_directory"]]
    names: dict[int, str] = {}
    if version >= 5:
        # Directory 0 and file 0 are the compilation directory and the primary source file.
        # A relative directory is taken from the unit's DW_AT_comp_dir, as binutils and LLVM
        # do (the two agree in what compilers emit), else from directory 0.
        base = comp_dir or (dirs[0] if dirs and posixpath.isabs(dirs[0]) else "")
        for index, entry in enumerate(header["file_entry"]):
            d = entry.get("dir_index", 0)
            directory = dirs[d] if 0 <= d < len(dirs) else ""
            if not posixpath.isabs(directory) and base:
                directory = posixpath.join(base, directory) if directory else base
            names[index] = posixpath.join(directory, _text(entry.name))
    else:
        # Files from 1; directory 0 is the compilation directory, then include_directory.
        for index, entry in enumerate(header["file_entry"], start=1):
            d = entry.dir_index
            directory = dirs[d - 1] if 1 <= d <= len(dirs) else ""
            if not posixpath.isabs(directory):
                directory = posixpath.join(comp_dir, directory) if directory else comp_dir
            names[index] = posixpath.join(directory, _text(entry.name))
    return names


def _read_cu(dwarf: Any, cu: Any, seqs: list[_Sequence], budget: list[int]) -> None:
    lineprog = dwarf.line_program_for_CU(cu)
    if lineprog is None:
        return
    comp_dir = ""
    try:
        attr = cu.get_top_DIE().attributes.get("DW_AT_comp_dir")
        comp_dir = _text(attr.value) if attr is not None else ""
    except Exception:  # without it, DWARF 5 headers still name directory 0
        comp_dir = ""
    names = _file_names(lineprog, comp_dir)
    addresses: list[int] = []
    rows: list[SourceLine | None] = []
    for entry in lineprog.get_entries():
        state = entry.state
        if state is None:
            continue
        if state.end_sequence:
            if addresses and state.address > addresses[0]:
                seqs.append(_Sequence(addresses[0], state.address, tuple(addresses),
                                      tuple(rows)))
            addresses, rows = [], []
            continue
        budget[0] -= 1
        if budget[0] < 0:
            return
        row: SourceLine | None = None
        name = names.get(state.file)
        if name is not None and state.line > 0:
            row = SourceLine(name, state.line, max(state.column, 0))
        if addresses and state.address < addresses[-1]:
            continue  # addresses only grow within a sequence; ignore a row that goes back
        if addresses and state.address == addresses[-1]:
            rows[-1] = row  # several rows at one address: the last one describes it
            continue
        addresses.append(state.address)
        rows.append(row)
