"""``leakdbt analyze``: the command-line face of :mod:`leakdbt.analysis.analyze`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from leakdbt.cli_params import binary_argument

if TYPE_CHECKING:
    from leakdbt.analysis.findings import AnalysisReport
    from leakdbt.contract.edit import RegionEntry


@click.command(context_settings={"ignore_unknown_options": True,
                                 "allow_interspersed_args": False})
@click.option("--contract", "contract_path", required=True, type=click.Path(dir_okay=False),
              help="The security contract whose secrets are tainted.")
@click.option("--write", is_flag=True,
              help="Add the suggested [[protect.region]] entries to the contract (its "
                   "comments and layout are kept).")
@click.option("--confirm", is_flag=True,
              help="Also run leakdbt check and mark the findings it confirms, with its "
                   "witness.")
@click.option("--trials", type=click.IntRange(min=1), default=None,
              help="Taint N runs, with the secrets check's first N trials get (test vectors "
                   "first), and merge their findings (default 1); with --confirm, the "
                   "checker's trials too (default: the contract's).")
@click.option("--cpu", metavar="NAME", default=None,
              help="The CPU profile: its cache line size and whether offsets within a line "
                   "leak decide the memory-access findings; with --confirm, the checker's "
                   "too (default: the host's).")
@click.option("--rw", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Host directory the guest may write to (repeatable), as for exec.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "sarif", "html"]),
              default="text")
@binary_argument()
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def analyze(contract_path: str, write: bool, confirm: bool, trials: int | None,
            cpu: str | None, rw: tuple[str, ...], fmt: str, binary: str,
            args: tuple[str, ...]) -> None:
    """Run BINARY [ARGS]... with the contract's secrets tainted (once, or --trials N times)
    and list every branch, memory access and variable-latency instruction they reach.

    leakdbt's options go before BINARY: everything after it is passed to the program."""
    from leakdbt.analysis.analyze import analyze as run
    from leakdbt.contract import load, loads
    from leakdbt.contract.edit import add_regions
    from leakdbt.contract.profiles import choose_profile

    contract = load(contract_path, binary=binary)
    profile, _why = choose_profile(cpu)
    report = run(binary, contract, list(args) or None, rw, profile, trials or 1)
    if confirm:
        from leakdbt.analysis.analyze import confirm as confirm_findings

        confirm_findings(report, binary, contract, profile,
                         max(trials, 2) if trials else contract.check.trials,
                         list(args) or None)
    added: list[RegionEntry] = []
    if write:
        with open(contract_path) as original:
            text = original.read()
        text, added = add_regions(text, report.regions, contract_path)
        if added:
            loads(text, path=contract_path, binary=binary)  # valid, or nothing is written
            with open(contract_path, "w") as out:
                out.write(text)
    if fmt == "html":
        from leakdbt.analysis.analyze import as_check_report
        from leakdbt.leakage.html import check_html

        click.echo(check_html(as_check_report(report, contract), "leakdbt analyze"), nl=False)
        return
    if fmt == "sarif":
        import sys

        from leakdbt.analysis.analyze import as_check_report
        from leakdbt.leakage.sarif import to_sarif

        click.echo(json.dumps(to_sarif(as_check_report(report, contract),
                                       command_line=["leakdbt", *sys.argv[1:]]), indent=2))
        return
    if fmt == "json":
        click.echo(json.dumps({
            "binary": report.binary, "contract": report.contract,
            "instructions": report.instructions, "default_rule": report.default_rule,
            "within_line": report.within_line, "runs": report.runs,
            "seconds": round(report.seconds, 3),
            "taint_seconds": round(report.taint_seconds, 3),
            "findings": [{"kind": f.kind.value, "location": f.location,
                          "address": f.address, "instruction": f.instruction,
                          "source": f"{f.source.file}:{f.source.line}" if f.source else None,
                          "secrets": list(f.secrets), "count": f.count,
                          "confirmed": f.confirmed or None}
                         for f in report.findings],
            "regions": [{"at": e.at, "kind": e.kind, "table": e.table, "length": e.length,
                         "bound": e.bound, "public": list(e.public),
                         "why": e.why, "refused": e.comment or None}
                        for e in report.regions],
            "written": [e.at for e in added],
            "counts": _counts(report, added),
            "growth": [{"suggested": {"at": g.suggested.at, "kind": g.suggested.kind},
                        "findings": g.findings,
                        "chosen": [{"at": e.at, "kind": e.kind} for e in g.chosen],
                        "attempts": [{"step": a.step, "at": a.entry.at if a.entry else None,
                                      "kind": a.entry.kind if a.entry else None,
                                      "accepted": a.accepted, "reason": a.reason or None}
                                     for a in g.attempts]}
                       for g in report.growth]}, indent=2))
        return
    click.echo(f"leakdbt analyze: {binary} {' '.join(args)}".rstrip())
    runs = f" ({report.runs} runs)" if report.runs > 1 else ""
    click.echo(f"  {report.instructions:,} instructions tracked in {report.seconds:.1f} s"
               f"{runs}")
    for f in report.findings:
        source = f" ({f.source.file}:{f.source.line})" if f.source else ""
        click.echo(f"  {f.kind.value} at {f.location}{source}: {f.instruction} "
                   f"[{', '.join(f.secrets)}; {f.count}x]")
        if f.confirmed:
            click.echo(f"    confirmed by leakdbt check: {f.confirmed}")
    if report.within_line:
        click.echo(f"  {report.within_line} memory access(es) the secrets move only within a "
                   f"{profile.line_size}-byte cache line: not findings against a "
                   f"{contract.protect.adversary.value} adversary on {profile.name}")
    if not report.findings:
        click.echo("  nothing depends on the secrets")
    for e in report.regions:
        state = "written" if e in added else ("already in the contract" if write
                                              else "suggested")
        table = f" table {e.table}" if e.table else ""
        table += f" length {e.length}" if e.length is not None else ""
        bound = ""
        if e.kind == "loop":
            bound = f" bound {e.bound}" if e.bound is not None else " (no bound known: add one)"
        public = f" public {','.join(e.public)}" if e.public else ""
        click.echo(f"  region {e.at} kind {e.kind}{table}{bound}{public}: {state}")
        if e.comment:
            click.echo(f"    no pass accepts it: {e.comment.split('): ', 1)[-1]}")
    for g in report.growth:
        if g.grown:
            click.echo(f"  region {g.suggested.at} kind {g.suggested.kind} refused "
                       f"({g.attempts[0].reason}): grown to "
                       + ", ".join(f"{e.at} kind {e.kind}" for e in g.chosen))
    counts = _counts(report, added)
    if report.regions:
        click.echo(f"  regions: {counts['regions']} suggested, {counts['written']} written, "
                   f"{counts['grown']} grown, {counts['refused']} refused (no pass accepts "
                   "them)")
    uncovered = sum(f.location not in report.covering for f in report.findings)
    if uncovered:
        click.echo(f"  {uncovered} finding(s) without a region: outside every function "
                   "symbol (stripped code) or in code whose control flow was not recovered")


def _counts(report: AnalysisReport, added: list[RegionEntry]) -> dict[str, int]:
    """How many regions were suggested, written, grown from a refused suggestion, and
    refused (no pass accepts them, nor any region grown around them)."""
    return {"regions": len(report.regions), "written": len(added),
            "grown": sum(g.grown for g in report.growth),
            "refused": sum(g.refused for g in report.growth)}
