"""``--format html``: a check (or analyze, or suite) report as one self-contained HTML file.

Per finding: the source lines around the leak (DWARF), the disassembly of its basic block,
the witness (two trials side by side), and its function's CFG as an inline SVG (the dot of
:mod:`leakdbt.dbt.blocks_report`, drawn by Graphviz) with the leaking blocks and the
contract's hardened regions marked.  With both modes checked, original and hardened
findings stand side by side.  The page is a Jinja2 template (package data,
``leakage/templates/report.html.j2``) with its CSS inline: no network access is needed.

``check --timing``'s page (:func:`timing_html`, ``timing.html.j2``) shows instead, per
mode, both classes' histograms and Welch's t (:mod:`leakdbt.leakage.html_timing`).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jinja2

from leakdbt.dbt.blocks_report import describe_function, format_dot, namer
from leakdbt.dbt.cfg import FunctionCFG, function_cfg
from leakdbt.errors import LeakDBTError
from leakdbt.leakage.findings import KIND_TEXT, CheckReport, Finding
from leakdbt.loader.elf import Image, load_image

if TYPE_CHECKING:
    from leakdbt.leakage.suite import SuiteReport
    from leakdbt.leakage.timing import TimingReport

SOURCE_CONTEXT = 3  # lines shown before and after a leak's line
LEAK_FILL = "#ffc9c9"
REGION_COLOR = "#1f5fbf"


@dataclass
class FindingView:
    """What the template shows of one finding."""

    finding: Finding
    kind_text: str
    source: list[tuple[int, str, bool]]  # (line number, text, is the leak's line)
    block: list[tuple[str, str, bool]]  # (address, instruction, is the leak's instruction)
    function: str  # whose CFG the svg draws ("" when none)


@dataclass
class CheckView:
    """What the template shows of one check report."""

    title: str
    report: CheckReport
    columns: list[tuple[str, list[FindingView]]]  # per mode
    graphs: list[tuple[str, str]]  # (function, svg)
    error: str = ""


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("leakdbt.leakage", "templates"),
                              autoescape=True, trim_blocks=True, lstrip_blocks=True)


def check_html(report: CheckReport, title: str = "leakdbt check") -> str:
    """The whole page for one check report."""
    return _environment().get_template("report.html.j2").render(
        title=title, checks=[check_view(report, title)])


def suite_html(suite: SuiteReport) -> str:
    """The whole page for a suite: a summary table, then each entry as :func:`check_html`."""
    checks = []
    for r in suite.results:
        if r.report is not None:
            checks.append(check_view(r.report, r.entry.name))
        else:
            empty = CheckReport(r.entry.binary, (), r.entry.contract, "", "", (), "", 0)
            checks.append(CheckView(r.entry.name, empty, [], [], r.error))
    return _environment().get_template("report.html.j2").render(
        title=f"leakdbt suite {suite.suite}", checks=checks, suite=suite)


def timing_html(report: TimingReport, title: str = "leakdbt check --timing") -> str:
    """The whole page for one timing test: what was measured, then per mode (side by side
    with ``--mode both``) each quantity's histograms, t and verdict."""
    from leakdbt.leakage import html_timing as view
    from leakdbt.leakage import timing

    plot = {"width": view.WIDTH, "height": view.HEIGHT, "left": view.LEFT,
            "right": view.WIDTH - view.RIGHT, "top": view.TOP,
            "bottom": view.HEIGHT - view.BOTTOM}
    notes = {"host_time": timing.HOST_TIME_NOTE, "cost_model": timing.COST_NOTE,
             "threshold": timing.THRESHOLD_NOTE}
    modes = [view.mode_view(m) for m in report.modes]
    return _environment().get_template("timing.html.j2").render(
        title=title, report=report, modes=modes, columns=max(len(modes), 1), plot=plot,
        notes=notes, threshold=report.threshold, crops=timing.CROP_PERCENTILES,
        host_unit=report.modes[0].host_time.unit if report.modes else "µs",
        cost_unit=report.modes[0].cost_model.unit if report.modes else "cycles",
        number=view.number, t_text=view.t_text)


