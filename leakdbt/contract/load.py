"""Read a contract from TOML and validate it, reporting every mistake with its line.

The format is version 1 of docs/contracts.md.  :func:`loads` collects all problems of a
document — unknown keys, wrong types, missing fields, bad values, inconsistent secrets — and
raises one :class:`~leakdbt.errors.ContractError` listing them as ``(line, key, message)``.
Binding to a binary (symbols, instruction boundaries) is :mod:`leakdbt.contract.resolve`.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import enum
import os
import re
from collections.abc import Sequence
from functools import partial
from types import MappingProxyType
from typing import Any, TypeVar

from leakdbt.contract.bound import parse_bound
from leakdbt.contract.mapping import PASS_KIND
from leakdbt.contract.model import (
    CONTRACT_VERSION,
    GENERAL_REGISTERS,
    SOURCE_KEYS,
    VECTOR_REGISTERS,
    Adversary,
    ArgvSource,
    Check,
    Contract,
    DeclassifyPoint,
    DeclassifyWhen,
    EnvSource,
    FileSource,
    Location,
    Output,
    PointerSource,
    Policy,
    Protect,
    Region,
    RegionKind,
    RegisterSource,
    Secret,
    Source,
    StdinSource,
    SymbolSource,
    TableBounds,
    ValueFormat,
    header_offset,
    source_line,
)
from leakdbt.contract.resolve import ContractParts, bind_parts
from leakdbt.contract.toml_lines import KeyPath, display, key_lines, line_of, parse_toml
from leakdbt.errors import ContractError

E = TypeVar("E", bound=enum.Enum)

MAX_INPUT_LENGTH = 1 << 24  # 16 MiB: more is surely a mistake
MAX_DECLASSIFIED = 1 << 16  # bytes one declassification point reads
MAX_STRING_SECRET = 4096  # argv and environment strings
MAX_TRIALS = 1_000_000
MAX_LOOP_BOUND = (1 << 31) - 1  # an inner loop's bound (bounded-loop's limit)
CLONE_BUDGET = {"clone_depth": (0, 16), "clone_insns": (1, 100_000)}
"""A region's predicated-call budget keys and their ranges (docs/contracts.md)."""

_ABSOLUTE = re.compile(r"0[xX][0-9a-fA-F]+")
_SYMBOLIC = re.compile(
    r"(?:(?P<lib>[^:\s+]+):)?(?P<sym>[A-Za-z_.$][A-Za-z0-9_.$@]*)"
    r"(?:\s*\+\s*(?P<off>0[xX][0-9a-fA-F]+|[0-9]+))?"
)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

ADDRESS_HELP = "write symbol+offset (main+0x12), 0xADDR, or library.so:symbol+offset"


def parse_location(text: str) -> Location | str:
    """Parse ``symbol+offset``, ``0xADDR`` or ``lib.so:symbol+offset``; a str is an error."""
    s = text.strip()
    if not s:
        return f"empty address: {ADDRESS_HELP}"
    if _ABSOLUTE.fullmatch(s):
        address = _number(s)
        if address is None:
            return "bad address: more than 64 bits"
        return Location(absolute=address)
    lib, _, rest = s.rpartition(":")
    if lib and _ABSOLUTE.fullmatch(rest.strip()):
        return (f"bad address {text!r}: an absolute address cannot name a library; "
                "write library.so:symbol+offset")
    m = _SYMBOLIC.fullmatch(s)
    if not m:
        return f"bad address {text!r}: {ADDRESS_HELP}"
    off = m.group("off")
    offset = _number(off) if off else 0
    if offset is None:
        return f"bad address {m.group('sym')}+...: the offset has more than 64 bits"
    return Location(symbol=m.group("sym"), offset=offset, library=m.group("lib"))


def _number(text: str) -> int | None:
    """``0x``-prefixed hex or decimal (leading zeros allowed: ``+00010`` is ten, never
    octal); None above 64 bits (checked on the length first: int() refuses 4300 digits)."""
    hexa = text[:2] in ("0x", "0X")
    digits = text[2:].lstrip("0") if hexa else text.lstrip("0")
    if len(digits) > (16 if hexa else 20):
        return None
    value = int(text, 16) if hexa else int(text, 10)
    return value if value < 1 << 64 else None


