"""``leakdbt tenancy``: what the tenancy detectors see right now; ``leakdbt monitor``: the
monitor of adaptive hardened files (docs/monitor.md).

Both are registered by the top-level CLI's ``LAZY_COMMANDS``.  For each detector
(default: procfs and cpuset) it prints the co-tenants observed now, with their evidence, plus
our pid, our CPUs and — from the detectors that read it — the CPU topology.  A detector whose
observation raises is shown as ``error: ...`` (the monitor would run hardened); the exit
status is still 0.  An unknown detector or a bad argument is a usage error (exit status 2).
``--list`` only lists the installed detectors.
"""

from __future__ import annotations

from typing import Any

import click

from leakdbt.cli_params import trust_options
from leakdbt.errors import UsageError
from leakdbt.monitor.detectors import DEFAULT_DETECTORS
from leakdbt.monitor.modefile import DEFAULT_MODE_FILE
from leakdbt.monitor.monitor import DEFAULT_HOLD_MS, DEFAULT_POLL_MS


@click.command("tenancy")
@click.option("--detector", "specs", multiple=True, metavar="NAME[:ARG]",
              help=f"A detector to ask (repeatable; default: {', '.join(DEFAULT_DETECTORS)}).")
@trust_options()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.option("--list", "list_only", is_flag=True,
              help="Only list the installed detectors (name, description, origin).")
def tenancy(specs: tuple[str, ...], trust_uid: tuple[int, ...], trust_name: tuple[str, ...],
            trust_cgroup: tuple[str, ...], fmt: str, list_only: bool) -> None:
    """Show who shares our core, our last-level cache or the machine right now, as the
    tenancy detectors of adaptive mode see it."""
    import json

    from leakdbt.monitor.detectors import create_detector, default_context, load_detectors

    available = load_detectors()
    if list_only:
        rows = [{"name": d.name, "description": d.factory.description, "origin": d.origin}
                for d in available.values()]
        if fmt == "json":
            click.echo(json.dumps({"detectors": rows}, indent=2))
        else:
            for r in rows:
                click.echo(f"{r['name']}: {r['description']}  ({r['origin']})")
        return
    context = default_context(trust_uid, trust_name, trust_cgroup)
    detectors = [(spec, create_detector(spec, context, available))
                 for spec in (specs or DEFAULT_DETECTORS)]
    report: dict[str, Any] = {"pid": context.pid, "cpus": sorted(context.cpus),
                              "topology": None, "detectors": []}
    for spec, detector in detectors:
        topology = getattr(detector, "topology", None)
        if report["topology"] is None and hasattr(topology, "as_dict"):
            report["topology"] = topology.as_dict()  # type: ignore[union-attr]
        entry: dict[str, Any] = {"detector": spec}
        try:
            seen = detector.observe()
        except Exception as e:  # noqa: BLE001 - shown, like the monitor treats it
            entry["error"] = f"{type(e).__name__}: {e}"
        else:
            entry["cotenants"] = [
                {"shares": c.shares, "pid": c.pid, "name": c.name, "uid": c.uid, "cpu": c.cpu,
                 "evidence": c.evidence} for c in seen.cotenants]
            entry["evidence"] = seen.evidence
        report["detectors"].append(entry)
    if fmt == "json":
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(format_text(report))


def _cpus(cpus: list[int]) -> str:
    runs: list[str] = []
    for c in cpus:
        if runs and runs[-1].split("-")[-1] == str(c - 1):
            runs[-1] = f"{runs[-1].split('-')[0]}-{c}"
        else:
            runs.append(str(c))
    return ",".join(runs) or "-"


