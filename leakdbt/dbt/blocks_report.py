"""What ``leakdbt blocks`` shows: recovered CFGs as a JSON-able dict, text, and Graphviz dot.

Pure functions: :func:`describe` turns :class:`~leakdbt.dbt.cfg.FunctionCFG` objects into the
documented dict (schema ``leakdbt-blocks/1``, see docs/cli.md), and :func:`format_text` and
:func:`format_dot` render that dict, so the three formats always agree.  Addresses are
link-time (a PIE starts near 0), the same whatever bias a run would load the file at.  Every
address that stands for a place is a *location*, ``{"address": int, "name": "sym+0xOFF"}``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from leakdbt.dbt.cfg import EdgeKind, FunctionCFG

SCHEMA = "leakdbt-blocks/1"

Namer = Callable[[int], str]


def namer(cfg: FunctionCFG, symbolize: Callable[[int], str | None]) -> Namer:
    """Names for addresses seen from ``cfg``: ``NAME+0xOFF`` inside the function's body,
    ``symbolize``'s answer elsewhere (its ``.cold`` parts, callees), else the hex address."""
    lo, hi = cfg.bounds[0]

    def name(address: int) -> str:
        if lo <= address < hi:
            offset = address - cfg.entry
            return cfg.name if offset == 0 else f"{cfg.name}{offset:+#x}"
        return symbolize(address) or f"{address:#x}"

    return name


def _loc(address: int, name: Namer) -> dict[str, Any]:
    return {"address": address, "name": name(address)}


def describe_function(cfg: FunctionCFG, name: Namer) -> dict[str, Any]:
    """One function of the ``functions`` list (see docs/cli.md for every field)."""
    doms = cfg.dominators
    pdoms = cfg.postdominators
    blocks = []
    for b in cfg.ordered():
        idom = doms.get(b.start)
        ipdom = pdoms.get(b.start)
        blocks.append({
            **_loc(b.start, name),
            "end": b.end,
            "reachable": b.start in doms,
            "instructions": [
                {"address": i.address, "bytes": i.raw.hex(), "text": i.text,
                 **({"target": _loc(i.target, name)} if i.target is not None else {})}
                for i in b.insns
            ],
            "successors": [
                {"kind": e.kind.value, "target": _loc(e.target, name), "inside": e.inside}
                for e in b.succs
            ],
            "predecessors": [_loc(p, name) for p in sorted(b.preds)],
            "idom": None if idom is None else _loc(idom, name),
            "reaches_exit": b.start in pdoms,
            "ipdom": None if ipdom is None else _loc(ipdom, name),
        })
    return {
        **_loc(cfg.entry, name),
        "parts": [{"start": lo, "end": hi, "name": name(lo)} for lo, hi in cfg.bounds],
        "blocks": blocks,
        "jump_tables": [
            {
                "jump": _loc(t.jump, name),
                "table": t.table,
                "entry_size": t.entry_size,
                "entries": [_loc(target, name) for target in t.targets],
            }
            for _, t in sorted(cfg.jump_tables.items())
        ],
        "unknown_jumps": [_loc(a, name) for a in sorted(cfg.unknown_jumps)],
        "undecodable": [_loc(a, name) for a in sorted(set(cfg.undecodable))],
    }


def describe(binary: str, kind: str, pie: bool,
             functions: Iterable[tuple[FunctionCFG, Namer]]) -> dict[str, Any]:
    """The whole report: ``{"schema", "binary", "kind", "pie", "functions": [...]}``."""
    return {
        "schema": SCHEMA,
        "binary": binary,
        "kind": kind,
        "pie": pie,
        "functions": [describe_function(cfg, name) for cfg, name in functions],
    }


# -- text ------------------------------------------------------------------------------------

def format_text(report: dict[str, Any]) -> str:
    """One paragraph per function header and per block, in address order."""
    pie = ", PIE: addresses are link-time" if report["pie"] else ""
    lines = [f"binary: {report['binary']} ({report['kind']}{pie})"]
    for f in report["functions"]:
        lines.append("")
        lines.extend(_function_text(f))
    return "\n".join(lines) + "\n"


