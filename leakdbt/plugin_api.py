"""The plugin API for hardening passes and tenancy detectors: the only leakdbt module a
plugin imports.

A pass is a pure function of a region, the contract and the CPU profile (read-only views of
them: :class:`RegionView`, :class:`ContractView`, :class:`ProfileView`): it never touches
the emulator.  It says whether it applies to a region and returns either a :class:`Rewrite`
or a :class:`Refusal` with the reason.  A rewrite is text: lines in Capstone's Intel syntax
that the translator assembles with Keystone, checks with Capstone, and lays out in the code
cache (docs/passes.md).  Three kinds of line besides ordinary instructions:

- ``name:`` defines a local label; branches may go to local labels;
- :func:`original` (``.insn 0xADDR``) stands for the region's instruction at ``0xADDR``:
  relocated, or replaced by another pass's sequence for it — how passes compose (an
  if-converted arm keeps its divisions for the constant-time division pass);
- :func:`goto` (``@0xADDR``) is the runtime address of the original (link-time) ADDR: as a
  branch operand, the only way to leave a whole-region rewrite other than ``ret``; as an
  immediate (``movabs rax, @0x4010``), the address of module data.

Scratch memory.  Sequences may use the stack below the red zone (the ABI's 128 bytes under
RSP stay untouched): per-instruction replacements the :data:`INSN_SCRATCH` bytes directly
below it, whole-region code anything below those.

Run-time bounds.  :func:`allocation_bounds` (``.bounds REG, OFF``) asks the translator for
the guest allocation that contains an address only known when the code runs (a table built
in ``malloc``ed memory): see its docstring.

A pass module exposes its pass as a module-level ``PASS`` (built-ins live in ``plugins/``;
third-party packages register the same object under the ``leakdbt.passes`` entry-point
group).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

from leakdbt.contract.bound import RunTimeBound, parse_bound
from leakdbt.x86.insn import REGS64, Flow, Insn, detail_decoder
from leakdbt.x86.memaccess import memory_access

API_VERSION = 2
"""The version of this interface; a pass declaring another one is rejected at load.  2: passes
get :class:`ContractView` and :class:`ProfileView`, not the contract and profile objects."""

RED_ZONE = 128
"""Bytes below RSP that leaf functions may use without moving RSP; sequences keep out."""
INSN_SCRATCH = 0x200
"""Bytes directly below the red zone that per-instruction replacements may use."""
REGION_SCRATCH = RED_ZONE + INSN_SCRATCH
"""Whole-region code keeps its own scratch at ``[rsp - REGION_SCRATCH - n]`` and below."""

INSN_MARKER = ".insn"
GOTO_MARKER = "@"
BOUNDS_MARKER = ".bounds"

REGISTER64: Mapping[str, str] = REGS64
"""Every general register name (``eax``, ``r9b``, ``ah``, ...) → the 64-bit register it is
part of (``rax``, ``r9``, ``rax``)."""

__all__ = ["API_VERSION", "BOUNDS_MARKER", "DETECTOR_API_VERSION", "SHARES", "BlockView",
           "CoTenant",
           "ContractView", "DataObject", "DetailConstants", "DetectorContext",
           "DetectorFactory", "Flow", "HardeningPass", "INSN_SCRATCH", "Insn", "ProfileView",
           "REGION_SCRATCH", "REGISTER64", "RED_ZONE", "Refusal", "RegionView", "Rewrite",
           "RunTimeBound", "Tenancy", "TenancyDetector", "allocation_bounds", "detail",
           "detail_constants", "goto", "memory_access", "original", "parse_bound"]


def detail(insn: Insn) -> Any:
    """Capstone's detailed decoding of ``insn`` (a ``CsInsn``: operands with sizes and
    access, registers read and written), for passes that need more than :class:`Insn`."""
    for ci in detail_decoder().disasm(insn.raw, insn.address, 1):
        return ci
    raise ValueError(f"cannot decode {insn.raw.hex()} at {insn.address:#x}")


@dataclass(frozen=True)
class DetailConstants:
    """Capstone's x86 constants to read :func:`detail` results with, so that a pass needs
    no Capstone import of its own."""

    op_reg: int  # an operand's ``type``: a register
    op_mem: int  # ... a memory operand
    access_read: int  # bits of an operand's ``access``
    access_write: int
    eflags: Mapping[str, int]  # the ``eflags`` bits, by name without ``X86_EFLAGS_``


@lru_cache(maxsize=1)
def detail_constants() -> DetailConstants:
    """The constants (read once, when first asked: importing Capstone takes time)."""
    from capstone import CS_AC_READ, CS_AC_WRITE, x86

    prefix = "X86_EFLAGS_"
    eflags = {n[len(prefix):]: getattr(x86, n) for n in dir(x86) if n.startswith(prefix)}
    return DetailConstants(x86.X86_OP_REG, x86.X86_OP_MEM, CS_AC_READ, CS_AC_WRITE, eflags)


def original(address: int) -> str:
    """The line that stands for the region's instruction at (link-time) ``address``."""
    return f"{INSN_MARKER} {address:#x}"


