"""Control-flow recovery: a function's basic blocks and edges, decoded with Capstone.

Decoding is recursive descent from the function's entry, confined to the function's extent
(plus gcc's ``NAME.cold`` split-off parts).  Blocks end at every control transfer, calls
included, and before every branch target, so a block is entered only at its first
instruction.  Bytes may belong to two blocks when code jumps into the middle of an
instruction (``jmp 1f; lock; 1: cmpxchg``): blocks are keyed by their first address, not by
byte ranges.

Indirect jumps through the jump tables compilers emit for ``switch`` (absolute tables in
non-PIE code, table-relative 32-bit offsets in PIE code) are resolved when the table's size
can be read from the bounds check in front of it (``cmp I, N; ja default``) or from a mask
of the index (``and I, 2**k - 1``).  In PIE code the table's address comes from the one
``lea B, [rip + T]`` that sets the base register on every path to the jump; gcc often hoists
it out of a loop, blocks away.  Every other indirect jump is recorded as unknown.  Calls to
functions that do not return end their block's paths (the block is a *dead end*, as is one
that stops: ``hlt``, ``ud2``).  A callee does not return when its name (under any alias) is
in the library table :data:`NORETURN`, or, generally, when its own CFG (decoded with that
table only, once per image) has no path that returns: every reachable block ends in a dead
end, a jump back into the function, or an endless loop, with no return, no tail call, no
unknown indirect jump and no undecodable byte (``die(msg) { fprintf(...); exit(1); }``).
A block that runs off the end of the function has a fall-through edge out of it.

Dominators and post-dominators use the iterative algorithm of Cooper, Harvey and Kennedy,
"A Simple, Fast Dominance Algorithm" (2001).
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property

from leakdbt.loader.image import Image, Symbol, per_image
from leakdbt.x86.insn import REGS64, Flow, Insn, decode

# Functions that never return (C library and compiler runtime); a call to one ends its path.
NORETURN = frozenset({
    "abort", "exit", "_exit", "_Exit", "quick_exit", "__stack_chk_fail", "__assert_fail",
    "__assert_perror_fail", "__fortify_fail", "__chk_fail", "__libc_fatal", "err", "errx",
    "verr", "verrx", "longjmp", "_longjmp", "siglongjmp", "__longjmp_chk", "pthread_exit",
    "__cxa_throw", "__cxa_rethrow", "_Unwind_Resume", "__cxa_bad_cast", "__cxa_bad_typeid",
    "__cxa_throw_bad_array_new_length", "__cxa_pure_virtual", "_ZSt9terminatev",
    "__libc_start_main", "__libc_start_call_main", "exit_group", "__malloc_assert",
})
MAX_JUMP_TABLE = 4096


class EdgeKind(enum.Enum):
    """Why control goes from one block to another."""

    FALLTHROUGH = "fallthrough"  # the next instruction (block split at a branch target)
    JUMP = "jump"  # direct unconditional jump
    TAKEN = "taken"  # conditional branch, condition true
    NOT_TAKEN = "not-taken"  # conditional branch, condition false
    RETURN_SITE = "return-site"  # after a call, where the callee returns
    JUMP_TABLE = "jump-table"  # one entry of a resolved jump table


@dataclass(frozen=True)
class Edge:
    """A control transfer from the block at ``source`` to ``target``."""

    kind: EdgeKind
    source: int
    target: int
    inside: bool  # target is a block of this function (else: a tail call or exit)


@dataclass(frozen=True)
class JumpTable:
    """A resolved ``switch`` table: where it is, its entry format, and the case targets."""

    jump: int  # address of the indirect jmp
    table: int  # address of the table
    entry_size: int  # 8: absolute addresses; 4: signed offsets from the table
    targets: tuple[int, ...]  # per case, in table order


@dataclass
class Block:
    """A basic block: entered only at ``start``, left only after its last instruction."""

    start: int
    insns: tuple[Insn, ...]
    succs: list[Edge] = field(default_factory=list)
    preds: list[int] = field(default_factory=list)  # starts of blocks with an edge here

    @property
    def end(self) -> int:
        return self.insns[-1].next

    @property
    def last(self) -> Insn:
        return self.insns[-1]

    @property
    def dead_end(self) -> bool:
        """Does the program's path end here: a call that does not return, or a stop?"""
        return not self.succs and self.last.flow in (Flow.CALL, Flow.STOP)

    @property
    def call_target(self) -> int | None:
        """The callee of a block that ends with a direct call."""
        return self.last.target if self.last.flow is Flow.CALL else None

    def inside_succs(self) -> list[int]:
        """Starts of the successor blocks inside the function, in edge order, no repeats."""
        out: list[int] = []
        for e in self.succs:
            if e.inside and e.target not in out:
                out.append(e.target)
        return out


