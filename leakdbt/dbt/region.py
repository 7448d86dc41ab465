"""Regions: the code a contract protects, as a piece of a function's CFG whose copy is
entered only at its start.

A branch region starts at a block that ends with a conditional branch and extends to that
block's immediate post-dominator: both arms, left only towards the post-dominator — or, when
the arms meet only by returning (``if (c) return a; return b;``), up to and including the
returns.  A loop region is the natural loop whose header is the start: every block from
which a back edge to the header can be reached without passing through the header (it may
have several exits).  A function region is every block of the function, entered at its
entry (a pass replaces it as a whole).  Any other region is the block itself.

Side entries and shared tails.  A block of a region may also be entered from outside it (a
tail gcc shares between the arms and other code, a shared return block, ``if (p || s)``):
such blocks are listed in :attr:`CodeRegion.shared`.  The region is not refused: its copy
in the code cache holds its own duplicate of every block (tail duplication, as hyperblock
formation does), and that copy is entered only at the region's start (the entry jump or
hook of leakdbt.dbt.dispatch); the original blocks stay as they are, so an entry from
outside keeps running the original code.  Shape rules are therefore judged on the region as
its copy sees it, entered only at the start: a cycle through its blocks must be entered only
through a block that dominates it there (reducible), else it is irreducible flow.

Dead ends.  A block that ends the program's path (a call to a function that does not return,
such as ``__assert_fail``, or a stop: leakdbt.dbt.cfg) may be part of a branch region: that
path of the region ends there, and the region's other paths still meet at the join, which
is found with those paths left out (:attr:`~leakdbt.dbt.cfg.FunctionCFG.joins`).

A region that cannot be formed is refused with :class:`RegionError`, whose message names
the block and the reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from leakdbt.dbt.cfg import Block, FunctionCFG, subgraph_dominators
from leakdbt.errors import TranslationError
from leakdbt.x86.insn import Flow


class RegionError(TranslationError):
    """A region the translator refuses to form, with the reason."""


@dataclass(frozen=True)
class CodeRegion:
    """Blocks of one function that are translated together (link-time addresses)."""

    name: str  # how to print the start, e.g. ``work+0x12``
    cfg: FunctionCFG
    entry: int
    blocks: tuple[int, ...]  # block starts, by address
    kind: str  # "branch", "loop", "function" or "block"
    # blocks (not the entry) also entered from outside the region: the copy has its own
    # duplicate of each, the original stays for those entries (see the module doc)
    shared: tuple[int, ...] = ()

    def block_list(self) -> list[Block]:
        return [self.cfg.blocks[b] for b in self.blocks]

    @property
    def byte_ranges(self) -> list[tuple[int, int]]:
        """[start, end) of each block's bytes, merged where adjacent."""
        return merge_ranges((b.start, b.end) for b in self.block_list())


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """[start, end) ranges sorted, with overlapping or adjacent ones merged."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(hi, out[-1][1]))
        else:
            out.append((lo, hi))
    return out


def branch_extent(cfg: FunctionCFG, at: int) -> tuple[int | None, list[int]]:
    """Where the paths from the branch ending block ``at`` meet (None: only when the
    function returns; paths that end the program, dead ends, do not count where the others
    meet), and the blocks from ``at`` up to there (``at`` must reach an exit:
    ``cfg.postdominators``)."""
    join = cfg.joins[at] if at in cfg.joins else cfg.postdominators[at]
    members: list[int] = []
    stack = [at]
    while stack:
        b = stack.pop()
        if b in members or b == join:
            continue
        members.append(b)
        stack.extend(cfg.blocks[b].inside_succs())
    return join, members


def form_region(cfg: FunctionCFG, at: int, name: str, branch: bool | None = None,
                loop: bool = False, function: bool = False) -> CodeRegion:
    """The region starting at ``at``: the whole function when ``function`` (``at`` must be
    its entry), the natural loop headed there when ``loop``, a branch region when ``branch``
    (or, when None, when the block ends with a conditional branch), else the block itself."""
    if function:
        if at != cfg.entry:
            raise RegionError(f"{name}: a function region starts at the entry of {cfg.name}")
        return CodeRegion(name, cfg, at, tuple(sorted(cfg.blocks)), "function")
    block = cfg.blocks.get(at)
    if block is None:
        raise RegionError(f"{name}: not a block start reachable by decoding {cfg.name} from "
                          "its entry (unreachable code, or data inside the function)")
    if at not in cfg.dominators:
        raise RegionError(f"{name}: unreachable from the entry of {cfg.name}"
                          + _unknown_jumps(cfg))
    if loop:
        return _form_loop(cfg, at, name)
    ends_in_branch = block.last.flow is Flow.BRANCH and block.last.mnemonic != "xbegin"
    if branch is None:
        branch = ends_in_branch
    if not branch:
        _check_block(cfg, block, name)
        return CodeRegion(name, cfg, at, (at,), "block")
    if not ends_in_branch:
        raise RegionError(f"{name}: a branch region must start at a block that ends with a "
                          f"conditional branch; this block ends with '{block.last.text}'")
    if at not in cfg.postdominators:
        raise RegionError(f"{name}: no path from '{block.last.text}' leaves {cfg.name} "
                          "(an endless loop)")
    join, members = branch_extent(cfg, at)
    for b in members:
        _check_block(cfg, cfg.blocks[b], name)
        blk = cfg.blocks[b]
        for e in blk.succs:
            if not e.inside:
                raise RegionError(f"{name}: exit from the middle: {_where(cfg, b)} leaves "
                                  f"{cfg.name} for {e.target:#x}")
        returns = blk.last.flow is Flow.RETURN
        if blk.dead_end:
            continue  # the program's path ends here (a pass ends it as the original does)
        if (returns and join is not None) or (not returns and not blk.inside_succs()):
            target = "the end of the region" if join is None else _where(cfg, join)
            raise RegionError(f"{name}: exit from the middle: {_where(cfg, b)} ends with "
                              f"'{blk.last.text}' instead of reaching {target}")
    _check_reducible(cfg, at, members, name)
    return CodeRegion(name, cfg, at, tuple(sorted(members)), "branch",
                      _shared(cfg, at, members))


def _form_loop(cfg: FunctionCFG, header: int, name: str) -> CodeRegion:
    latches = [p for p in cfg.blocks[header].preds if cfg.dominates(header, p)]
    if not latches:
        raise RegionError(f"{name}: not a loop header: no block that {_where(cfg, header)} "
                          "dominates jumps back to it")
    members = {header}
    stack = list(latches)
    while stack:  # walk back from the latches to the header
        b = stack.pop()
        if b in members:
            continue
        members.add(b)
        # Every block of a natural loop is reachable, and dominated by the header: a
        # predecessor the entry cannot reach (code the CFG decoded from an extra leader)
        # is not part of it but a side entry, which keeps running the original.
        stack.extend(p for p in cfg.blocks[b].preds if p in cfg.dominators)
    for b in members:
        _check_block(cfg, cfg.blocks[b], name)
    _check_reducible(cfg, header, members, name)
    return CodeRegion(name, cfg, header, tuple(sorted(members)), "loop",
                      _shared(cfg, header, members))


def side_reachable(region: CodeRegion) -> frozenset[int]:
    """The blocks of ``region`` that the original code can run after a side entry: its
    :attr:`~CodeRegion.shared` blocks and those reachable from them inside the region.  The
    hardened copy covers these only when control comes through the region's start (e.g.
    a leak in one of them is not removed for the other entries); reaching the start
    enters the copy."""
    inside = set(region.blocks) - {region.entry}
    seen = set(region.shared)
    stack = list(region.shared)
    while stack:
        for s in region.cfg.blocks[stack.pop()].inside_succs():
            if s in inside and s not in seen:
                seen.add(s)
                stack.append(s)
    return frozenset(seen)


def _shared(cfg: FunctionCFG, entry: int, members: Iterable[int]) -> tuple[int, ...]:
    """The blocks of a region, other than its entry, that code outside it jumps or falls
    into (see the module doc)."""
    inside = set(members)
    return tuple(sorted(b for b in inside if b != entry
                        and any(p not in inside for p in cfg.blocks[b].preds)))


def _check_block(cfg: FunctionCFG, block: Block, name: str) -> None:
    last = block.last
    if last.address in cfg.unknown_jumps:
        raise RegionError(f"{name}: {_where(cfg, block.start)} ends with an indirect jump "
                          f"whose targets are unknown ('{last.text}')")
    if last.address in cfg.jump_tables:
        raise RegionError(f"{name}: {_where(cfg, block.start)} ends with a jump-table jump "
                          f"('{last.text}'): its table holds original addresses, so a copy "
                          "cannot keep control inside the region")
    if last.mnemonic == "xbegin":
        raise RegionError(f"{name}: {_where(cfg, block.start)} starts a hardware transaction "
                          "(xbegin), which the translator does not relocate")


def _check_reducible(cfg: FunctionCFG, entry: int, members: Iterable[int], name: str
                     ) -> None:
    """The region's blocks as its copy sees them (entered only at ``entry``): every
    retreating edge (to a block on the current depth-first path) must go to a block that
    dominates its source there — each loop has a single entry, its header."""
    inside = set(members)

    def succs(n: int) -> list[int]:
        return [s for s in cfg.blocks[n].inside_succs() if s in inside]

    idom = subgraph_dominators(entry, succs)

    def dominates(a: int, b: int) -> bool:
        node: int | None = b
        while node is not None:
            if node == a:
                return True
            node = idom.get(node)
        return False

    on_path: set[int] = set()
    done: set[int] = set()
    stack: list[tuple[int, list[int]]] = []

    def push(n: int) -> None:
        on_path.add(n)
        stack.append((n, succs(n)))

    push(entry)
    while stack:
        n, pending = stack[-1]
        if not pending:
            stack.pop()
            on_path.discard(n)
            done.add(n)
            continue
        s = pending.pop()
        if s in on_path:
            if not dominates(s, n):
                raise RegionError(f"{name}: irreducible flow: the loop through "
                                  f"{_where(cfg, n)} and {_where(cfg, s)} has more than one "
                                  "entry")
        elif s not in done:
            push(s)


def _unknown_jumps(cfg: FunctionCFG) -> str:
    """Why code the program runs can be unreachable in ``cfg``: the indirect jumps whose
    targets decoding did not learn (glibc's computed gotos, a jump table with no bounds
    check), which may lead to it ("" when there are none)."""
    jumps = []
    for address in cfg.unknown_jumps:
        block = cfg.block_at(address)
        text = f" ('{block.last.text}')" if block is not None else ""
        jumps.append(f"{_where(cfg, address)}{text}")
    if not jumps:
        return ""
    return (" as decoded: the indirect jump" + ("s" if len(jumps) > 1 else "") + " at "
            + ", ".join(jumps) + " may lead to it, but "
            + ("their targets are" if len(jumps) > 1 else "its targets are")
            + " unknown")


def _where(cfg: FunctionCFG, address: int) -> str:
    off = address - cfg.entry
    if off < 0:  # a gcc .cold part placed below the function
        return f"{cfg.name}-{-off:#x}"
    return f"{cfg.name}+{off:#x}" if off else cfg.name