def allocation_bounds(register: str, offset: int, mapped: bool = False) -> str:
    """The line that, when it runs, stores the runtime start and the size in bytes of the
    guest memory containing the address in 64-bit ``register`` into the quadwords at
    ``[rsp - offset]`` and ``[rsp - offset + 8]`` (RSP as it is at that line; registers,
    flags and other memory are untouched).  The bounds are those of the live allocation
    that contains the address, learnt from the guest's allocator calls, else of the sized
    ELF data object or the anonymous mapping the guest made that contains it
    (docs/passes.md, "Heap tables").
    Both quadwords are 0 when neither is known, when the bounds exceed the run-time cap
    (64 KiB), or when the code does not run under the emulator; a sequence must then not
    rely on them (and the run reports the access as unhardened).  Translators that cannot
    provide this (``leakdbt harden``, which writes native files) refuse the region.

    ``mapped``: the address is public, the start of a span whose length the sequence knows
    (a value-range table, docs/passes.md "Heap tables"): the bounds are those of the live
    allocation containing it, else of the sized ELF data object, else of the readable guest
    mapping containing it (the stack, a module's segment, any ``mmap``), with no size cap;
    0 and 0 when it is in no readable memory."""
    return f"{BOUNDS_MARKER} {register}, {offset:#x}" + (", mapped" if mapped else "")


def goto(address: int) -> str:
    """The runtime address of link-time ``address``, as a branch operand
    (``f"jmp {goto(a)}"``) or an immediate (``f"movabs rax, {goto(a)}"``)."""
    return f"{GOTO_MARKER}{address:#x}"


@dataclass(frozen=True)
class DataObject:
    """A data object of the region's module (an ELF symbol with a size), link-time."""

    name: str
    address: int
    size: int


@dataclass(frozen=True)
class BlockView:
    """One basic block of a region: its instructions and where control goes after it."""

    start: int
    insns: tuple[Insn, ...]
    successors: tuple[int, ...]  # block starts (or addresses outside the region)

    @property
    def last(self) -> Insn:
        return self.insns[-1]


def _no_object(address: int) -> DataObject | None:
    return None


def _no_function(name: str) -> int | None:
    return None


def _no_callee(address: int) -> tuple[BlockView, ...] | None:
    return None


def _not_resolved(insn: Insn) -> int | str:
    return "only the translator resolves it, while the program runs"


@dataclass(frozen=True)
class RegionView:
    """What a pass sees of a region (link-time addresses of its module).

    ``shape`` is how the translator formed it: ``branch`` (a conditional branch's block up
    to where its paths meet, or up to the returns when they meet only by returning),
    ``loop`` (a natural loop: the header at ``entry`` and every block that reaches a back
    edge to it), ``function`` (every block of the function whose entry is ``entry``) or
    ``block`` (one basic block).
    """

    name: str  # as the contract wrote it, e.g. ``modexp+0x40``
    kind: str | None  # the contract's kind: branch, table, divide, loop, float, or None
    shape: str
    entry: int
    blocks: tuple[BlockView, ...]  # by address
    bias: int = 0  # where the module is loaded: runtime address = link-time + bias
    table: tuple[int, int] | None = None  # a table region's bounds: (address, length)
    params: Mapping[str, int | str | bool] = field(default_factory=dict)  # from the mapping
    object_at: Callable[[int], DataObject | None] = _no_object  # data symbol containing it
    names: tuple[str, ...] = ()  # the function symbols at ``entry`` (aliases included)
    function_address: Callable[[str], int | None] = _no_function  # a function of the module
    callee: Callable[[int], tuple[BlockView, ...] | None] = _no_callee  # see below
    resolve_indirect: Callable[[Insn], int | str] = _not_resolved  # see below

    # ``callee(a)``: the blocks (by address) of the function whose entry is link-time ``a``
    # (a direct call's target, or what ``resolve_indirect`` answered), as the translator
    # decodes it, or None when it cannot decode one there.  Their instructions may appear as
    # ``.insn`` lines of a whole-region rewrite, as often as the rewrite needs them
    # (predicated callee clones).  A function of another module has the address its
    # runtime address minus ``bias``, and so do its instructions: ``.insn``, ``@`` and
    # RIP-relative operands mean the same as for the region's own.
    #
    # ``resolve_indirect(i)``: where the indirect ``jmp``/``call [rip + X]`` ``i`` (of the
    # region or of a callee) goes, when X is a GOT slot: the function the slot is bound to,
    # or (not yet bound: lazy binding) the first definition of the slot's symbol in the
    # loaded modules, as ld.so will bind it; a link-time address as for ``callee``.  A
    # string says why it cannot be resolved (the translator resolves only while the program
    # runs, when the region is first entered).

    def instructions(self) -> list[Insn]:
        """Every instruction of the region, by address."""
        return [i for b in self.blocks for i in b.insns]

    def block(self, start: int) -> BlockView:
        """The block starting at ``start`` (KeyError if it is not one of the region's)."""
        for b in self.blocks:
            if b.start == start:
                return b
        raise KeyError(f"{start:#x} is not a block of {self.name}")

    def exits(self) -> list[int]:
        """Addresses outside the region that control can go to, by address."""
        inside = {b.start for b in self.blocks}
        return sorted({s for b in self.blocks for s in b.successors if s not in inside})