@dataclass
class FunctionCFG:
    """The control-flow graph of one function (link-time addresses of one module)."""

    name: str
    entry: int
    bounds: tuple[tuple[int, int], ...]  # [start, end) ranges: the body, then .cold parts
    blocks: dict[int, Block]
    jump_tables: dict[int, JumpTable]
    unknown_jumps: tuple[int, ...]  # indirect jumps that could not be resolved
    undecodable: tuple[int, ...]  # addresses where decoding failed
    exits: tuple[Edge, ...]  # edges to code outside the function (tail calls)

    def block_at(self, address: int) -> Block | None:
        """The block that starts at ``address``, or else the first one containing it."""
        if address in self.blocks:
            return self.blocks[address]
        for b in self.blocks.values():
            if any(i.address == address for i in b.insns):
                return b
        return None

    def contains(self, address: int) -> bool:
        return any(lo <= address < hi for lo, hi in self.bounds)

    def ordered(self) -> list[Block]:
        """Blocks by address."""
        return [self.blocks[a] for a in sorted(self.blocks)]

    @cached_property
    def reachable(self) -> list[int]:
        """Block starts reachable from the entry, in reverse post-order."""
        if self.entry not in self.blocks:
            return []  # the entry could not be decoded
        return _reverse_postorder(self.entry, lambda b: self.blocks[b].inside_succs())

    @cached_property
    def dominators(self) -> dict[int, int | None]:
        """Immediate dominator of every reachable block (None for the entry)."""
        if not self.reachable:
            return {}
        return _idoms(self.reachable, lambda b: self.blocks[b].preds)

    @cached_property
    def postdominators(self) -> dict[int, int | None]:
        """Immediate post-dominator of every block that can reach an exit (None: the exit).

        Exits are returns, stops, tail calls, unknown indirect jumps and calls that do not
        come back; blocks that cannot reach any (endless loops) are absent.
        """
        return self._postdominators(self._leaves)

    @cached_property
    def joins(self) -> dict[int, int | None]:
        """Immediate post-dominators when the paths that end the program (dead ends: calls
        that do not return, stops) are left out, as compilers do for ``unreachable``: where
        the paths that go on meet (``if (s) { assert(x); a = 1; } else a = 2;`` meets after
        the ``if``).  Blocks from which every path ends the program or loops forever are
        absent."""
        return self._postdominators(lambda b: self._leaves(b) and not b.dead_end)

    def _postdominators(self, leaves: Callable[[Block], bool]) -> dict[int, int | None]:
        exit_node = -1
        exits = [b.start for b in self.blocks.values() if leaves(b)]
        preds_rev: dict[int, list[int]] = {exit_node: []}  # reverse graph: preds = succs
        for b in self.blocks.values():
            preds_rev[b.start] = b.inside_succs() + ([exit_node] if leaves(b) else [])

        def succs_rev(n: int) -> list[int]:
            return exits if n == exit_node else self.blocks[n].preds

        order = _reverse_postorder(exit_node, succs_rev)
        idom = _idoms(order, lambda n: preds_rev[n])
        return {n: (None if d == exit_node else d) for n, d in idom.items() if n != exit_node}

    def _leaves(self, b: Block) -> bool:
        """Can control leave the function (or stop) after ``b``?"""
        if b.last.flow in (Flow.RETURN, Flow.STOP):
            return True
        if b.last.address in self.unknown_jumps:
            return True
        return any(not e.inside for e in b.succs) or not b.inside_succs()

    def dominates(self, a: int, b: int, post: bool = False) -> bool:
        """Does block ``a`` (post-)dominate block ``b``?"""
        tree = self.postdominators if post else self.dominators
        node: int | None = b
        while node is not None:
            if node == a:
                return True
            node = tree.get(node)
        return False


