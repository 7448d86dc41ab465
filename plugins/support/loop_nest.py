"""The nest of a loop region: its inner loops and an order of its body (bounded-loop).

A loop region (the translator's natural loop of its header) may hold inner loops.  Back
edges are found by dominance inside the region: an edge ``a -> b`` whose target dominates
its source (every edge to the region's header is one).  The body must be acyclic once the
back edges are left out, else it is irreducible (a cycle entered other than through one
header) and refused.  Each other target of a back edge heads an inner natural loop: its
header and every block that reaches one of its latches without passing it.  Loops nested
more than two deep (an inner loop holding another one) are refused.

:func:`nest` returns the inner loops, each with its blocks in a topological order of its
body (its header first, edges back to it left out), and the order of the whole body in
which every inner loop is one node: the outer blocks and each inner loop come after
everything that reaches them in an iteration (ties by address).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from leakdbt.plugin_api import BlockView
from plugins.support.predication import Refused, successors, topological, topological_nodes

__all__ = ["Inner", "Nest", "nest"]


@dataclass(frozen=True)
class Inner:
    """An inner loop: its header, its blocks (topological order of its body, header first)
    and the blocks that jump back to the header."""

    header: int
    blocks: tuple[BlockView, ...]
    latches: frozenset[int]

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
        """The inner loop holding the block at ``start``, or None (an outer block)."""
        return next((i for i in self.inners if start in i.members), None)

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
    :class:`Refused` for an irreducible body or loops nested more than two deep."""
    by_start = {b.start: b for b in blocks}
    graph = {b.start: [s for s in successors(b) if s in by_start] for b in blocks}
    dom = dominators(entry, graph)
    back = {(a, s) for a, succ in graph.items() for s in succ if s in dom.get(a, ())}
    order = topological(entry, blocks, lambda a, s: (a, s) in back)
    if order is None:
        raise Refused("the loop's body is irreducible (a cycle in it is entered other than "
                      "through one header)")
    inners: list[Inner] = []
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
        inner = topological(h, [by_start[b] for b in sorted(body)],
                            lambda a, s, h=h: s == h)  # type: ignore[misc]
        if inner is None:
            other = min(s for a, s in back if s != h and s in body)
            raise Refused(f"loops are nested more than two deep: the inner loop at "
                          f"{h + bias:#x} holds another loop at {other + bias:#x}")
        inners.append(Inner(h, tuple(inner), latches))
    edges = {a: tuple(s for s in succ if (a, s) not in back) for a, succ in graph.items()}
    return Nest(entry, _collapsed(entry, blocks, inners, edges), tuple(inners), edges)


def _collapsed(entry: int, blocks: Sequence[BlockView], inners: list[Inner],
               edges: dict[int, tuple[int, ...]]) -> tuple[BlockView | Inner, ...]:
    """The body's order with each inner loop one node (Kahn's algorithm, by address)."""
    node_of = {b.start: b.start for b in blocks}
    for inner in inners:
        node_of.update(dict.fromkeys(inner.members, inner.header))
    nodes = set(node_of.values())
    out_edges: dict[int, set[int]] = {n: set() for n in nodes}
    for a, succ in edges.items():
        for s in succ:
            if node_of[a] != node_of[s]:
                out_edges[node_of[a]].add(node_of[s])
    by_node: dict[int, BlockView | Inner] = {b.start: b for b in blocks}
    by_node.update({i.header: i for i in inners})
    order = topological_nodes(entry, out_edges)
    assert order is not None and len(order) == len(nodes)  # without back edges: acyclic
    return tuple(by_node[n] for n in order)
