"""Bind a contract's code and data locations to a binary and the shared libraries it loads.

Locations are resolved through the ELF symbol tables (.symtab, else .dynsym) to link-time
addresses of one module — the main binary or a DT_NEEDED library — and the loader adds that
module's load bias at run time (System V gABI: a PIE or shared object's symbol values are
relative to where it is mapped).  A region must start on an instruction boundary inside a
function symbol; the function is decoded linearly from its symbol to check that.
"""

from __future__ import annotations

import bisect
import dataclasses
import difflib
import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

from leakdbt.contract.model import (
    Binding,
    Contract,
    FunctionRef,
    Library,
    Location,
    PointerSource,
    Region,
    RegionKind,
    RegisterSource,
    ResolvedAddress,
    ResolvedRegion,
    ResolvedSecret,
    ResolvedSpan,
    Secret,
    SymbolSource,
)
from leakdbt.errors import ContractError, ElfError
from leakdbt.loader.elf import load_image
from leakdbt.loader.image import PF_X, Image, Symbol

DEFAULT_LIBRARY_PATHS: tuple[str, ...] = (
    "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib",
)
"""Where DT_NEEDED libraries are looked for (Debian multiarch first), in order."""

T = TypeVar("T")


class _Problem(Exception):
    """A location that does not resolve; the message is the whole explanation."""


@dataclasses.dataclass
class _Module:
    name: str | None  # None for the main binary
    path: str
    image: Image


def bind(contract: Contract, binary: str | os.PathLike[str],
         library_paths: Sequence[str] | None = None) -> Contract:
    """The contract with :attr:`Contract.binding` filled in for ``binary``.

    Raises :class:`ContractError` listing every location that does not resolve, and
    :class:`ElfError` if ``binary`` cannot be read as an x86-64 ELF file.
    """
    parts = ContractParts(list(enumerate(contract.secrets)),
                          list(enumerate(contract.protect.functions)),
                          list(enumerate(contract.protect.regions)))
    binding, problems = bind_parts(parts, contract.line, binary, library_paths)
    if problems:
        raise ContractError(contract.path, sorted(problems, key=lambda p: p[0]))
    return dataclasses.replace(contract, binding=binding)


@dataclasses.dataclass
class ContractParts:
    """The located entries of a contract with their index in the file.

    Built from a whole :class:`Contract`, or by the loader from the entries that validated
    in a file that has other mistakes, so binding problems are reported with them.
    """

    secrets: list[tuple[int, Secret]]
    functions: list[tuple[int, Location]]
    regions: list[tuple[int, Region]]


def bind_parts(parts: ContractParts, line: Callable[[str], int],
               binary: str | os.PathLike[str], library_paths: Sequence[str] | None = None,
               ) -> tuple[Binding, list[tuple[int, str, str]]]:
    """Resolve ``parts`` against ``binary``: the binding and every ``(line, key, problem)``.

    The binding is only meaningful when there are no problems.  ``line`` maps a key as
    printed in errors to its source line.
    """
    image = load_image(binary)
    resolver = _Resolver(_Module(None, os.fspath(binary), image),
                         tuple(library_paths) if library_paths is not None
                         else DEFAULT_LIBRARY_PATHS)
    problems: list[tuple[int, str, str]] = []

    def attempt(key: str, fn: Callable[[], T]) -> T | None:
        try:
            return fn()
        except _Problem as e:
            problems.append((line(key), key, str(e)))
            return None

    secrets: list[ResolvedSecret | None] = []
    for i, secret in parts.secrets:
        src = secret.source
        resolved: ResolvedSecret | None = None
        if isinstance(src, RegisterSource | PointerSource):
            ref = attempt(f"secret[{i}].function", partial(resolver.function, src.function))
            resolved = ResolvedSecret(function=ref) if ref else None
        elif isinstance(src, SymbolSource):
            span = attempt(f"secret[{i}].symbol",
                           partial(resolver.data, src.symbol, secret.length, "secret"))
            resolved = ResolvedSecret(span=span) if span else None
        secrets.append(resolved)

    functions = []
    for i, loc in parts.functions:
        ref = attempt(f"protect.functions[{i}]", partial(resolver.function, loc))
        if ref is not None:
            functions.append(ref)

    regions: list[ResolvedRegion] = []
    for i, region in parts.regions:
        key = f"protect.region[{i}]"
        block = attempt(f"{key}.at", partial(resolver.block, region.at))
        table = None
        if region.kind is RegionKind.TABLE and region.table and region.table.symbol:
            bounds = region.table
            assert bounds.symbol is not None
            table = attempt(f"{key}.symbol",
                            partial(resolver.data, bounds.symbol, bounds.length, "table"))
        if block is None:
            continue
        at, func = block
        if region.kind is RegionKind.FUNCTION and at.address != func.start:
            problems.append((line(f"{key}.at"), f"{key}.at",
                             f'kind = "function" replaces a whole function: {at.symbolic} '
                             f"is not the entry of {func.name}"))
            continue
        # A region may lie outside protect.functions: the scope is those functions'
        # dynamic extent, callees included (docs/checking.md), and a callee's leak is
        # fixed by a region in the callee.
        regions.append(ResolvedRegion(at=at, function=func, table=table))

    binding = Binding(
        binary=os.fspath(binary), binary_kind=image.kind.value, is_pie=image.is_pie,
        secrets=tuple(secrets), functions=tuple(functions), regions=tuple(regions),
        libraries=tuple(Library(m.name, m.path) for m in resolver.used if m.name),
    )
    return binding, problems