CodeReader = Callable[[int, int], bytes]
"""Reads ``size`` bytes at a link-time address of the module (b"" when unmapped)."""
DecodeMemo = dict[tuple[int, int], Insn | None]
"""(address, bytes read there) -> the instruction decoded from them (None: undecodable).
Only for one fixed ``read`` (one image's code): the key then determines the bytes."""


def recover(name: str, entry: int, bounds: Iterable[tuple[int, int]], read: CodeReader,
            extra_leaders: Iterable[int] = (), symbol_at: Callable[[int], str | None]
            = lambda a: None, noreturn: Callable[[int], bool] | None = None,
            decoded: DecodeMemo | None = None) -> FunctionCFG:
    """Recover the CFG of the function at ``entry`` whose code lies in ``bounds``.

    ``extra_leaders`` start blocks even where no branch targets them (e.g. a contract region
    that begins mid-block); ``symbol_at`` names call targets (to know non-returning calls
    by :data:`NORETURN`); ``noreturn(target)``, when given, also says a callee does not
    return; ``decoded``, when given, memoizes decodings of ``read``'s bytes (see
    :data:`DecodeMemo`).
    """
    def named(address: int) -> bool:
        callee = symbol_at(address)
        return callee is not None and callee.split("@")[0] in NORETURN

    def ends(address: int) -> bool:
        return named(address) or (noreturn is not None and noreturn(address))

    return _Builder(name, entry, tuple(bounds), read, ends, decoded).build(set(extra_leaders))


def returns_never(cfg: FunctionCFG) -> bool:
    """Has ``cfg`` no path that returns (see the module doc)?  Unknown code counts as
    returning: an unknown indirect jump, an undecodable byte, a tail call or a fall off the
    function's end."""
    if cfg.unknown_jumps or cfg.undecodable or not cfg.reachable:
        return False
    for start in cfg.reachable:
        b = cfg.blocks[start]
        if b.last.flow is Flow.RETURN or any(not e.inside for e in b.succs):
            return False
    return True


def function_cfg(image: Image, func: Symbol, extra_leaders: Iterable[int] = (),
                 general: bool = True) -> FunctionCFG:
    """The CFG of function symbol ``func`` of ``image``, with its gcc ``.cold`` parts;
    ``general``: callees that never return are also found by their own CFG (else only by
    :data:`NORETURN`).

    Built once per (image, symbol, extra leaders, ``general``) and shared: callers must not
    change the graph (nothing does; the blocks, edges and the lazily computed dominator
    trees are read only).  Analyze judges each region by asking every pass, and a pass that
    clones callees asks for their CFGs again each time; rebuilding them cost most of a
    library analysis.
    """
    leaders = frozenset(extra_leaders)
    if not image.data:  # its code is read from the file each time: nothing is fixed
        return _build_function_cfg(image, func, leaders, general)
    cache = _cfg_cache(image)
    key = (func, leaders, general)
    cfg = cache.get(key)
    if cfg is None:
        cfg = cache[key] = _build_function_cfg(image, func, leaders, general)
    return cfg


@per_image
def _cfg_cache(image: Image) -> dict[tuple[Symbol, frozenset[int], bool], FunctionCFG]:
    """(symbol, extra leaders, general) -> its CFG, for one Image object.

    Sound because everything the CFG is built from is fixed for that object: an Image is
    frozen, its code is the immutable ``data`` bytes read when it was loaded (a changed file
    is a new Image: a new cache; an Image without ``data``, which reads its file each time,
    is not cached), and the symbol (name, address, size, kind), the extra leaders and
    ``general`` are the whole rest of the input; the callee verdicts it uses are themselves
    a function of the image alone.  Keyed by the Image's identity (as
    :func:`per_image` says) and dropped when it dies, so two images never share an entry,
    even ones loaded from the same path.
    """
    return {}


