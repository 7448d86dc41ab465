"""``leakdbt contract validate|explain``: thin click wrappers over :mod:`leakdbt.contract`.

Registered by the top-level CLI with ``cli.add_command(contract)``.  Every problem of a
contract is printed as ``FILE:LINE: key: message`` on stderr, and the exit status is 2.
"""

from __future__ import annotations

import json
import sys
from typing import NoReturn

import click

from leakdbt.errors import ContractError, LeakDBTError


def _fail(error: LeakDBTError) -> NoReturn:
    if isinstance(error, ContractError):
        for line in error.lines():
            click.echo(line, err=True)
    else:
        click.echo(f"leakdbt: {error.one_line()}", err=True)
    sys.exit(error.exit_status)


@click.group("contract")
def contract() -> None:
    """Check security contracts and show the mechanisms they need on a CPU."""


@contract.command("validate")
@click.argument("path", metavar="CONTRACT", type=click.Path(dir_okay=False))
@click.option("--binary", type=click.Path(dir_okay=False),
              help="Also resolve every symbol and code location against this ELF binary.")
def validate(path: str, binary: str | None) -> None:
    """Check CONTRACT and report every mistake as FILE:LINE: key: message (exit status 2)."""
    from leakdbt.contract.load import load

    try:
        c = load(path, binary=binary)
    except LeakDBTError as e:
        _fail(e)
    regions = len(c.protect.regions)
    summary = (f"{path}: valid (version {c.version}: {len(c.secrets)} "
               f"secret{'s' if len(c.secrets) != 1 else ''}, {regions} "
               f"region{'s' if regions != 1 else ''}, adversary {c.protect.adversary.value}, "
               f"policy {c.protect.policy.value})")
    if binary:
        summary += f"; every location resolves in {binary}"
    else:
        summary += "; locations not checked against a binary (use --binary)"
    click.echo(summary)


@contract.command("explain")
@click.argument("path", metavar="CONTRACT", type=click.Path(dir_okay=False))
@click.option("--binary", type=click.Path(dir_okay=False),
              help="Resolve code locations against this ELF binary.")
@click.option("--cpu", "cpu", metavar="NAME",
              help="CPU profile to explain for (default: the host's, from CPUID).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="text for people, json for tools.")
def explain(path: str, binary: str | None, cpu: str | None, fmt: str) -> None:
    """Show what CONTRACT means on a CPU: observers, passes and parameters, and why."""
    from leakdbt.contract.explain import explain_json, explain_text
    from leakdbt.contract.load import load
    from leakdbt.contract.mapping import plan
    from leakdbt.contract.profiles import choose_profile

    try:
        profile, reason = choose_profile(cpu)
        c = load(path, binary=binary)
    except LeakDBTError as e:
        _fail(e)
    p = plan(c, profile)
    if fmt == "json":
        click.echo(json.dumps(explain_json(p, reason), indent=2))
    else:
        click.echo(explain_text(p, reason), nl=False)
