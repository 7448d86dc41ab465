"""Rendering a :class:`~leakdbt.leakage.suite.SuiteReport` as text or JSON: per entry its
verdict and the check report ``leakdbt check`` would print (SARIF:
:func:`leakdbt.leakage.sarif.to_suite_sarif`; HTML: :mod:`leakdbt.leakage.html`)."""

from __future__ import annotations

import json
from typing import Any

from leakdbt.leakage.report import replay_command, to_data, to_text
from leakdbt.leakage.suite import EntryResult, SuiteReport

VERDICTS = {0: "no leak", 1: "LEAKS", 2: "ERROR"}
MODE_NAMES = {("original",): "original", ("hardened",): "hardened",
              ("original", "hardened"): "both"}


def entry_replay(result: EntryResult) -> str:
    """The replay command line of the entry's witnesses (see ``to_text``)."""
    e, r = result.entry, result.report
    assert r is not None
    extra = [] if e.directed_rounds is None else ["--directed-rounds", str(e.directed_rounds)]
    return replay_command(e.contract, MODE_NAMES.get(e.modes, e.modes[0]), e.cpu, r.seed,
                          e.binary, list(r.args), extra)


def to_suite_text(report: SuiteReport) -> str:
    """A verdict line per entry, then each entry's check report."""
    lines = [f"leakdbt suite: {report.suite}: {len(report.results)} entries, {report.tasks} "
             f"trials on {report.workers} Dask worker(s) in {report.seconds:.1f} s"]
    for r in report.results:
        lines.append(f"  {VERDICTS[r.status]:8} {r.entry.name}"
                     + (f": {r.error}" if r.error else ""))
    for r in report.results:
        if r.report is not None:
            body = to_text(r.report, entry_replay(r))
            lines += ["", f"== {r.entry.name}", body.rstrip("\n")]
    counts = [sum(r.status == s for r in report.results) for s in (0, 1, 2)]
    lines += ["", f"{counts[0]} without leaks, {counts[1]} with leaks, {counts[2]} errors"]
    return "\n".join(lines) + "\n"


def to_suite_data(report: SuiteReport) -> dict[str, Any]:
    """The whole suite report as JSON-ready data."""
    return {
        "suite": report.suite, "workers": report.workers, "tasks": report.tasks,
        "seconds": report.seconds, "status": report.status,
        "entries": [{"name": r.entry.name, "binary": r.entry.binary,
                     "contract": r.entry.contract, "modes": list(r.entry.modes),
                     "status": r.status, "error": r.error,
                     "report": to_data(r.report) if r.report is not None else None}
                    for r in report.results],
    }


def to_suite_json(report: SuiteReport) -> str:
    """:func:`to_suite_data` as JSON text."""
    return json.dumps(to_suite_data(report), indent=2) + "\n"