def _build_function_cfg(image: Image, func: Symbol, extra_leaders: frozenset[int],
                        general: bool) -> FunctionCFG:
    index = _symbol_index(image)
    decoded = _decoded(image) if image.data else None
    bounds = [image.extent(func)]
    # gcc names the split-off part after the name it compiled, which may be an alias of the
    # symbol image.functions chose for the address (_IO_fclose / _IO_new_fclose.cold).
    for name in sorted({func.name, *index.names_at.get(func.value, ())}):
        bounds.extend(image.extent(cold) for cold in index.cold_parts.get(name, ()))

    def symbol_at(address: int) -> str | None:
        # Any alias may be the one known not to return (longjmp = __libc_siglongjmp).
        aliases = index.names_at.get(address, ())
        return next((n for n in aliases if n in NORETURN), aliases[0] if aliases else None)

    if not general:
        return recover(func.name, func.value, bounds, image.read, extra_leaders, symbol_at,
                       decoded=decoded)
    verdicts = _noreturn_verdicts(image)

    def noreturn(address: int) -> bool:
        if address not in verdicts:
            callee = index.functions.get(address)
            verdicts[address] = callee is not None and returns_never(
                function_cfg(image, callee, general=False))
        return verdicts[address]

    return recover(func.name, func.value, bounds, image.read, extra_leaders, symbol_at,
                   noreturn, decoded)


@per_image
def _decoded(image: Image) -> DecodeMemo:
    """Instructions decoded from ``image.read``, shared by all its CFGs (a callee's code is
    decoded for its own CFG and again for the verdict on whether it returns).  Sound for
    the same reason as :func:`_cfg_cache`: the image's bytes never change, so an address
    and a length fix the bytes decoded, and decoding is a pure function of them and the
    address (an :class:`Insn` is immutable)."""
    return {}


@per_image
def _noreturn_verdicts(image: Image) -> dict[int, bool]:
    """Callee address -> does it never return (by its own CFG), learnt once per image."""
    return {}


@dataclass(frozen=True)
class _SymbolIndex:
    names_at: dict[int, tuple[str, ...]]  # function names by address (aliases included)
    cold_parts: dict[str, tuple[Symbol, ...]]  # NAME -> its NAME.cold / NAME.cold.N parts
    functions: dict[int, Symbol]  # image.functions by address


@per_image
def _symbol_index(image: Image) -> _SymbolIndex:
    """Built once per image (its symbol tables may hold thousands of entries)."""
    names: dict[int, list[str]] = {}
    for s in image.symbols:
        if s.kind == "func" and s.value:
            names.setdefault(s.value, []).append(s.name)
    cold: dict[str, list[Symbol]] = {}
    for sym in image.functions:
        base, dot, rest = sym.name.partition(".cold")
        if dot and (not rest or rest.startswith(".")):
            cold.setdefault(base, []).append(sym)
    return _SymbolIndex({a: tuple(n) for a, n in names.items()},
                        {b: tuple(c) for b, c in cold.items()},
                        {f.value: f for f in image.functions})


