"""The security contract as immutable objects: what is secret, whom to fear, how strict to be.

These classes are what the rest of leakdbt reads; :mod:`leakdbt.contract.load` builds them
from TOML (format described in docs/contracts.md) and :mod:`leakdbt.contract.resolve` binds
their code locations to a binary.  Everything is frozen and hashable, so a contract can be
part of a translation-cache key.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

CONTRACT_VERSION = 1
"""The only contract format version this leakdbt reads (the top-level ``version`` key)."""


class Adversary(enum.Enum):
    """Whom the program must be protected from (``protect.adversary``)."""

    REMOTE = "remote"  # measures total time from afar (network, another VM's request)
    CO_RESIDENT = "co-resident"  # runs on the same machine: shares the last-level cache
    SAME_CORE = "same-core"  # SMT sibling, or time-sliced on the same core


class Policy(enum.Enum):
    """When hardened code runs (``protect.policy``)."""

    ALWAYS = "always"  # every protected block runs hardened
    ADAPTIVE = "adaptive"  # hardened while the monitor detects the adversary, fast otherwise
    NEVER = "never"  # nothing hardened: a baseline for measurements


class ValueFormat(enum.Enum):
    """How a trial value of a secret is written into a program input."""

    HEX = "hex"  # lowercase hexadecimal, two digits per byte
    DECIMAL = "decimal"  # unsigned decimal, zero-padded to the width of the largest value
    RAW = "raw"  # the bytes themselves


class RegionKind(enum.Enum):
    """What a protected block does with the secret; selects the hardening passes."""

    BRANCH = "branch"  # a conditional branch on a secret
    TABLE = "table"  # a memory access whose address depends on a secret
    DIVIDE = "divide"  # an integer division with a secret operand
    LOOP = "loop"  # a loop whose trip count depends on a secret
    FLOAT = "float"  # floating-point arithmetic on secrets
    FUNCTION = "function"  # a whole function that has a constant-time equivalent


class Output(enum.Enum):
    """A program output that ``check.declassify`` allows to depend on the secrets."""

    STDOUT = "stdout"
    STDERR = "stderr"
    EXIT_STATUS = "exit-status"
    FILES = "files"  # contents of files the program writes


class DeclassifyWhen(enum.Enum):
    """When a declassification point reads its value (``[[check.declassify_at]]``)."""

    REACHED = "reached"  # each time the instruction at ``at`` is about to run
    RETURN = "return"  # each time the function entered at ``at`` returns


GENERAL_REGISTERS = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
)  # fmt: skip
"""Registers that may hold a secret or point to one (``rsp`` may not)."""
VECTOR_REGISTERS = tuple(f"xmm{i}" for i in range(16))
"""Registers that may hold a secret value (floating-point arguments)."""


@dataclass(frozen=True)
class Location:
    """A code or data address: ``symbol``, ``symbol+offset``, ``0xADDR`` or ``lib.so:symbol+off``.

    Exactly one of ``symbol`` and ``absolute`` is set; ``library`` only with ``symbol``.
    """

    symbol: str | None = None
    offset: int = 0
    absolute: int | None = None
    library: str | None = None

    def __str__(self) -> str:
        if self.absolute is not None:
            return f"{self.absolute:#x}"
        text = f"{self.library}:" if self.library else ""
        text += self.symbol or ""
        return text + (f"+{self.offset:#x}" if self.offset else "")


# Where a secret enters the program.  One class per kind, each with a one-line description.


@dataclass(frozen=True)
class ArgvSource:
    """Command-line argument ``argv[index]`` (1 is the first argument)."""

    index: int

    def describe(self) -> str:
        return f"argv[{self.index}]"


@dataclass(frozen=True)
class StdinSource:
    """Bytes of standard input starting at ``offset``."""

    offset: int = 0

    def describe(self) -> str:
        return f"standard input at offset {self.offset}"


@dataclass(frozen=True)
class FileSource:
    """Bytes of the file ``path`` (as the program names it) starting at ``offset``."""

    path: str
    offset: int = 0

    def describe(self) -> str:
        return f"file {self.path!r} at offset {self.offset}"


@dataclass(frozen=True)
class EnvSource:
    """The value of environment variable ``name``."""

    name: str

    def describe(self) -> str:
        return f"environment variable {self.name}"


@dataclass(frozen=True)
class RegisterSource:
    """The value of ``register`` each time ``function`` is entered (an argument)."""

    function: Location
    register: str

    def describe(self) -> str:
        return f"register {self.register} at entry of {self.function}"


@dataclass(frozen=True)
class PointerSource:
    """The buffer ``register`` points to each time ``function`` is entered."""

    function: Location
    register: str

    def describe(self) -> str:
        return f"buffer pointed to by {self.register} at entry of {self.function}"


@dataclass(frozen=True)
class SymbolSource:
    """A global object in the binary or a library, from program start."""

    symbol: Location

    def describe(self) -> str:
        return f"global object {self.symbol}"


Source = (
    ArgvSource | StdinSource | FileSource | EnvSource | RegisterSource | PointerSource
    | SymbolSource
)
SOURCE_KEYS: tuple[str, ...] = ("argv", "stdin", "file", "env", "register", "pointer", "symbol")
"""The keys of a ``[[secret]]`` that say where it enters; exactly one must be present."""


@dataclass(frozen=True)
class Secret:
    """One ``[[secret]]``: a named value, where it enters, and how trial values look."""

    name: str
    source: Source
    length: int  # bytes of secret (the trial values are this many random bytes)
    format: ValueFormat
    why: str = ""

    @property
    def is_input(self) -> bool:
        """True for program inputs (argv, stdin, file, env), False for memory and registers."""
        return isinstance(self.source, ArgvSource | StdinSource | FileSource | EnvSource)

    def parse(self, text: str) -> bytes:
        """A value written as :meth:`render` writes it, back as ``length`` raw bytes
        (ValueError with the reason when it is not one)."""
        if self.format is ValueFormat.HEX:
            if len(text) != 2 * self.length:
                raise ValueError(f"expected {2 * self.length} hexadecimal digits, got "
                                 f"{len(text)}")
            return bytes.fromhex(text)
        if self.format is ValueFormat.DECIMAL:
            if not text.isdigit() or int(text) >= 256 ** self.length:
                raise ValueError(f"expected a decimal number below 256**{self.length}")
            return int(text).to_bytes(self.length, "little")
        raw = text.encode("latin-1")
        if len(raw) != self.length:
            raise ValueError(f"expected {self.length} characters, got {len(raw)}")
        return raw

    def render(self, value: bytes) -> bytes:
        """A trial value (``length`` random bytes) as it is written into the program.

        hex: two lowercase digits per byte, in order; decimal: the bytes as an unsigned
        little-endian integer, zero-padded to the width of the largest such value, so every
        trial has the same length; raw: the bytes themselves.
        """
        if len(value) != self.length:
            raise ValueError(f"secret {self.name} takes {self.length} bytes, got {len(value)}")
        if self.format is ValueFormat.HEX:
            return value.hex().encode()
        if self.format is ValueFormat.DECIMAL:
            width = len(str(256 ** self.length - 1))
            return str(int.from_bytes(value, "little")).zfill(width).encode()
        return value

    def describe(self) -> str:
        size = f"{self.length} byte{'s' if self.length != 1 else ''}"
        if not self.is_input:
            return f"{self.source.describe()}, {size}"
        how = "raw bytes" if self.format is ValueFormat.RAW else self.format.value
        return f"{self.source.describe()}, {size}, written as {how}"


@dataclass(frozen=True)
class TableBounds:
    """The table a ``kind = "table"`` region indexes: a symbol and/or a byte length."""

    symbol: Location | None = None
    length: int | None = None


@dataclass(frozen=True)
class Region:
    """One ``[[protect.region]]``: a block to rewrite, named by where it starts."""

    at: Location
    kind: RegionKind | None = None  # None: the translator classifies the block's instructions
    table: TableBounds | None = None  # only for kind = table
    # only for kind = loop: the public maximum trip count, or a run-time bound (bound.py)
    bound: int | str | None = None
    # kind = loop: each inner loop's header (written like ``at``) and its bound
    inner_bounds: tuple[tuple[Location, int], ...] = ()
    clone_depth: int | None = None  # branch (or no kind): calls cloned, nesting (None: 2)
    clone_insns: int | None = None  # ... instructions of all clones together (None: 1000)
    # branch (or no kind): GPRs public at the entry, in GENERAL_REGISTERS order (asserted)
    public: tuple[str, ...] = ()
    why: str = ""


def header_offset(at: Location, header: Location) -> int | None:
    """How many bytes ``header`` lies after ``at`` when both are written alike (the same
    library and symbol, or both absolute), else None."""
    if (at.absolute is None) != (header.absolute is None) or at.symbol != header.symbol \
            or at.library != header.library:
        return None
    if at.absolute is not None and header.absolute is not None:
        return header.absolute - at.absolute
    return header.offset - at.offset


def offset_by(at: Location, delta: int) -> Location | None:
    """The location ``delta`` bytes after ``at``, written like it (None: it would lie
    before ``at``'s symbol or address 0)."""
    if at.absolute is not None:
        return Location(absolute=at.absolute + delta) if at.absolute + delta >= 0 else None
    if at.offset + delta < 0:
        return None
    return Location(at.symbol, at.offset + delta, None, at.library)


@dataclass(frozen=True)
class Protect:
    """The ``[protect]`` table: adversary, policy, scope, regions and passes switched off."""

    adversary: Adversary
    policy: Policy = Policy.ALWAYS
    functions: tuple[Location, ...] = ()  # empty: the whole program
    regions: tuple[Region, ...] = ()
    passes_off: tuple[str, ...] = ()  # passes no command applies or suggests (docs/passes.md)


@dataclass(frozen=True)
class DeclassifyPoint:
    """One ``[[check.declassify_at]]``: a value the program may reveal — a register, or
    ``length`` bytes at the address a register holds — read at a code location.  Trials are
    compared only with trials that saw the same values here (docs/checking.md)."""

    name: str
    at: Location
    register: str | None = None  # the value of this register (its low ``length`` bytes)
    pointer: str | None = None  # or the ``length`` bytes this register points to
    length: int = 8
    when: DeclassifyWhen = DeclassifyWhen.REACHED


@dataclass(frozen=True)
class Check:
    """The ``[check]`` table: how leakage checking runs the program."""

    trials: int = 100
    seed: int = 0
    args: tuple[str, ...] = ()  # public argv[1:]; an argv secret replaces or appends its slot
    stdin: str | None = None  # public standard input; stdin secrets overwrite their bytes
    env: tuple[tuple[str, str], ...] = ()  # public environment, sorted by name
    declassify: tuple[Output, ...] = ()  # outputs allowed to depend on the secrets
    declassify_at: tuple[DeclassifyPoint, ...] = ()  # values revealed inside the program
    values: tuple[tuple[str, tuple[bytes, ...]], ...] = ()  # secret -> first trials' values


# What a contract's locations resolve to in a particular binary.


@dataclass(frozen=True)
class FunctionRef:
    """A function symbol of a module, at its link-time address."""

    module: str | None  # None: the main binary; else the library's file name
    name: str
    start: int
    size: int


@dataclass(frozen=True)
class ResolvedAddress:
    """A link-time address inside one module; add that module's load bias at run time."""

    module: str | None  # None: the main binary; else the library's file name (e.g. libc.so.6)
    module_path: str
    address: int
    symbolic: str  # how to print it: ``main+0x12`` or ``libc.so.6:memcpy+0x4``

    def runtime(self, load_bias: int) -> int:
        """The address at run time, for the module mapped at ``load_bias`` (0 if not PIE)."""
        return self.address + load_bias


@dataclass(frozen=True)
class ResolvedSpan:
    """``length`` bytes starting at ``start``."""

    start: ResolvedAddress
    length: int


@dataclass(frozen=True)
class ResolvedRegion:
    """A region bound to a binary: its block start, containing function and table."""

    at: ResolvedAddress
    function: FunctionRef
    table: ResolvedSpan | None = None


@dataclass(frozen=True)
class ResolvedSecret:
    """A secret that lives in code or memory, bound to a binary (None fields when n/a)."""

    function: FunctionRef | None = None  # register and pointer secrets
    span: ResolvedSpan | None = None  # symbol secrets


@dataclass(frozen=True)
class Library:
    """A shared library a contract refers to, as found on disk."""

    name: str  # DT_NEEDED name, e.g. libc.so.6
    path: str


@dataclass(frozen=True)
class Binding:
    """A contract's locations resolved against one binary (and the libraries it loads)."""

    binary: str
    binary_kind: str  # ElfKind value: static, static-pie, dynamic, shared-object
    is_pie: bool
    secrets: tuple[ResolvedSecret | None, ...]  # parallel to Contract.secrets; None for inputs
    functions: tuple[FunctionRef, ...]  # parallel to Protect.functions
    regions: tuple[ResolvedRegion, ...]  # parallel to Protect.regions
    libraries: tuple[Library, ...] = ()


def _no_lines() -> Mapping[str, int]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Contract:
    """A validated security contract, optionally bound to a binary.

    ``path`` and ``lines`` (key path as printed in errors, e.g. ``secret[0].argv`` → line)
    are provenance only: they take no part in equality or hashing.
    """

    secrets: tuple[Secret, ...]
    protect: Protect
    check: Check = Check()
    version: int = CONTRACT_VERSION
    description: str = ""
    binding: Binding | None = None
    path: str = field(default="<contract>", compare=False)
    lines: Mapping[str, int] = field(default_factory=_no_lines, compare=False, hash=False,
                                     repr=False)

    def secret(self, name: str) -> Secret | None:
        """The secret called ``name``, or None."""
        return next((s for s in self.secrets if s.name == name), None)

    def line(self, key: str) -> int:
        """The source line of ``key`` (as printed in errors), or of its nearest parent."""
        return source_line(self.lines, key)


def source_line(lines: Mapping[str, int], key: str) -> int:
    """The line of ``key`` (as printed in errors, e.g. ``secret[0].argv``) or its parent's."""
    while key:
        if key in lines:
            return lines[key]
        cut = max(key.rfind("."), key.rfind("["))
        key = key[:cut] if cut > 0 else ""
    return 1