def _names(library: str, name: str) -> bool:
    """Whether a contract's ``library`` names the file or soname ``name``: exactly, or as a
    prefix ending before a dot (``libc.so`` for ``libc.so.6``)."""
    return name == library or name.startswith(library + ".")


class _Resolver:
    def __init__(self, main: _Module, library_paths: tuple[str, ...]) -> None:
        self.main = main
        self.library_paths = library_paths
        self.loaded: dict[str, _Module] = {}
        self.used: list[_Module] = []
        self.starts: dict[tuple[str, int], list[int]] = {}

    # -- modules -----------------------------------------------------------------------------

    def module(self, library: str | None) -> _Module:
        if library is None:
            return self.main
        main = self.main.image
        binary = os.path.basename(self.main.path)
        if not main.needed:
            raise _Problem(f"{binary} is statically linked and loads no libraries: write the "
                           f"symbol without {library}:")
        queue, seen = list(main.needed), set()
        while queue:
            name = queue.pop(0)
            if name in seen:
                continue
            seen.add(name)
            path = self.find_file(name)
            matches = _names(library, name)
            if matches and path is None:
                raise _Problem(f"{name} is not found in {', '.join(self.library_paths)}")
            if path is None:
                continue
            mod = self.load(name, path)
            # analyze and the loader name a library by its file (libfoo.so.1.0.1, which
            # the DT_NEEDED symlink libfoo.so.1 points at) or by its soname: accept both
            if matches or _names(library, os.path.basename(os.path.realpath(path))) \
                    or (mod.image.soname is not None and _names(library, mod.image.soname)):
                if mod not in self.used:
                    self.used.append(mod)
                return mod
            queue.extend(mod.image.needed)
        raise _Problem(f"{library} is not a library {binary} loads (DT_NEEDED: "
                       f"{', '.join(main.needed)})")

    def provider(self, symbol: str) -> str | None:
        """The first library (breadth first through DT_NEEDED) that defines ``symbol``: the
        hint for a contract that names a library function without its ``lib.so:`` prefix."""
        queue, seen = list(self.main.image.needed), set()
        while queue:
            name = queue.pop(0)
            path = self.find_file(name) if name not in seen else None
            seen.add(name)
            if path is None:
                continue
            try:
                mod = self.load(name, path)
            except _Problem:
                continue
            sym = mod.image.symbol(symbol)
            if sym is not None and sym.value != 0:
                return name
            queue.extend(mod.image.needed)
        return None

    def find_file(self, name: str) -> str | None:
        for directory in self.library_paths:
            candidate = os.path.join(directory, name)
            if os.path.isfile(candidate):
                return candidate
        return None

    def load(self, name: str, path: str) -> _Module:
        if name not in self.loaded:
            try:
                self.loaded[name] = _Module(name, path, load_image(path))
            except ElfError as e:
                raise _Problem(f"cannot use library {name}: {e.message}") from None
        return self.loaded[name]

    # -- symbols -----------------------------------------------------------------------------

    def lookup(self, loc: Location) -> tuple[_Module, int, Symbol | None]:
        """Module, link-time address and (if named) symbol of ``loc``."""
        if loc.absolute is not None:
            mod = self.main
            if mod.image.is_pie:
                raise _Problem(f"{loc} is an absolute address, but "
                               f"{os.path.basename(mod.path)} is position-independent (PIE) "
                               "and is loaded at a different address each run: write "
                               "symbol+offset")
            return mod, loc.absolute, None
        assert loc.symbol is not None
        mod = self.module(loc.library)
        sym = mod.image.symbol(loc.symbol)
        if sym is None or sym.value == 0:
            where = loc.library or os.path.basename(mod.path)
            provider = self.provider(loc.symbol) if loc.library is None else None
            if provider is not None:
                raise _Problem(f"symbol {loc.symbol!r} is not in {where}: it is defined by "
                               f"{provider}, which it loads (did you mean "
                               f"'{provider}:{loc.symbol}'?)")
            names = sorted({s.name for s in mod.image.symbols})
            close = difflib.get_close_matches(loc.symbol, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            if not mod.image.has_symtab:
                hint += "; it has no .symtab (stripped), only exported symbols"
            raise _Problem(f"symbol {loc.symbol!r} is not in {where}{hint}")
        if sym.kind == "tls":
            raise _Problem(f"{loc.symbol} is thread-local; thread-local objects are not "
                           "supported")
        return mod, sym.value + loc.offset, sym

    def address(self, mod: _Module, address: int, loc: Location) -> ResolvedAddress:
        if loc.absolute is not None:
            symbolic = mod.image.symbolize(address) or f"{address:#x}"
        else:
            symbolic = str(loc)
        return ResolvedAddress(mod.name, mod.path, address, symbolic)

    def function(self, loc: Location) -> FunctionRef:
        mod, address, sym = self.lookup(loc)
        assert sym is not None
        if sym.kind != "func":
            raise _Problem(f"{loc.symbol} is a data object, not a function")
        start, end = mod.image.extent(sym)
        return FunctionRef(mod.name, sym.name, start, end - start)

    def data(self, loc: Location, length: int | None, what: str) -> ResolvedSpan:
        mod, address, sym = self.lookup(loc)
        if sym is not None and sym.kind == "func" and what == "secret":
            raise _Problem(f"{loc.symbol} is a function; a symbol secret must be a data object")
        if sym is not None and sym.size:
            room = sym.size - loc.offset
            if room <= 0:
                raise _Problem(f"offset {loc.offset:#x} is past the end of {sym.name} "
                               f"({sym.size} bytes)")
            if length is None:
                length = room
            elif length > room and what != "table":  # a table may span several objects
                raise _Problem(f"{length} bytes from {loc} run past the end of {sym.name} "
                               f"({sym.size} bytes)")
        if length is None:
            raise _Problem(f"{loc} has no size in the symbol table: give length")
        if not any(s.vaddr <= address and address + length <= s.end
                   for s in mod.image.segments):
            raise _Problem(f"{loc} ({address:#x}, {length} bytes) is not inside the "
                           "loaded image")
        return ResolvedSpan(self.address(mod, address, loc), length)

    # -- code --------------------------------------------------------------------------------

    def block(self, loc: Location) -> tuple[ResolvedAddress, FunctionRef]:
        """The start of a region: inside a function, in executable code, on an instruction."""
        mod, address, sym = self.lookup(loc)
        if sym is not None and sym.kind != "func":
            raise _Problem(f"{loc.symbol} is a data object, not code: a region starts in a "
                           "function")
        func = sym if sym is not None else mod.image.function_containing(address)
        if func is None:
            raise _Problem(f"{loc} is not inside any function of "
                           f"{mod.name or os.path.basename(mod.path)}")
        start, end = mod.image.extent(func)
        if not start <= address < end:
            raise _Problem(f"offset {address - start:#x} is past the end of {func.name} "
                           f"({end - start:#x} bytes)")
        seg = mod.image.segment_at(address)
        if seg is None or not seg.flags & PF_X:
            raise _Problem(f"{loc} is not in executable code")
        starts = self.instruction_starts(mod, start, end)
        if address not in starts:
            i = bisect.bisect_left(starts, address)
            near = [func.name + (f"+{a - start:#x}" if a > start else "")
                    for a in starts[max(i - 1, 0):i + 1]]
            raise _Problem(f"{loc} is not an instruction boundary (nearest instructions "
                           f"start at {' and '.join(near)})")
        ref = FunctionRef(mod.name, func.name, start, end - start)
        return self.address(mod, address, loc), ref

    def instruction_starts(self, mod: _Module, start: int, end: int) -> list[int]:
        key = (mod.path, start)
        if key not in self.starts:
            from leakdbt.x86.disasm import instruction_starts

            self.starts[key] = instruction_starts(mod.image.read(start, end - start), start)
        return self.starts[key]