class _Builder:
    def __init__(self, name: str, entry: int, bounds: tuple[tuple[int, int], ...],
                 read: CodeReader, noreturn: Callable[[int], bool],
                 decoded: DecodeMemo | None = None) -> None:
        self.name = name
        self.entry = entry
        self.bounds = bounds
        self.read = read
        self.noreturn = noreturn
        self.decoded: DecodeMemo = {} if decoded is None else decoded
        self.refused: set[int] = set()  # indirect jumps whose table guess did not hold
        self.reset()

    def reset(self) -> None:
        self.insns: dict[int, Insn] = {}
        self.leaders: set[int] = {self.entry}
        self.tables: dict[int, JumpTable] = {}
        self.table_bases: dict[int, tuple[int, str]] = {}  # PIE jmp -> (base use, base reg)
        self.unknown: list[int] = []
        self.undecodable: list[int] = []
        self.noreturn_calls: set[int] = set()

    def inside(self, address: int) -> bool:
        return any(lo <= address < hi for lo, hi in self.bounds)

    def decode_at(self, address: int) -> Insn | None:
        if address in self.insns:
            return self.insns[address]
        hi = next(h for lo, h in self.bounds if lo <= address < h)
        size = min(15, hi - address)  # an instruction may not run past the function's end
        if (address, size) in self.decoded:
            insn = self.decoded[address, size]
        else:
            insn = self.decoded[address, size] = decode(self.read(address, size), address)
        if insn is not None:
            self.insns[address] = insn
        else:
            self.undecodable.append(address)
        return insn

    def build(self, extra: set[int]) -> FunctionCFG:
        # A PIE table's base register is found on the paths decoded when its jmp is reached;
        # once the whole function is known, every path must still agree, else decode again
        # with that jmp left unresolved.
        while True:
            self.descend(extra)
            stale = {jmp for jmp, (use, reg) in self.table_bases.items()
                     if self.reaching_lea(use, reg) != self.tables[jmp].table}
            if not stale:
                return self.assemble()
            self.refused |= stale
            self.reset()

    def descend(self, extra: set[int]) -> None:
        """Recursive descent from the entry and ``extra``, marking every block leader."""
        self.leaders |= {a for a in extra if self.inside(a)}
        work = sorted(self.leaders)
        seen: set[int] = set()
        while work:
            address = work.pop()
            while address not in seen and self.inside(address):
                seen.add(address)
                insn = self.decode_at(address)
                if insn is None:
                    break
                targets = self.successors(insn)
                if self.falls_through(insn):
                    targets.append(insn.next)
                for t in targets:
                    if self.inside(t):
                        self.leaders.add(t)
                        work.append(t)
                if insn.flow.ends_block:
                    break
                address = insn.next

    def falls_through(self, insn: Insn) -> bool:
        if insn.flow is Flow.BRANCH:
            return True
        if insn.flow in (Flow.CALL, Flow.INDIRECT_CALL):
            return insn.address not in self.noreturn_calls
        return False

    def successors(self, insn: Insn) -> list[int]:
        """Intra-procedural targets of ``insn`` other than its fall-through."""
        if insn.flow in (Flow.JUMP, Flow.BRANCH):
            assert insn.target is not None
            return [insn.target]
        if insn.flow is Flow.CALL:
            assert insn.target is not None
            if self.noreturn(insn.target):
                self.noreturn_calls.add(insn.address)
            return []
        if insn.flow is Flow.INDIRECT_JUMP:
            table = self.jump_table(insn)
            if table is None:
                self.unknown.append(insn.address)
                return []
            self.tables[insn.address] = table
            return list(dict.fromkeys(table.targets))
        return []

    # -- jump tables -----------------------------------------------------------------------

    def jump_table(self, jmp: Insn) -> JumpTable | None:
        """Recognise the two table shapes gcc and clang emit for x86-64 switches."""
        if jmp.address in self.refused:
            return None
        chain = self.chain_before(jmp.address)
        op = jmp.op_str
        # Non-PIE: jmp qword ptr [reg*8 + TABLE]
        m = _ABS_TABLE.fullmatch(op)
        if m:
            count = self.table_bound(chain, REGS64.get(m.group(1), ""))
            return None if count is None else \
                self.read_table(jmp.address, int(m.group(2), 16), 8, count)
        if op not in REGS64.values():
            return None
        # clang non-PIE: mov reg, qword ptr [reg*8 + TABLE]; jmp reg
        if chain:
            prev = chain[-1]
            m = _ABS_TABLE.fullmatch(prev.op_str.split(", ", 1)[-1])
            if prev.mnemonic == "mov" and prev.op_str.startswith(op + ",") and m:
                count = self.table_bound(chain, REGS64.get(m.group(1), ""))
                return None if count is None else \
                    self.read_table(jmp.address, int(m.group(2), 16), 8, count)
        # PIE: lea B, [rip + T]; ...; movsxd R, dword ptr [B + I*4]; add R, B; jmp R
        found = self.pie_table_base(chain, op)
        if found is None:
            return None
        table, use, base, index = found
        count = self.table_bound(chain, index)
        if count is None:
            return None
        resolved = self.read_table(jmp.address, table, 4, count)
        if resolved is not None:
            self.table_bases[jmp.address] = (use, base)
        return resolved

    def chain_before(self, address: int) -> list[Insn]:
        """Instructions leading to ``address`` along straight-line code (up to 24)."""
        by_next = {i.next: i for i in self.insns.values() if i.flow in (Flow.NEXT, Flow.BRANCH)}
        out: list[Insn] = []
        while address in by_next and len(out) < 24:
            insn = by_next[address]
            out.append(insn)
            address = insn.address
        return out[::-1]

    @staticmethod
    def table_bound(chain: list[Insn], index: str) -> int | None:
        """Entries in the table: from the ``cmp X, N; ja default`` guarding it and from an
        ``and I, 2**k - 1`` masking the index register ``index`` (a 64-bit name); the
        smaller when both are there."""
        bounds: list[int] = []
        mask_seen = cmp_seen = False
        for i in range(len(chain) - 1, -1, -1):
            insn = chain[i]
            if not mask_seen and insn.mnemonic == "and" \
                    and REGS64.get(insn.op_str.split(", ")[0]) == index:
                mask = _immediate(insn.op_str.rsplit(", ", 1)[-1])
                # any other and only lowers the index: a bound further back still holds
                if mask is not None and 0 < mask < MAX_JUMP_TABLE and not mask & (mask + 1):
                    bounds.append(mask + 1)
                    mask_seen = True
            if not cmp_seen and i > 0 and insn.mnemonic in ("ja", "jae") \
                    and chain[i - 1].mnemonic == "cmp":
                cmp_seen = True
                n = _immediate(chain[i - 1].op_str.rsplit(", ", 1)[-1])
                if n is None:
                    return None
                count = n + 1 if insn.mnemonic == "ja" else n
                if not 0 < count <= MAX_JUMP_TABLE:
                    return None
                bounds.append(count)
        return min(bounds, default=None)

    def pie_table_base(self, chain: list[Insn], reg: str) -> tuple[int, int, str, str] | None:
        """(table, address of the entry load, base register, index register) for the PIE
        shape, with the table from the one ``lea B, [rip + T]`` that reaches the load."""
        writers = [i for i in chain if _writes(i, reg)]
        if len(writers) < 2:
            return None
        add, load = writers[-1], writers[-2]
        base = add.op_str.removeprefix(reg + ", ")
        m = _REL_ENTRY.fullmatch(load.op_str)
        if (add.mnemonic != "add" or base == add.op_str or load.mnemonic != "movsxd" or not m
                or m.group(1) != reg or m.group(2) != base or base not in REGS64.values()):
            return None
        if any(_writes(i, base) for i in chain[chain.index(load) + 1:chain.index(add)]):
            return None
        table = self.reaching_lea(load.address, base)
        if table is None:
            return None
        return table, load.address, base, REGS64.get(m.group(3), "")

    def reaching_lea(self, address: int, reg: str) -> int | None:
        """The address T of the ``lea reg, [rip + T]`` that sets ``reg`` on every decoded
        path into ``address``, or None (another definition, none, or disagreeing ones).

        gcc often hoists the table's address out of a loop, so it may sit blocks away.
        """
        preds = self.predecessors()
        found: set[int] = set()
        seen: set[int] = set()
        work = [address]
        while work:
            at = work.pop()
            if at == self.entry or not preds.get(at):
                return None  # a path on which nothing set the register
            for p in preds[at]:
                if p.address in seen:
                    continue
                seen.add(p.address)
                if len(seen) > MAX_DEF_SEARCH:
                    return None
                if not _writes(p, reg):
                    work.append(p.address)
                elif p.mnemonic == "lea" and p.op_str.startswith(reg + ", ") and p.rip_target:
                    found.add(p.rip_target)
                else:
                    return None
        return found.pop() if len(found) == 1 else None

    def predecessors(self) -> dict[int, list[Insn]]:
        """Decoded instructions by the addresses they can pass control to."""
        preds: dict[int, list[Insn]] = {}
        for i in self.insns.values():
            nexts = [i.target] if i.flow in (Flow.JUMP, Flow.BRANCH) else []
            if i.flow in (Flow.NEXT, Flow.BRANCH) or self.falls_through(i):
                nexts.append(i.next)
            if i.address in self.tables:
                nexts.extend(self.tables[i.address].targets)
            for n in nexts:
                if n is not None:
                    preds.setdefault(n, []).append(i)
        return preds

    def read_table(self, jump: int, table: int, size: int, count: int) -> JumpTable | None:
        data = self.read(table, size * count)
        if len(data) != size * count:
            return None
        if size == 8:
            targets = struct.unpack(f"<{count}Q", data)
        else:
            targets = tuple((table + off) & 0xFFFF_FFFF_FFFF_FFFF
                            for off in struct.unpack(f"<{count}i", data))
        if not all(self.inside(t) for t in targets):
            return None
        return JumpTable(jump, table, size, tuple(targets))

    # -- blocks -------------------------------------------------------------------------------

    def assemble(self) -> FunctionCFG:
        blocks: dict[int, Block] = {}
        for start in sorted(self.leaders):
            if start not in self.insns:
                continue
            insns = [self.insns[start]]
            while not insns[-1].flow.ends_block:
                nxt = insns[-1].next
                if nxt in self.leaders or nxt not in self.insns:
                    break
                insns.append(self.insns[nxt])
            blocks[start] = Block(start, tuple(insns))
        exits: list[Edge] = []
        for b in blocks.values():
            for kind, target in self.edges(b):
                edge = Edge(kind, b.start, target, target in blocks)
                b.succs.append(edge)
                if edge.inside:
                    if b.start not in blocks[target].preds:
                        blocks[target].preds.append(b.start)
                else:
                    exits.append(edge)
        return FunctionCFG(self.name, self.entry, self.bounds, blocks, self.tables,
                           tuple(self.unknown), tuple(self.undecodable), tuple(exits))

    def edges(self, b: Block) -> list[tuple[EdgeKind, int]]:
        last = b.last
        nxt = last.next
        flow = last.flow
        if flow is Flow.NEXT:
            # Into the next instruction, or off the end of the function into the code that
            # follows it (an exit); nothing when decoding stopped at an undecodable byte.
            return [(EdgeKind.FALLTHROUGH, nxt)] if nxt in self.insns or not self.inside(nxt) \
                else []
        if flow is Flow.JUMP:
            assert last.target is not None
            return [(EdgeKind.JUMP, last.target)]
        if flow is Flow.BRANCH:
            assert last.target is not None
            return [(EdgeKind.TAKEN, last.target), (EdgeKind.NOT_TAKEN, nxt)]
        if flow in (Flow.CALL, Flow.INDIRECT_CALL):
            return [(EdgeKind.RETURN_SITE, nxt)] if self.falls_through(last) else []
        if flow is Flow.INDIRECT_JUMP and last.address in self.tables:
            return [(EdgeKind.JUMP_TABLE, t)
                    for t in dict.fromkeys(self.tables[last.address].targets)]
        return []