def parse_function(text: str) -> Location | str:
    """Parse a function name, optionally ``lib.so:name``; a str is an error."""
    loc = parse_location(text)
    if isinstance(loc, str):
        return loc.replace(ADDRESS_HELP, "write a function name (or library.so:name)")
    if loc.absolute is not None or loc.offset:
        return (f"{text!r} is an address; write the function's name (or library.so:name): "
                "the function is entered at its symbol")
    return loc


def load(path: str | os.PathLike[str], binary: str | os.PathLike[str] | None = None,
         library_paths: Sequence[str] | None = None) -> Contract:
    """Read, validate and (with ``binary``) bind the contract file at ``path``.

    Raises :class:`ContractError` listing every problem, or :class:`~leakdbt.errors.ElfError`
    if ``binary`` (or a library it needs) is not a usable ELF file.
    """
    spath = os.fspath(path)
    try:
        with open(spath, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ContractError(spath, [(1, "contract", f"cannot read: {e.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ContractError(spath, [(line, "contract", "not UTF-8 text")]) from None
    return loads(text, spath, binary=binary, library_paths=library_paths)


def loads(text: str, path: str = "<contract>", binary: str | os.PathLike[str] | None = None,
          library_paths: Sequence[str] | None = None) -> Contract:
    """Validate contract ``text`` (read from ``path``, used in messages); bind if ``binary``."""
    doc = parse_toml(text, path, ContractError)
    lines = key_lines(text)
    validator = _Validator(lines)
    contract = validator.contract(doc, path)
    problems = validator.problems
    if binary is not None:
        # Bind what validated even when other keys are wrong: all errors at once.
        shown = {display(k): v for k, v in lines.items()}
        binding, unresolved = bind_parts(validator.parts, partial(source_line, shown), binary,
                                         library_paths)
        problems = problems + unresolved
        if contract is not None:
            contract = dataclasses.replace(contract, binding=binding)
    if problems or contract is None:
        raise ContractError(path, sorted(problems, key=lambda p: p[0]))
    return contract


_TYPE_NAMES: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "a boolean"),  # before int: a bool is an int
    (int, "an integer"),
    (float, "a float"),
    (str, "a string"),
    (list, "an array"),
    (dict, "a table"),
    ((datetime.date, datetime.time), "a date or time"),
)


def _type_name(value: object) -> str:
    return next((name for kind, name in _TYPE_NAMES if isinstance(value, kind)),
                type(value).__name__)


class _Validator:
    """Walks the parsed document, records problems, and builds the model where it can."""

    def __init__(self, lines: dict[KeyPath, int]) -> None:
        self.lines = lines
        self.problems: list[tuple[int, str, str]] = []
        # entries that validated, with their index, for binding despite other mistakes
        self.parts = ContractParts([], [], [])

    # -- reporting ---------------------------------------------------------------------------

    def error(self, path: KeyPath, message: str) -> None:
        self.problems.append((line_of(self.lines, path), display(path), message))

    def missing(self, table: KeyPath, key: str, why: str) -> None:
        self.problems.append((line_of(self.lines, table), display((*table, key)),
                              f"missing: {why}"))

    def unknown_keys(self, table: dict[str, Any], path: KeyPath,
                     allowed: Sequence[str]) -> None:
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else (
                    f" (allowed here: {', '.join(allowed)})")
                self.error((*path, key), f"unknown key{hint}")

    # -- typed getters: None when absent or wrong (the problem is recorded) -------------------

    def get_str(self, table: dict[str, Any], key: str, path: KeyPath,
                required: str | None = None) -> str | None:
        if key not in table:
            if required:
                self.missing(path, key, required)
            return None
        value = table[key]
        if not isinstance(value, str):
            self.error((*path, key), f"expected a string, got {_type_name(value)}")
            return None
        return value

    def get_int(self, table: dict[str, Any], key: str, path: KeyPath, low: int,
                high: int | None = None, required: str | None = None) -> int | None:
        if key not in table:
            if required:
                self.missing(path, key, required)
            return None
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int):
            self.error((*path, key), f"expected an integer, got {_type_name(value)}")
            return None
        if value < low or (high is not None and value > high):
            span = f"at least {low}" if high is None else f"between {low} and {high}"
            self.error((*path, key), f"must be {span}, got {value}")
            return None
        return value

    def get_enum(self, table: dict[str, Any], key: str, path: KeyPath, kind: type[E],
                 required: str | None = None) -> E | None:
        text = self.get_str(table, key, path, required)
        if text is None:
            return None
        for member in kind:
            if member.value == text:
                return member
        choices = ", ".join(str(m.value) for m in kind)
        self.error((*path, key), f"must be one of {choices}; got {text!r}")
        return None

    def get_str_list(self, table: dict[str, Any], key: str, path: KeyPath) -> list[str] | None:
        if key not in table:
            return None
        value = table[key]
        if not isinstance(value, list):
            self.error((*path, key), f"expected an array of strings, got {_type_name(value)}")
            return None
        good = True
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.error((*path, key, i), f"expected a string, got {_type_name(item)}")
                good = False
        return value if good else None

    def get_table(self, table: dict[str, Any], key: str, path: KeyPath,
                  required: str | None = None) -> dict[str, Any] | None:
        if key not in table:
            if required:
                self.missing(path, key, required)
            return None
        value = table[key]
        if not isinstance(value, dict):
            self.error((*path, key), f"expected a table [{display((*path, key))}], "
                                     f"got {_type_name(value)}")
            return None
        return value

    def get_table_array(self, table: dict[str, Any], key: str,
                        path: KeyPath) -> list[dict[str, Any]] | None:
        if key not in table:
            return None
        value = table[key]
        header = display((*path, key))
        if isinstance(value, dict):
            self.error((*path, key), f"expected an array of tables: write [[{header}]] "
                                     "with two brackets")
            return None
        if not isinstance(value, list):
            self.error((*path, key), f"expected an array of tables [[{header}]], "
                                     f"got {_type_name(value)}")
            return None
        good = []
        for i, item in enumerate(value):
            if isinstance(item, dict):
                good.append(item)
            else:
                self.error((*path, key, i), f"expected a table, got {_type_name(item)}")
        return good if len(good) == len(value) else None

    def get_location(self, table: dict[str, Any], key: str, path: KeyPath,
                     required: str | None = None, function: bool = False) -> Location | None:
        text = self.get_str(table, key, path, required)
        if text is None:
            return None
        loc = parse_function(text) if function else parse_location(text)
        if isinstance(loc, str):
            self.error((*path, key), loc)
            return None
        return loc

    # -- the document ------------------------------------------------------------------------

    def contract(self, doc: dict[str, Any], path: str) -> Contract | None:
        root: KeyPath = ()
        self.unknown_keys(doc, root, ("version", "description", "secret", "protect", "check"))
        version = self.get_int(doc, "version", root, 0,
                               required=f"write version = {CONTRACT_VERSION} at the top")
        if version is not None and version != CONTRACT_VERSION:
            self.error(("version",), f"unsupported contract version {version}; "
                                     f"this leakdbt reads version {CONTRACT_VERSION}")
        description = self.get_str(doc, "description", root) or ""

        secrets: list[tuple[int, Secret]] = []
        raw_secrets = self.get_table_array(doc, "secret", root)
        if "secret" not in doc or raw_secrets == []:
            self.missing(root, "secret", "a contract must say what is secret: "
                                         "add at least one [[secret]]")
        for i, tbl in enumerate(raw_secrets or []):
            secret = self.secret(tbl, ("secret", i))
            if secret is not None:
                secrets.append((i, secret))
        self.parts.secrets = secrets
        self.check_secrets_together(secrets)

        protect_tbl = self.get_table(doc, "protect", root,
                                     required="add a [protect] table with an adversary")
        protect = self.protect(protect_tbl) if protect_tbl is not None else None

        check_tbl = self.get_table(doc, "check", root)
        check = self.check(check_tbl if check_tbl is not None else {}, secrets)

        if self.problems or protect is None or check is None:
            return None
        return Contract(
            secrets=tuple(s for _, s in secrets), protect=protect, check=check,
            version=CONTRACT_VERSION, description=description, path=path,
            lines=MappingProxyType({display(k): v for k, v in self.lines.items()}),
        )

    def secret(self, tbl: dict[str, Any], path: KeyPath) -> Secret | None:
        self.unknown_keys(tbl, path, ("name", *SOURCE_KEYS, "function", "offset", "length",
                                      "format", "why"))
        bad = len(self.problems)
        name = self.get_str(tbl, "name", path, required="every secret needs a name")
        if name is not None and not _NAME.fullmatch(name):
            self.error((*path, "name"), f"bad name {name!r}: use letters, digits, _ . -, "
                                        "starting with a letter or _")
            name = None
        why = self.get_str(tbl, "why", path) or ""

        kinds = [k for k in SOURCE_KEYS if k in tbl]
        if not kinds:
            self.error(path, "missing where the secret enters: give one of "
                             + ", ".join(SOURCE_KEYS))
            return None
        for extra in kinds[1:]:
            self.error((*path, extra), f"a secret enters in one place only: this one already "
                                       f"has {kinds[0]}")
        kind = kinds[0]

        if "function" in tbl and kind not in ("register", "pointer"):
            self.error((*path, "function"), "function applies only to register and pointer "
                                            "secrets")
        if "offset" in tbl and kind not in ("stdin", "file"):
            hint = ' (write symbol = "name+offset")' if kind == "symbol" else ""
            self.error((*path, "offset"), f"offset applies only to stdin and file secrets{hint}")

        source = self.source(tbl, path, kind)
        length = self.length(tbl, path, kind)
        fmt = self.format(tbl, path, kind)
        if len(self.problems) > bad or None in (name, source, length, fmt):
            return None
        assert name is not None and source is not None and length is not None
        assert fmt is not None
        return Secret(name=name, source=source, length=length, format=fmt, why=why)

    def source(self, tbl: dict[str, Any], path: KeyPath, kind: str) -> Source | None:
        if kind == "argv":
            index = self.get_int(tbl, "argv", path, 1, 4096)
            return ArgvSource(index) if index is not None else None
        if kind == "stdin":
            value = tbl["stdin"]
            if value is not True:
                msg = ("stdin = false says nothing: remove it, or write stdin = true"
                       if value is False else f"expected true, got {_type_name(value)}")
                self.error((*path, "stdin"), msg)
                return None
            offset = self.get_int(tbl, "offset", path, 0, MAX_INPUT_LENGTH)
            return StdinSource(offset or 0)
        if kind == "file":
            file = self.get_str(tbl, "file", path)
            if file is not None and (not file or "\0" in file):
                self.error((*path, "file"), "must be a non-empty path without NUL bytes")
                file = None
            offset = self.get_int(tbl, "offset", path, 0, MAX_INPUT_LENGTH)
            return FileSource(file, offset or 0) if file is not None else None
        if kind == "env":
            name = self.get_str(tbl, "env", path)
            if name is not None and not _ENV_NAME.fullmatch(name):
                self.error((*path, "env"), f"bad environment variable name {name!r}")
                return None
            return EnvSource(name) if name is not None else None
        if kind in ("register", "pointer"):
            reg = self.get_str(tbl, kind, path)
            if reg is not None:
                reg = reg.lower()
                allowed = GENERAL_REGISTERS + (VECTOR_REGISTERS if kind == "register" else ())
                if reg not in allowed:
                    what = ("a 64-bit general register (rdi, rsi, rdx, rcx, r8, r9, …) or "
                            "xmm0–xmm15") if kind == "register" else (
                            "a 64-bit general register (rdi, rsi, rdx, rcx, r8, r9, …)")
                    self.error((*path, kind), f"unknown register {reg!r}: use {what}")
                    reg = None
            function = self.get_location(
                tbl, "function", path, function=True,
                required=f"a {kind} secret needs the function at whose entry it is read")
            if reg is None or function is None:
                return None
            cls = RegisterSource if kind == "register" else PointerSource
            return cls(function=function, register=reg)
        loc = self.get_location(tbl, "symbol", path)
        return SymbolSource(loc) if loc is not None else None

    def length(self, tbl: dict[str, Any], path: KeyPath, kind: str) -> int | None:
        if kind == "register":
            reg = str(tbl.get("register", "")).lower()
            width = 16 if reg.startswith("xmm") else 8
            length = self.get_int(tbl, "length", path, 1, width)
            return width if length is None and "length" not in tbl else length
        high = MAX_STRING_SECRET if kind in ("argv", "env") else MAX_INPUT_LENGTH
        return self.get_int(tbl, "length", path, 1, high,
                            required="how many bytes of secret (trial values are this long)")

    def format(self, tbl: dict[str, Any], path: KeyPath, kind: str) -> ValueFormat | None:
        if "format" not in tbl:
            return ValueFormat.HEX if kind in ("argv", "env") else ValueFormat.RAW
        fmt = self.get_enum(tbl, "format", path, ValueFormat)
        if fmt is None:
            return None
        if kind in ("argv", "env") and fmt is ValueFormat.RAW:
            self.error((*path, "format"), f"{kind} strings cannot hold arbitrary bytes "
                                          "(a NUL ends them): use hex or decimal")
            return None
        if kind in ("register", "pointer", "symbol") and fmt is not ValueFormat.RAW:
            self.error((*path, "format"), f"format applies to program inputs (argv, stdin, "
                                          f"file, env); a {kind} secret is written as raw bytes")
            return None
        return fmt

    def check_secrets_together(self, secrets: list[tuple[int, Secret]]) -> None:
        """Names unique; no two secrets claim the same argv slot, variable, register or bytes."""
        names: dict[str, int] = {}
        slots: dict[tuple[str, str], int] = {}
        ranges: dict[str, list[tuple[int, int, int]]] = {}
        for i, secret in secrets:
            path: KeyPath = ("secret", i)
            if secret.name in names:
                self.error((*path, "name"), f"secret {secret.name!r} is already defined "
                                            f"(secret[{names[secret.name]}])")
            names.setdefault(secret.name, i)
            src = secret.source
            key, slot = "", ""
            if isinstance(src, ArgvSource):
                key, slot = "argv", str(src.index)
            elif isinstance(src, EnvSource):
                key, slot = "env", src.name
            elif isinstance(src, RegisterSource | PointerSource):
                key = "register" if isinstance(src, RegisterSource) else "pointer"
                slot = f"{src.function}:{src.register}"
            elif isinstance(src, SymbolSource):
                key, slot = "symbol", str(src.symbol)
            if key:
                kind = "register" if key == "pointer" else key
                if (kind, slot) in slots:
                    self.error((*path, key), f"already secret[{slots[kind, slot]}]")
                slots.setdefault((kind, slot), i)
            if isinstance(src, StdinSource | FileSource):
                where = "stdin" if isinstance(src, StdinSource) else f"file:{src.path}"
                start, end = src.offset, src.offset + secret.length
                for other_start, other_end, other in ranges.get(where, []):
                    if start < other_end and other_start < end:
                        self.error((*path, where.split(":")[0]),
                                   f"bytes {start}..{end - 1} overlap secret[{other}] "
                                   f"(bytes {other_start}..{other_end - 1})")
                ranges.setdefault(where, []).append((start, end, i))

    def protect(self, tbl: dict[str, Any]) -> Protect | None:
        path: KeyPath = ("protect",)
        self.unknown_keys(tbl, path, ("adversary", "policy", "functions", "region",
                                      "passes_off"))
        bad = len(self.problems)
        adversary = self.get_enum(tbl, "adversary", path, Adversary,
                                  required="whom to fear: remote, co-resident or same-core")
        policy = self.get_enum(tbl, "policy", path, Policy) or Policy.ALWAYS
        functions: list[Location] = []
        names = self.get_str_list(tbl, "functions", path)
        for i, text in enumerate(names or []):
            loc = parse_function(text)
            if isinstance(loc, str):
                self.error((*path, "functions", i), loc)
            elif loc in functions:
                self.error((*path, "functions", i), f"{text!r} is listed twice")
            else:
                functions.append(loc)
                self.parts.functions.append((i, loc))
        regions: list[Region] = []
        seen: dict[Location, int] = {}
        for i, rtbl in enumerate(self.get_table_array(tbl, "region", path) or []):
            region = self.region(rtbl, (*path, "region", i))
            if region is None:
                continue
            if region.at in seen:
                self.error((*path, "region", i, "at"),
                           f"the block at {region.at} is already protect.region[{seen[region.at]}]")
            seen.setdefault(region.at, i)
            regions.append(region)
            self.parts.regions.append((i, region))
        passes_off = self.passes_off(tbl, path)
        if len(self.problems) > bad or adversary is None:
            return None
        return Protect(adversary=adversary, policy=policy, functions=tuple(functions),
                       regions=tuple(regions), passes_off=passes_off)

    def passes_off(self, tbl: dict[str, Any], path: KeyPath) -> tuple[str, ...]:
        """``protect.passes_off``: names of passes the mapping can select, each once."""
        names: list[str] = []
        for i, name in enumerate(self.get_str_list(tbl, "passes_off", path) or []):
            if name not in PASS_KIND:
                close = difflib.get_close_matches(name, list(PASS_KIND), n=1)
                hint = f"did you mean {close[0]!r}?" if close else \
                    f"known: {', '.join(PASS_KIND)}"
                self.error((*path, "passes_off", i), f"no pass is named {name!r} ({hint})")
            elif name in names:
                self.error((*path, "passes_off", i), f"{name!r} is listed twice")
            else:
                names.append(name)
        return tuple(names)

    def region(self, tbl: dict[str, Any], path: KeyPath) -> Region | None:
        self.unknown_keys(tbl, path, ("at", "kind", "symbol", "length", "bound",
                                      "inner_bounds", "why", *CLONE_BUDGET, "public"))
        bad = len(self.problems)
        at = self.get_location(tbl, "at", path, required="the block where the region starts")
        kind = self.get_enum(tbl, "kind", path, RegionKind)
        why = self.get_str(tbl, "why", path) or ""
        table: TableBounds | None = None
        if kind is RegionKind.TABLE:
            symbol = self.get_location(tbl, "symbol", path)
            length = self.get_int(tbl, "length", path, 1, MAX_INPUT_LENGTH)
            if "length" in tbl and "symbol" not in tbl:
                self.error((*path, "length"), "length needs symbol: where the table starts")
            table = TableBounds(symbol, length) if symbol is not None else None
        else:
            for key in ("symbol", "length"):
                if key in tbl:
                    self.error((*path, key), f'{key} gives a table\'s bounds: it needs '
                                             f'kind = "table"')
        bound = None
        if kind is RegionKind.LOOP:
            bound = self.loop_bound(tbl, path)
        elif "bound" in tbl:
            self.error((*path, "bound"), 'bound is a loop\'s maximum trip count: it needs '
                                         'kind = "loop"')
        inner = self.inner_bounds(tbl, path, at) if kind is RegionKind.LOOP else ()
        if "inner_bounds" in tbl and kind is not RegionKind.LOOP:
            self.error((*path, "inner_bounds"), "inner_bounds gives the bounds of a loop's "
                                                'inner loops: it needs kind = "loop"')
        budget = self.clone_budget(tbl, path, kind)
        public = self.public(tbl, path, kind)
        if len(self.problems) > bad or at is None:
            return None
        return Region(at=at, kind=kind, table=table, bound=bound, inner_bounds=inner, why=why,
                      public=public, **budget)

    def loop_bound(self, tbl: dict[str, Any], path: KeyPath) -> int | str | None:
        """``bound = N`` (N >= 1), or a run-time bound ``bound = "END - START"``
        (leakdbt/contract/bound.py, checked here and kept as written)."""
        if not isinstance(tbl.get("bound"), str):
            return self.get_int(tbl, "bound", path, 1)
        parsed = parse_bound(tbl["bound"])
        if isinstance(parsed, str):
            self.error((*path, "bound"), parsed)
            return None
        return str(parsed)

    def inner_bounds(self, tbl: dict[str, Any], path: KeyPath, at: Location | None
                     ) -> tuple[tuple[Location, int], ...]:
        """``inner_bounds = { "f+0x60" = 8 }``: each inner loop's header, written like
        ``at`` (the same symbol, or both absolute), and its bound (docs/contracts.md)."""
        out: list[tuple[Location, int]] = []
        table = self.get_table(tbl, "inner_bounds", path)
        for text in table or {}:
            key = (*path, "inner_bounds", text)
            loc = parse_location(text)
            bound = self.get_int(table or {}, text, (*path, "inner_bounds"), 1, MAX_LOOP_BOUND)
            if isinstance(loc, str):
                self.error(key, loc)
                continue
            if at is None or bound is None:
                continue
            offset = header_offset(at, loc)
            if offset is None:
                like = "an absolute address" if at.absolute is not None else \
                    f"{Location(at.symbol, 0, None, at.library)} plus an offset"
                self.error(key, f"an inner loop's header is written like at ({at}): {like}")
            elif offset == 0:
                self.error(key, "that is the region's own header: its bound is bound")
            elif loc in (h for h, _ in out):
                self.error(key, f"the header {loc} is named twice")
            else:
                out.append((loc, bound))
        return tuple(out)

    def clone_budget(self, tbl: dict[str, Any], path: KeyPath, kind: RegionKind | None
                     ) -> dict[str, int | None]:
        """``clone_depth`` and ``clone_insns``: the predicated-call budget of a branch
        region (or one without a kind), docs/passes.md "Predicated calls"."""
        budget: dict[str, int | None] = {}
        for key, (low, high) in CLONE_BUDGET.items():
            if key in tbl and kind not in (None, RegionKind.BRANCH):
                self.error((*path, key), f"{key} is the budget of the calls if-conversion "
                                         'clones: it needs kind = "branch" (or no kind)')
                continue
            budget[key] = self.get_int(tbl, key, path, low, high)
        return budget

    def public(self, tbl: dict[str, Any], path: KeyPath, kind: RegionKind | None
               ) -> tuple[str, ...]:
        """``public = ["rdx", ...]``: the general registers whose values at the entry of a
        branch region (or one without a kind) depend on no secret — an assertion, like a
        run-time bound, that ``check`` tests (docs/contracts.md); in GENERAL_REGISTERS
        order, so the order written does not matter."""
        if "public" in tbl and kind not in (None, RegionKind.BRANCH):
            self.error((*path, "public"), "public lists the registers public at the entry "
                                          "of a region whose callees if-conversion clones: "
                                          'it needs kind = "branch" (or no kind)')
            return ()
        names: list[str] = []
        for i, text in enumerate(self.get_str_list(tbl, "public", path) or []):
            reg = text.lower()
            if reg == "rsp":
                self.error((*path, "public", i), "rsp is always public: leave it out")
            elif reg not in GENERAL_REGISTERS:
                self.error((*path, "public", i),
                           f"unknown register {text!r}: use a 64-bit general register other "
                           f"than rsp ({', '.join(GENERAL_REGISTERS)})")
            elif reg in names:
                self.error((*path, "public", i), f"{text!r} is listed twice")
            else:
                names.append(reg)
        return tuple(r for r in GENERAL_REGISTERS if r in names)

    def check(self, tbl: dict[str, Any], secrets: list[tuple[int, Secret]]) -> Check | None:
        path: KeyPath = ("check",)
        self.unknown_keys(tbl, path, ("trials", "seed", "args", "stdin", "env", "declassify",
                                      "declassify_at", "values"))
        bad = len(self.problems)
        trials = self.get_int(tbl, "trials", path, 2, MAX_TRIALS)
        seed = self.get_int(tbl, "seed", path, 0, (1 << 64) - 1)
        args = self.get_str_list(tbl, "args", path) or []
        for i, arg in enumerate(args):
            if "\0" in arg:
                self.error((*path, "args", i), "an argument cannot contain a NUL byte")
        stdin = self.get_str(tbl, "stdin", path)
        env: dict[str, str] = {}
        env_tbl = self.get_table(tbl, "env", path)
        for name, value in (env_tbl or {}).items():
            if not _ENV_NAME.fullmatch(name):
                self.error((*path, "env", name), f"bad environment variable name {name!r}")
            elif not isinstance(value, str):
                self.error((*path, "env", name), f"expected a string, got {_type_name(value)}")
            else:
                env[name] = value
        declassify: list[Output] = []
        for i, text in enumerate(self.get_str_list(tbl, "declassify", path) or []):
            out = next((o for o in Output if o.value == text), None)
            if out is None:
                choices = ", ".join(o.value for o in Output)
                self.error((*path, "declassify", i), f"must be one of {choices}; got {text!r}")
            elif out in declassify:
                self.error((*path, "declassify", i), f"{text!r} is listed twice")
            else:
                declassify.append(out)
        points = [self.declassify_point(item, (*path, "declassify_at", i))
                  for i, item in enumerate(self.get_table_array(tbl, "declassify_at", path)
                                           or [])]
        names = [p.name for p in points if p is not None]
        for i, p in enumerate(points):
            if p is not None and names.count(p.name) > 1:
                self.error((*path, "declassify_at", i, "name"),
                           f"{p.name!r} names two declassification points")

        values: list[tuple[str, tuple[bytes, ...]]] = []
        by_name = {secret.name: secret for _, secret in secrets}
        for name in (self.get_table(tbl, "values", path) or {}):
            where = (*path, "values", name)
            secret = by_name.get(name)
            texts = self.get_str_list(tbl["values"], name, (*path, "values"))
            if secret is None:
                self.error(where, f"no secret is called {name!r}")
            elif texts is not None:
                parsed = []
                for i, text in enumerate(texts):
                    try:
                        parsed.append(secret.parse(text))
                    except ValueError as e:
                        self.error((*where, i), f"{text!r} is not a value of {name} "
                                                f"({secret.format.value}): {e}")
                values.append((name, tuple(parsed)))

        # Secrets against public inputs.
        argv_secret: dict[int, int] = {}
        for i, secret in secrets:
            src = secret.source
            if isinstance(src, ArgvSource):
                argv_secret.setdefault(src.index, i)
            elif isinstance(src, EnvSource) and src.name in env:
                self.error(("secret", i, "env"), f"{src.name} also has a public value in "
                                                 "check.env")
        for index, i in sorted(argv_secret.items()):
            gap = next((k for k in range(len(args) + 1, index) if k not in argv_secret), None)
            if gap is not None:
                self.error(("secret", i, "argv"),
                           f"argv[{index}] would follow a missing argv[{gap}]: give the public "
                           f"arguments in check.args (it has {len(args)}) or make "
                           f"argv[{gap}] secret too")
        if len(self.problems) > bad:
            return None
        defaults = Check()
        return Check(
            trials=defaults.trials if trials is None else trials,
            seed=defaults.seed if seed is None else seed,
            args=tuple(args), stdin=stdin, env=tuple(sorted(env.items())),
            declassify=tuple(declassify), values=tuple(values),
            declassify_at=tuple(p for p in points if p is not None),
        )

    def declassify_point(self, tbl: dict[str, Any], path: KeyPath) -> DeclassifyPoint | None:
        """One ``[[check.declassify_at]]``: name, at, register or pointer, length, when."""
        self.unknown_keys(tbl, path, ("name", "at", "register", "pointer", "length", "when",
                                      "why"))
        bad = len(self.problems)
        name = self.get_str(tbl, "name", path, required="name the declassified value")
        when = self.get_enum(tbl, "when", path, DeclassifyWhen) or DeclassifyWhen.REACHED
        at = self.get_location(tbl, "at", path, function=when is DeclassifyWhen.RETURN,
                               required="give the code location where the value is read")
        kinds = [k for k in ("register", "pointer") if k in tbl]
        if len(kinds) != 1:
            self.error(path, "give exactly one of register (its value) or pointer (the bytes "
                             "it points to)")
            return None
        reg = (self.get_str(tbl, kinds[0], path) or "").lower()
        if reg and reg not in GENERAL_REGISTERS:
            self.error((*path, kinds[0]), f"unknown register {reg!r}: use a 64-bit general "
                                          "register (rax, rdi, rsi, …)")
        limit = 8 if kinds[0] == "register" else MAX_DECLASSIFIED
        length = self.get_int(tbl, "length", path, 1, limit)
        if len(self.problems) > bad or name is None or at is None:
            return None
        return DeclassifyPoint(name, at, reg if kinds[0] == "register" else None,
                               reg if kinds[0] == "pointer" else None,
                               8 if length is None else length, when)