def format_text(report: dict[str, Any]) -> str:
    lines = [f"our process: pid {report['pid']}, CPUs {_cpus(report['cpus'])}"]
    topo = report["topology"]
    if topo is None:
        lines.append("topology: not read (no detector asked reads it)")
    else:
        lines.append(f"online CPUs: {_cpus(topo['online'])}")
        lines.append("cores (SMT siblings): "
                     + "  ".join(_cpus(g) for g in topo["cores"]))
        lines.append(f"LLC groups ({topo['llc_source']}): "
                     + "  ".join(_cpus(g) for g in topo["llc_groups"]))
    for entry in report["detectors"]:
        lines.append("")
        if "error" in entry:
            lines.append(f"{entry['detector']}: error: {entry['error']}")
            continue
        cotenants = entry["cotenants"]
        verdict = "alone" if not cotenants else f"{len(cotenants)} co-tenant" + (
            "s" if len(cotenants) > 1 else "")
        lines.append(f"{entry['detector']}: {verdict}")
        for c in cotenants:
            who = [c["shares"].ljust(7)]
            if c["pid"]:
                who.append(f"pid {c['pid']}")
            who.append(c["name"] or "?")
            if c["uid"] >= 0:
                who.append(f"uid {c['uid']}")
            if c["cpu"] >= 0:
                who.append(f"cpu {c['cpu']}")
            lines.append("  " + "  ".join(who) + (f"  -- {c['evidence']}" if c["evidence"]
                                                  else ""))
        lines.append(f"  evidence: {entry['evidence']}")
    return "\n".join(lines)


@click.command("monitor", context_settings={"ignore_unknown_options": True,
                                            "allow_interspersed_args": False})
@click.option("--mode-file", default=DEFAULT_MODE_FILE, show_default=True, metavar="PATH",
              help="The mode file the adaptive hardened files map (docs/harden.md); created "
                   "(mode 0600) if missing.")
@click.option("--adversary", type=click.Choice(["same-core", "co-resident"]),
              default="co-resident", show_default=True,
              help="Whose sharing switches to hardened: a same-core adversary needs our core, "
                   "a co-resident one also our last-level cache.")
@click.option("--detector", default="procfs", show_default=True, metavar="NAME[:ARG]",
              help="The tenancy detector (leakdbt tenancy --list lists them).")
@click.option("--poll-ms", type=click.FloatRange(min=0.1), default=DEFAULT_POLL_MS,
              show_default=True, help="How often the detector is asked.")
@click.option("--hold-ms", type=click.FloatRange(min=0), default=DEFAULT_HOLD_MS,
              show_default=True,
              help="How long no co-tenant must be seen before the word says fast again.")
@click.option("--events", "events_path", type=click.Path(dir_okay=False), default=None,
              help="Write every switch as a JSON line to FILE.")
@trust_options()
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def monitor(mode_file: str, adversary: str, detector: str, poll_ms: float, hold_ms: float,
            events_path: str | None, trust_uid: tuple[int, ...], trust_name: tuple[str, ...],
            trust_cgroup: tuple[str, ...], command: tuple[str, ...]) -> None:
    """Write the mode word of adaptive hardened files from a tenancy detector, until SIGINT
    or SIGTERM (or, given COMMAND [ARGS]..., until that program exits: its status is ours).
    On exit the word is left hardened.  Options go before COMMAND."""
    import sys

    from leakdbt.contract.model import Adversary
    from leakdbt.monitor.detectors import create_detector, default_context
    from leakdbt.monitor.modefile import ModeFile
    from leakdbt.monitor.monitor import Monitor
    from leakdbt.monitor.serve import serve

    tenancy = create_detector(detector, default_context(trust_uid, trust_name, trust_cgroup))
    word = ModeFile(mode_file)
    try:
        events = open(events_path, "w") if events_path else None  # noqa: SIM115 - closed below
    except OSError as e:
        word.close()
        raise UsageError(f"--events {events_path}: {e.strerror or e}") from None
    try:
        status = serve(Monitor(tenancy, word, Adversary(adversary), poll_ms, hold_ms, events),
                       list(command))
    finally:
        word.close()
        if events is not None:
            events.close()
    sys.exit(status)