# The memory operand of an absolute 8-byte table access: [INDEX*8 + 0xTABLE]
_ABS_TABLE = re.compile(r"qword ptr \[([a-z0-9]+)\*8 \+ (0x[0-9a-f]+)\]")
# The load of a relative 4-byte entry: R, dword ptr [BASE + INDEX*4]
_REL_ENTRY = re.compile(r"([a-z0-9]+), dword ptr \[([a-z0-9]+) \+ ([a-z0-9]+)\*4\]")
MAX_DEF_SEARCH = 4096  # instructions to walk back looking for a table's base register

# Instructions that write general registers they do not name (System V: calls clobber the
# caller-saved ones).  Unknown cases err towards "writes", which only leaves a table unknown.
_CALLER_SAVED = ("rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11")
_IMPLICIT_WRITES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("mul", "div", "idiv", "rdtsc", "xgetbv", "rdpkru", "cmpxchg8b",
                     "cmpxchg16b"), ("rax", "rdx")),
    **dict.fromkeys(("cdq", "cqo", "cwd"), ("rdx",)),
    **dict.fromkeys(("cdqe", "cwde", "cbw", "cmpxchg", "lahf", "xlatb"), ("rax",)),
    "cpuid": ("rax", "rbx", "rcx", "rdx"),
    "rdtscp": ("rax", "rcx", "rdx"),
    "syscall": ("rax", "rcx", "r11"),
    **dict.fromkeys(("enter", "leave"), ("rbp", "rsp")),
    **dict.fromkeys(("push", "pop", "pushfq", "popfq"), ("rsp",)),
    **dict.fromkeys(("loop", "loope", "loopne"), ("rcx",)),
    **dict.fromkeys((f"{op}{w}" for op in ("movs", "cmps") for w in "bwdq"),
                    ("rsi", "rdi", "rcx")),
    **dict.fromkeys((f"{op}{w}" for op in ("stos", "scas") for w in "bwdq"), ("rdi", "rcx")),
    **dict.fromkeys((f"lods{w}" for w in "bwdq"), ("rax", "rsi", "rcx")),
}
_NO_DESTINATION = frozenset({"cmp", "test", "bt", "push"})