@dataclass(frozen=True)
class ContractView:
    """What a pass sees of the contract: whom it protects against and when hardened code
    runs (``protect.adversary``, ``protect.policy``, as the contract spells them).  What a
    region needs is in :attr:`RegionView.params`, from the contract's mapping."""

    adversary: str  # remote, co-resident, same-core
    policy: str  # always, adaptive, never


@dataclass(frozen=True)
class ProfileView:
    """What a pass sees of the CPU profile the contract was mapped for."""

    name: str  # e.g. intel-skylake
    line_size: int  # cache-line bytes
    variable_latency: frozenset[str] = frozenset()  # latency classes (int-div, fp-subnormal,
    # ...) whose instructions take operand-dependent time on this CPU


@dataclass(frozen=True)
class Refusal:
    """Why a pass does not (or cannot) harden a region; shown to the user as is."""

    reason: str


@dataclass(frozen=True)
class Rewrite:
    """What runs instead of (part of) the region.

    ``replace``: original instruction address → lines that run instead of it; control then
    continues with the next instruction.  ``code``: lines that replace the whole region,
    entered at its entry; they must leave only by ``jmp``/``jcc`` to :func:`goto` addresses
    or by ``ret``, and must include :func:`original` for every instruction some pass
    replaces.  At most one pass may give ``code``; two passes may not replace the same
    instruction.
    """

    replace: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    code: tuple[str, ...] | None = None


@runtime_checkable
class HardeningPass(Protocol):
    """What a pass provides.  ``before``/``after`` name other passes it must run
    before/after (unknown names are ignored: that pass is simply not installed); they alone
    decide the order passes run in (ties: by name)."""

    name: str
    api_version: int
    before: tuple[str, ...]
    after: tuple[str, ...]

    def applies(self, region: RegionView, contract: ContractView, profile: ProfileView
                ) -> bool | Refusal:
        """Whether this pass has work in ``region`` (a Refusal says why it cannot)."""
        ...

    def harden(self, region: RegionView, contract: ContractView, profile: ProfileView
               ) -> Rewrite | Refusal:
        """The hardened replacement for ``region``, or why there is none."""
        ...


# ---------------------------------------------------------------------------------------------
# Tenancy detectors (leakdbt.detectors entry points): who shares which resource with us.

DETECTOR_API_VERSION = 1
"""The version of the detector interface; a detector declaring another is rejected."""

SHARES = ("core", "cache", "machine")
"""What a co-tenant shares with the program, most intimate first: ``core`` — our logical CPU
(time-sliced) or its SMT sibling; ``cache`` — another core that shares our last-level
cache; ``machine`` — anything else on the machine."""


@dataclass(frozen=True)
class CoTenant:
    """Someone who shares a resource with the program, and the evidence for it."""

    shares: str  # one of SHARES
    pid: int = 0  # 0: not a process we can name (e.g. reported by an orchestrator)
    name: str = ""  # command name, VM name, ...
    uid: int = -1
    cpu: int = -1  # the CPU it last ran on, if known
    evidence: str = ""


@dataclass(frozen=True)
class Tenancy:
    """One answer of a detector: the co-tenants seen now (none: alone)."""

    cotenants: tuple[CoTenant, ...] = ()
    evidence: str = ""  # how the detector knows (files read, rule applied)


@dataclass(frozen=True)
class DetectorContext:
    """What a detector is told when it is created."""

    argument: str  # the text after ``NAME:`` in ``--detector NAME:ARG`` ("" if none)
    pid: int  # our process (the emulator's)
    cpus: frozenset[int]  # our CPU affinity
    trusted_uids: frozenset[int] = frozenset()
    trusted_names: frozenset[str] = frozenset()  # command names
    trusted_cgroups: frozenset[str] = frozenset()  # cgroup paths (prefix match)


@runtime_checkable
class TenancyDetector(Protocol):
    """A detector: ``observe()`` answers "who shares which resource with me right now".  It
    may raise (any exception): the monitor then assumes the worst and runs hardened."""

    def observe(self) -> Tenancy:
        ...


@runtime_checkable
class DetectorFactory(Protocol):
    """What a ``leakdbt.detectors`` entry point names: ``create(context)`` makes a detector
    (raising ValueError with a message for a bad argument)."""

    name: str
    api_version: int
    description: str

    def create(self, context: DetectorContext) -> TenancyDetector:
        ...