def _function_text(f: dict[str, Any]) -> list[str]:
    n = len(f["blocks"])
    parts = ", ".join(f"{p['name']} {p['start']:#x}-{p['end']:#x}" for p in f["parts"])
    out = [f"function {f['name']} at {f['address']:#x}: {n} block{'s' if n != 1 else ''} "
           f"(code {parts})"]
    for t in f["jump_tables"]:
        entries = " ".join(e["name"] for e in t["entries"])
        out.append(f"  jump table for {t['jump']['name']}: {len(t['entries'])} x "
                   f"{t['entry_size']}-byte entries at {t['table']:#x}: {entries}")
    out.extend(f"  unknown indirect jump at {u['name']}" for u in f["unknown_jumps"])
    out.extend(f"  undecodable code at {u['name']}" for u in f["undecodable"])
    unknown = {u["address"] for u in f["unknown_jumps"]}
    width = max((len(i["bytes"]) for b in f["blocks"] for i in b["instructions"]), default=0)
    for b in f["blocks"]:
        out.append("")
        idom = b["idom"]["name"] if b["idom"] else ("-" if b["reachable"] else "unreachable")
        if not b["reaches_exit"]:
            ipdom = "never exits"
        else:
            ipdom = b["ipdom"]["name"] if b["ipdom"] else "exit"
        out.append(f"  {b['name']} {b['address']:#x}  idom {idom}  ipdom {ipdom}")
        out.extend(f"    {i['address']:#x}  {i['bytes']:<{width}}  {_insn_text(i)}"
                   for i in b["instructions"])
        edges = [f"{e['kind']} {e['target']['name']}" + ("" if e["inside"] else " (outside)")
                 for e in b["successors"]]
        if not edges:
            last = b["instructions"][-1]["address"]
            edges = ["unknown (indirect jump)" if last in unknown else "none"]
        out.append("    -> " + ", ".join(edges))
    return out


def _insn_text(i: dict[str, Any]) -> str:
    """The instruction, with its direct target named as objdump does (``<sym+0xOFF>``)."""
    return f"{i['text']} <{i['target']['name']}>" if "target" in i else i["text"]


# -- dot -------------------------------------------------------------------------------------

_EDGE_STYLE = {
    EdgeKind.FALLTHROUGH.value: 'style=dotted',
    EdgeKind.JUMP.value: 'style=solid',
    EdgeKind.TAKEN.value: 'color=darkgreen, fontcolor=darkgreen',
    EdgeKind.NOT_TAKEN.value: 'color=red3, fontcolor=red3',
    EdgeKind.RETURN_SITE.value: 'style=dashed',
    EdgeKind.JUMP_TABLE.value: 'color=blue, fontcolor=blue',
}


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _label(rows: list[str]) -> str:
    """A quoted dot label of left-justified lines."""
    return '"' + "".join(r.replace("\\", "\\\\").replace('"', '\\"') + "\\l" for r in rows) + '"'


def format_dot(report: dict[str, Any]) -> str:
    """One ``digraph`` with a cluster per function; blocks are boxes listing their
    instructions; edges are labelled with their kind (jump-table edges with the cases)."""
    out = [f"digraph {_quote('blocks of ' + report['binary'])} {{",
           '  node [shape=box, fontname="monospace", fontsize=10];',
           '  edge [fontname="sans-serif", fontsize=9];']
    for k, f in enumerate(report["functions"]):
        out.extend(_function_dot(k, f))
    out.append("}")
    return "\n".join(out) + "\n"


def _function_dot(k: int, f: dict[str, Any]) -> list[str]:
    def node(address: int) -> str:
        return f"f{k}_{address:x}"

    out = [f"  subgraph cluster_{k} {{", f"    label={_quote(f['name'])};"]
    cases: dict[tuple[int, int], list[int]] = {}
    for t in f["jump_tables"]:
        for i, e in enumerate(t["entries"]):
            cases.setdefault((t["jump"]["address"], e["address"]), []).append(i)
    unknown = {u["address"] for u in f["unknown_jumps"]}
    outside: dict[int, str] = {}
    for b in f["blocks"]:
        rows = [b["name"]] + [f"{i['address']:#x}  {_insn_text(i)}" for i in b["instructions"]]
        attrs = f"label={_label(rows)}"
        if b["address"] == f["address"]:
            attrs += ", penwidth=2"
        out.append(f"    {node(b['address'])} [{attrs}];")
        last = b["instructions"][-1]["address"]
        for e in b["successors"]:
            target = e["target"]["address"]
            if not e["inside"]:
                outside[target] = e["target"]["name"]
                dest = f"f{k}_out_{target:x}"
            else:
                dest = node(target)
            label = e["kind"]
            if e["kind"] == EdgeKind.JUMP_TABLE.value:
                label = "case " + ",".join(map(str, cases.get((last, target), [])))
            out.append(f"    {node(b['address'])} -> {dest} [label={_quote(label)}, "
                       f"{_EDGE_STYLE[e['kind']]}];")
        if last in unknown:
            out.append(f"    f{k}_unknown_{last:x} [label=\"?\", shape=circle, color=orange];")
            out.append(f"    {node(b['address'])} -> f{k}_unknown_{last:x} "
                       "[label=\"unknown\", color=orange, style=dashed];")
    for target, name in sorted(outside.items()):
        out.append(f"    f{k}_out_{target:x} [label={_quote(name)}, shape=plaintext];")
    for u in f["undecodable"]:
        out.append(f"    f{k}_bad_{u['address']:x} [label={_quote('undecodable at ' + u['name'])}"
                   ", shape=note, color=red];")
    out.append("  }")
    return out