def _immediate(text: str) -> int | None:
    try:
        return int(text, 0)
    except ValueError:
        return None


def _writes(insn: Insn, reg: str) -> bool:
    """Might ``insn`` change 64-bit register ``reg`` (or any part of it)?"""
    if insn.flow in (Flow.CALL, Flow.INDIRECT_CALL):
        return reg in _CALLER_SAVED
    if reg in _IMPLICIT_WRITES.get(insn.mnemonic, ()):
        return True
    ops = insn.op_str.split(", ")
    if insn.mnemonic == "imul" and len(ops) == 1:
        return reg in ("rax", "rdx")
    if insn.mnemonic in ("xchg", "xadd") and any(REGS64.get(o) == reg for o in ops):
        return True
    return insn.mnemonic not in _NO_DESTINATION and REGS64.get(ops[0]) == reg


def subgraph_dominators(root: int, succs: Callable[[int], list[int]]) -> dict[int, int | None]:
    """Immediate dominators in the graph of the nodes reachable from ``root`` along
    ``succs`` (None for the root) — e.g. a region's blocks as its copy sees them, entered
    only at the region's entry, whatever other entries the original blocks have."""
    order = _reverse_postorder(root, succs)
    preds: dict[int, list[int]] = {n: [] for n in order}
    for n in order:
        for s in succs(n):
            preds[s].append(n)
    return _idoms(order, lambda n: preds[n])


