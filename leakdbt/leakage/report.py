"""Rendering a :class:`~leakdbt.leakage.findings.CheckReport` as text or JSON (SARIF:
:mod:`leakdbt.leakage.sarif`)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from leakdbt.leakage.findings import KIND_TEXT, CheckReport, Finding


def to_text(report: CheckReport, replay: str) -> str:
    """The report for people; ``replay`` is the command line that replays a witness, with
    ``{first}`` and ``{second}`` for the trial numbers."""
    lines = [f"leakdbt check: {report.binary} {' '.join(report.args)}".rstrip(),
             f"  contract {report.contract}: adversary {report.adversary}, CPU profile "
             f"{report.profile}",
             f"  observers: {', '.join(report.observers)}; memory at {report.granularity} "
             f"granularity; seed {report.seed}"]
    for m in report.modes:
        traces = ", ".join(f"{o} {n}" for o, n in m.distinct_traces.items())
        lines.append(f"  {m.mode}: {m.trials} trials; distinct traces: {traces}; first "
                     f"trial {m.instructions:,} instructions in scope, cost model "
                     f"{m.cost:,} cycles")
        if m.declassification:
            lines.append(f"    {m.declassification}")
    if report.derived:
        lines.append(f"  directed trials ({len(report.derived)}, derived from comparisons):")
        lines += [f"    {d.describe()}" for d in report.derived]
    if not report.leaks:
        lines.append("no leak found")
    for n, f in enumerate(report.findings, 1):
        lines += ["", *_finding(n, f, replay)]
    for text in report.outputs:
        lines += ["", f"output leak: {text}"]
    if report.leaks:
        lines += ["", f"{len(report.findings)} leak point(s)"
                  + (f", {len(report.outputs)} output leak(s)" if report.outputs else "")
                  + f" in {report.seconds:.1f} s"]
    return "\n".join(lines) + "\n"


def _finding(n: int, f: Finding, replay: str) -> list[str]:
    source = f" ({f.source.file}:{f.source.line})" if f.source else ""
    w = f.witness
    assert w is not None  # check's findings always have one
    out = [f"{n}. {f.kind.value} leak [{f.mode}] at {f.location}{source}: {f.instruction}",
           f"   {KIND_TEXT[f.kind]}; {f.distinct} distinct observations here over "
           f"{f.trials} trials",
           f"   witness: trial {w.first.index} ({w.first.describe()}) {w.observed[0]}",
           f"            trial {w.second.index} ({w.second.describe()}) {w.observed[1]}",
           "   replay:  " + replay.format(first=w.first.index, second=w.second.index)]
    if f.suggestion:
        out.append("   suggested contract region:")
        out += [f"     {line}" for line in f.suggestion.splitlines()]
    return out


def replay_command(contract: str, mode: str, cpu: str | None, seed: int, binary: str,
                   args: Sequence[str], options: Sequence[str] = ()) -> str:
    """The ``leakdbt check --replay`` command line of a witness, with ``{first}`` and
    ``{second}`` for the trial numbers (what :func:`to_text` takes); ``options`` are more
    check options to repeat."""
    command = ["leakdbt", "check", "--contract", contract, "--mode", mode, *options]
    if cpu:
        command += ["--cpu", cpu]
    command += ["--seed", str(seed), "--replay", "{first},{second}", binary, *args]
    return " ".join(shlex.quote(c) if "{" not in c else c for c in command)


def to_json(report: CheckReport) -> str:
    """The whole report as JSON (addresses as numbers, kinds as their names)."""
    return json.dumps(to_data(report), indent=2) + "\n"


def to_data(report: CheckReport) -> dict[str, Any]:
    """The whole report as JSON-ready data (what :func:`to_json` writes)."""
    def fix(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [fix(v) for v in value]
        if hasattr(value, "value") and not isinstance(value, int | str):
            return value.value
        return value

    data: dict[str, Any] = fix(asdict(report))
    data["leaks"] = report.leaks
    return data