def check_view(report: CheckReport, title: str) -> CheckView:
    """Findings per mode with their source, block and CFG."""
    regions = _region_starts(report.contract, report.binary)
    graphs: dict[str, str] = {}
    leaking: dict[tuple[str, str], set[int]] = {}
    views: dict[str, list[FindingView]] = {m.mode: [] for m in report.modes}
    for f in report.findings:
        path = _module_path(f, report.binary)
        cfg = _cfg_by_name(path, _function_name(f)) if path else None
        block = _block_of(cfg, f.link_address) if cfg is not None else []
        name = cfg.name if cfg is not None else ""
        if cfg is not None:
            leaking.setdefault((path, name), set()).add(_block_start(cfg, f.link_address))
        views.setdefault(f.mode, []).append(FindingView(
            f, KIND_TEXT[f.kind], _source(f), block, name))
    for (path, name), starts in leaking.items():
        cfg = _cfg_by_name(path, name)
        if cfg is not None and name not in graphs:
            graphs[name] = _svg(cfg, _image(path), starts, regions.get(path, set()))
    return CheckView(title, report, list(views.items()), sorted(graphs.items()))


def _source(f: Finding) -> list[tuple[int, str, bool]]:
    """The lines around the leak's source line, when the file is readable here."""
    if f.source is None:
        return []
    try:
        with open(f.source.file, encoding="utf-8", errors="replace") as src:
            text = src.read().splitlines()
    except OSError:
        return []
    lo = max(f.source.line - SOURCE_CONTEXT, 1)
    hi = min(f.source.line + SOURCE_CONTEXT, len(text))
    return [(n, text[n - 1], n == f.source.line) for n in range(lo, hi + 1)]


@functools.cache
def _image(path: str) -> Image:
    return load_image(path)


def _function_name(f: Finding) -> str:
    """``modexp`` of ``modexp+0x2f`` or ``libc.so.6:memcmp+0x10``."""
    return f.location.rsplit(":", 1)[-1].split("+", 1)[0]


def _module_path(f: Finding, binary: str) -> str:
    """The file of the finding's module; analyze's findings name only the module, and the
    main program's is the report's binary."""
    if f.module_path:
        return f.module_path
    return binary if f.module in ("", os.path.basename(binary)) else ""


@functools.cache
def _cfg_by_name(path: str, name: str) -> FunctionCFG | None:
    """The CFG of function ``name`` of the module at ``path`` (None when it has none)."""
    try:
        image = _image(path)
    except LeakDBTError:
        return None
    sym = image.symbol(name)
    if sym is None or sym.kind != "func" or not sym.value:
        return None
    return function_cfg(image, sym)


def _block_start(cfg: FunctionCFG, address: int) -> int:
    return next((b.start for b in cfg.ordered() if b.start <= address < b.end), address)


def _block_of(cfg: FunctionCFG, address: int) -> list[tuple[str, str, bool]]:
    for b in cfg.ordered():
        if b.start <= address < b.end:
            return [(f"{i.address:#x}", i.text, i.address == address) for i in b.insns]
    return []


def _region_starts(contract: str, binary: str) -> dict[str, set[int]]:
    """Module path -> link-time starts of the contract's regions (none if it won't bind)."""
    from leakdbt.contract import load

    try:
        bound = load(contract, binary=binary)
    except (LeakDBTError, OSError):
        return {}
    out: dict[str, set[int]] = {}
    if bound.binding is not None:
        for r in bound.binding.regions:
            out.setdefault(r.at.module_path, set()).add(r.at.address)
    return out


def _svg(cfg: FunctionCFG, image: Image, leaking: set[int], regions: set[int]) -> str:
    """The function's CFG drawn by Graphviz, leaking blocks filled, regions outlined."""
    from leakdbt.dbt.commands import render_svg

    described: dict[str, Any] = describe_function(cfg, namer(cfg, image.symbolize))
    dot = format_dot({"binary": image.path, "functions": [described]})
    marks = [f'  f0_{a:x} [style=filled, fillcolor="{LEAK_FILL}"];' for a in sorted(leaking)]
    marks += [f'  f0_{a:x} [color="{REGION_COLOR}", penwidth=3, '
              'xlabel="hardened region"];' for a in sorted(regions)
              if any(b.start == a for b in cfg.ordered())]
    dot = dot.rstrip().removesuffix("}") + "\n".join(marks) + "\n}\n"
    svg = render_svg(dot)
    return svg[svg.index("<svg"):]  # drop the XML prolog and doctype: inline in HTML