def _reverse_postorder(root: int, succs: Callable[[int], list[int]]) -> list[int]:
    seen = {root}
    order: list[int] = []
    stack: list[tuple[int, int]] = [(root, 0)]
    while stack:
        node, i = stack[-1]
        nexts = succs(node)
        if i < len(nexts):
            stack[-1] = (node, i + 1)
            n = nexts[i]
            if n not in seen:
                seen.add(n)
                stack.append((n, 0))
        else:
            stack.pop()
            order.append(node)
    return order[::-1]


def _idoms(rpo: list[int], preds: Callable[[int], list[int]]) -> dict[int, int | None]:
    """Immediate dominators over ``rpo`` (reverse post-order from the root, root first)."""
    index = {n: i for i, n in enumerate(rpo)}
    idom: dict[int, int] = {rpo[0]: rpo[0]}

    def intersect(a: int, b: int) -> int:
        while a != b:
            while index[a] > index[b]:
                a = idom[a]
            while index[b] > index[a]:
                b = idom[b]
        return a

    changed = True
    while changed:
        changed = False
        for n in rpo[1:]:
            done = [p for p in preds(n) if p in idom and p in index]
            if not done:
                continue
            new = done[0]
            for p in done[1:]:
                new = intersect(p, new)
            if idom.get(n) != new:
                idom[n] = new
                changed = True
    return {n: (None if n == rpo[0] else d) for n, d in idom.items()}
