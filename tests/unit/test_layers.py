"""The package's layers only look down: no import circle, no import from a higher layer.

The layer order is the one docs/architecture.md draws; this test reads every ``import`` (at
module level, inside functions and under ``TYPE_CHECKING`` alike) from the source, so a lazy
import cannot hide an upward dependency.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Bottom first.  A module may import from its own layer and the layers before it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("leakdbt.errors", "leakdbt.pluginload", "leakdbt.cli_params"),
    ("leakdbt.x86",),
    ("leakdbt.loader",),
    ("leakdbt.machine",),
    ("leakdbt.linux",),
    ("leakdbt.contract",),
    ("leakdbt.plugin_api",),
    ("leakdbt.dbt",),
    ("leakdbt.monitor",),
    ("leakdbt.run",),
    ("leakdbt.elfpatch",),
    ("leakdbt.leakage",),
    ("leakdbt.analysis",),
    ("leakdbt.cli", "leakdbt.__main__", "leakdbt"),
)
PLUGINS_MAY_IMPORT = ("leakdbt.plugin_api", "plugins")
ENGINE = "unicorn"
ENGINE_OWNER = "leakdbt.machine"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of everything ``path`` imports."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # ``from pkg import mod`` imports the submodule pkg.mod when there is one
            for a in node.names:
                candidate = f"{module}.{a.name}"
                out.add(candidate if _is_module(candidate) else module)
    return out


def _is_module(name: str) -> bool:
    path = ROOT / Path(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


@functools.cache
def _sources() -> dict[str, set[str]]:
    files = sorted((ROOT / "leakdbt").rglob("*.py")) + sorted((ROOT / "plugins").rglob("*.py"))
    return {_module_name(p): _imports(p) for p in files}


def _layer(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer index)
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module == prefix or module.startswith(prefix + ".")
            if inside and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def test_every_leakdbt_module_has_a_layer():
    unplaced = [m for m in _sources() if m.startswith("leakdbt") and _layer(m) is None]
    assert unplaced == []


def test_imports_only_look_down():
    upward = []
    for module, imported in _sources().items():
        if not module.startswith("leakdbt."):
            continue
        own = _layer(module)
        assert own is not None
        for target in imported:
            if not target.startswith("leakdbt") or target == "leakdbt":
                continue
            layer = _layer(target)
            if layer is not None and layer > own:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_plugins_import_only_the_plugin_api_and_their_support():
    wrong = [f"{m} -> {t}" for m, imported in _sources().items() if m.startswith("plugins")
             for t in imported if t.startswith("leakdbt")
             and not t.startswith(PLUGINS_MAY_IMPORT)]
    assert wrong == []


def test_only_the_machine_imports_the_engine():
    users = sorted(m for m, imported in _sources().items()
                   if any(t == ENGINE or t.startswith(ENGINE + ".") for t in imported)
                   and not m.startswith(ENGINE_OWNER))
    assert users == []


def test_no_import_circle():
    sources = _sources()
    graph = {m: {t for t in imported if t in sources} for m, imported in sources.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []
