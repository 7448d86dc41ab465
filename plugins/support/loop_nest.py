"""The nest of a loop region: its inner loops and an order of its body (bounded-loop).

A loop region (the translator's natural loop of its header) may hold inner loops.  Back
edges are found by dominance inside the region: an edge ``a -> b`` whose target dominates
its source (every edge to the region's header is one).  The body must be acyclic once the
back edges are left out, else it is irreducible (a cycle entered other than through one
header) and refused.  Each other target of a back edge heads an inner natural loop: its
header and every block that reaches one of its latches without passing it.  Inner loops
nest to any depth up to ``MAX_DEPTH`` levels (the region's loop is the first); an inner
loop's *parent* is the smallest loop holding its header (another inner loop, or None: the
region's).  Deeper nests are refused.

:func:`nest` returns every inner loop (any depth), each with its blocks in a topological
order of its body (its header first, back edges left out) in which every loop it holds is
contiguous, its *order* (its body with each child loop one node), and the order of the
whole body in which every outermost inner loop is one node: the outer blocks and each
loop come after everything that reaches them in an iteration (ties by address).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from leakdbt.plugin_api import BlockView
from plugins.support.predication import Refused, successors, topological, topological_nodes

__all__ = ["MAX_DEPTH", "Inner", "Nest", "nest"]

MAX_DEPTH = 4
"""The deepest nest :func:`nest` accepts, in levels (the region's loop is the first): each
level multiplies the iterations bounded-loop runs (its bound times its parent's) and adds
its slots to the scratch frame."""


@dataclass(frozen=True)
class Inner:
    """An inner loop: its header, its blocks (topological order of its body, header first,
    each loop it holds contiguous), the blocks that jump back to the header, its body's
    order with each child loop one node, and its parent's header (None: the region's)."""

    header: int
    blocks: tuple[BlockView, ...]
    latches: frozenset[int]
    order: tuple[BlockView | Inner, ...] = ()
    parent: int | None = None

    @property
    def children(self) -> tuple[Inner, ...]:
        """The loops directly inside this one."""
        return tuple(n for n in self.order if isinstance(n, Inner))

    @property
    def members(self) -> frozenset[int]:
        return frozenset(b.start for b in self.blocks)


@dataclass(frozen=True)
class Nest:
    """A loop region's structure: ``order`` is its body, outer blocks as blocks and inner
    loops as :class:`Inner` nodes; ``edges``: every edge between the region's blocks except
    back edges (to the header or to an inner loop's header from inside that loop)."""

    header: int
    order: tuple[BlockView | Inner, ...]
    inners: tuple[Inner, ...]
    edges: dict[int, tuple[int, ...]]
    clones: frozenset[int] = frozenset()  # keys of callee clone blocks (bounded-loop)

    def inner_of(self, start: int) -> Inner | None:
        """The innermost inner loop holding the block at ``start``, or None (an outer
        block)."""
        holding = [i for i in self.inners if start in i.members]
        return min(holding, key=lambda i: len(i.members)) if holding else None

    def loop(self, header: int | None) -> Inner | None:
        """The inner loop headed at ``header`` (None: the region's loop, None)."""
        return next((i for i in self.inners if i.header == header), None)

    def ancestors(self, inner: Inner) -> list[Inner]:
        """The inner loops holding ``inner``, its parent first."""
        out: list[Inner] = []
        at = self.loop(inner.parent)
        while at is not None:
            out.append(at)
            at = self.loop(at.parent)
        return out

    def flat(self) -> list[BlockView]:
        """Every block, inner loops' blocks in their place in the order."""
        out: list[BlockView] = []
        for node in self.order:
            out += list(node.blocks) if isinstance(node, Inner) else [node]
        return out


def dominators(entry: int, graph: dict[int, list[int]]) -> dict[int, frozenset[int]]:
    """Each node reachable from ``entry`` -> the nodes that dominate it (itself included)."""
    nodes = list(graph)
    preds: dict[int, list[int]] = {n: [] for n in nodes}
    for n, succ in graph.items():
        for s in succ:
            preds[s].append(n)
    everything = frozenset(nodes)
    dom = {n: everything for n in nodes}
    dom[entry] = frozenset({entry})
    changed = True
    while changed:
        changed = False
        for n in nodes:
            if n == entry:
                continue
            incoming = [dom[p] for p in preds[n]]
            new = frozenset.intersection(*incoming) | {n} if incoming else frozenset({n})
            if new != dom[n]:
                dom[n], changed = new, True
    return dom


def nest(entry: int, blocks: Sequence[BlockView], bias: int) -> Nest:
    """The nest of the loop region headed by ``entry`` (see the module doc); raises
    :class:`Refused` for an irreducible body or loops nested more than ``MAX_DEPTH``
    deep."""
    by_start = {b.start: b for b in blocks}
    graph = {b.start: [s for s in successors(b) if s in by_start] for b in blocks}
    dom = dominators(entry, graph)
    back = {(a, s) for a, succ in graph.items() for s in succ if s in dom.get(a, ())}
    order = topological(entry, blocks, lambda a, s: (a, s) in back)
    if order is None:
        raise Refused("the loop's body is irreducible (a cycle in it is entered other than "
                      "through one header)")
    bodies: dict[int, set[int]] = {}
    for h in sorted({s for _, s in back} - {entry}):
        latches = frozenset(a for a, s in back if s == h)
        body = {h}
        stack = list(latches)
        while stack:
            n = stack.pop()
            if n in body:
                continue
            body.add(n)
            stack += [p for p, succ in graph.items() if n in succ]
        bodies[h] = body
    # A reducible body: two natural loops are disjoint or one holds the other.
    parent = {h: min((g for g in bodies if g != h and h in bodies[g]),
                     key=lambda g: len(bodies[g]), default=None) for h in bodies}
    for h in bodies:
        depth, at = 2, parent[h]
        while at is not None:
            depth, at = depth + 1, parent[at]
        if depth > MAX_DEPTH:
            holder = parent[h]
            assert holder is not None
            raise Refused(f"loops are nested more than {MAX_DEPTH} deep: the inner loop at "
                          f"{holder + bias:#x} holds another loop at {h + bias:#x}, "
                          f"{depth} levels down")
    edges = {a: tuple(s for s in succ if (a, s) not in back) for a, succ in graph.items()}
    built: dict[int, Inner] = {}
    for h in sorted(bodies, key=lambda g: (len(bodies[g]), g)):  # children first
        children = [built[g] for g in bodies if parent[g] == h]
        members = [by_start[b] for b in sorted(bodies[h])]
        body_order = _collapsed(h, members, children, edges)
        flat: list[BlockView] = []
        for node in body_order:
            flat += list(node.blocks) if isinstance(node, Inner) else [node]
        built[h] = Inner(h, tuple(flat), frozenset(a for a, s in back if s == h),
                         body_order, parent[h])
    inners = [built[h] for h in sorted(built)]
    top = [i for i in inners if i.parent is None]
    return Nest(entry, _collapsed(entry, blocks, top, edges), tuple(inners), edges)


def _collapsed(entry: int, blocks: Sequence[BlockView], inners: list[Inner],
               edges: dict[int, tuple[int, ...]]) -> tuple[BlockView | Inner, ...]:
    """The order of a loop's body (``blocks``, headed at ``entry``) with each loop it
    directly holds (``inners``) one node (Kahn's algorithm, by address); edges leaving
    the body are left out."""
    node_of = {b.start: b.start for b in blocks}
    for inner in inners:
        node_of.update(dict.fromkeys(inner.members, inner.header))
    nodes = set(node_of.values())
    out_edges: dict[int, set[int]] = {n: set() for n in nodes}
    for a, succ in edges.items():
        for s in succ:
            if a in node_of and s in node_of and node_of[a] != node_of[s]:
                out_edges[node_of[a]].add(node_of[s])
    by_node: dict[int, BlockView | Inner] = {b.start: b for b in blocks}
    by_node.update({i.header: i for i in inners})
    order = topological_nodes(entry, out_edges)
    assert order is not None and len(order) == len(nodes)  # without back edges: acyclic
    return tuple(by_node[n] for n in order)
