"""``leakdbt check``: the command-line face of :mod:`leakdbt.leakage.check`."""

from __future__ import annotations

import shlex
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, NoReturn

import click

from leakdbt.cli_params import binary_argument
from leakdbt.errors import UsageError

if TYPE_CHECKING:
    from leakdbt.contract import Contract
    from leakdbt.contract.profiles import Profile
    from leakdbt.leakage.check import CheckOptions

MODES = {"original": ("original",), "hardened": ("hardened",),
         "both": ("original", "hardened")}


@click.command(context_settings={"ignore_unknown_options": True,
                                 "allow_interspersed_args": False})
@click.option("--contract", "contract_path", required=True,
              type=click.Path(dir_okay=False), help="The security contract (secrets, adversary).")
@click.option("--mode", type=click.Choice(list(MODES)), default="original",
              help="Check the original code, the hardened code, or both.")
@click.option("--trials", type=click.IntRange(min=2), default=None,
              help="Runs with random secrets (default: the contract's check.trials).")
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Seed of the trial values (default: the contract's check.seed).")
@click.option("--directed-rounds", type=click.IntRange(min=0), default=None,
              help="Rounds of directed trials derived from the comparisons the trials ran "
                   "(default 2; 0: none).")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Trials run in parallel in this many processes (default: one per CPU "
                   "core this process may use).")
@click.option("--granularity", type=click.Choice(["line", "page", "byte"]), default=None,
              help="Memory accesses at this granularity (default: what the adversary sees).")
@click.option("--cpu", metavar="NAME", default=None,
              help="CPU profile (default: the host's).")
@click.option("--max-insns", type=click.IntRange(min=1), default=None,
              help="Stop each trial after N guest instructions.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "sarif", "html"]),
              default="text")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the report to FILE (default: standard output).")
@click.option("--replay", metavar="I,J", default=None,
              help="Run trials I and J again and show every point where they differ.")
@click.option("--timing", is_flag=True,
              help="Instead: a dudect-style timing test, fixed vs random secrets (Welch's t "
                   "of the emulated scope's host time and of the cost model).")
@click.option("--measurements", type=click.IntRange(min=10), default=None,
              help="--timing: runs per mode, half of each class (default 200).")
@binary_argument()
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def check(contract_path: str, mode: str, trials: int | None, seed: int | None,
          directed_rounds: int | None, jobs: int | None,
          granularity: str | None, cpu: str | None, max_insns: int | None, fmt: str,
          output: str | None, replay: str | None, timing: bool, measurements: int | None,
          binary: str, args: tuple[str, ...]) -> None:
    """Run BINARY [ARGS]... with different secrets and report what an adversary could tell
    apart.  Exit status: 0 no leak, 1 leaks found, 2 error.

    leakdbt's options go before BINARY: everything after it is passed to the program.

    With --timing, a statistical timing test instead (dudect): --measurements runs with a
    fixed and with random secrets, and Welch's t between them of the host time of the
    emulated scope (what a co-tenant of the emulator sees, not the native program's timing)
    and of the cost model (a model, not a measurement); |t| > 4.5 is a leak."""
    from leakdbt.contract import load
    from leakdbt.contract.profiles import choose_profile
    from leakdbt.leakage.check import CheckOptions, progress_printer, replay_trials, run_check

    contract = load(contract_path, binary=binary)
    profile, _why = choose_profile(cpu)
    options = CheckOptions(MODES[mode], trials, seed, jobs or 0, granularity, max_insns or 0,
                           progress_printer())
    if directed_rounds is not None:
        options = replace(options, directed_rounds=directed_rounds)
    if timing or measurements is not None:
        _timing(contract_path, binary, args, contract, profile, options, timing, trials, jobs or 1,
                granularity, replay, fmt, output, measurements)
        return
    if replay is not None:
        try:
            first, second = (int(n) for n in replay.split(","))
        except ValueError:
            raise UsageError(f"--replay: expected two trial numbers I,J, got {replay!r}") \
                from None
        click.echo(replay_trials(binary, contract, profile, options, first, second,
                                 list(args) or None), nl=False)
        return
    report = run_check(binary, contract, profile, options, list(args) or None)
    command = ["leakdbt", "check", "--contract", contract_path, "--mode", mode]
    if directed_rounds is not None:
        command += ["--directed-rounds", str(directed_rounds)]
    if cpu:
        command += ["--cpu", cpu]
    command += ["--seed", str(report.seed), "--replay", "{first},{second}", binary, *args]
    if fmt == "json":
        from leakdbt.leakage.report import to_json

        text = to_json(report)
    elif fmt == "html":
        from leakdbt.leakage.html import check_html

        text = check_html(report)
    elif fmt == "sarif":
        import json

        from leakdbt.leakage.sarif import to_sarif

        text = json.dumps(to_sarif(report, command_line=["leakdbt", *sys.argv[1:]]),
                          indent=2) + "\n"
    else:
        from leakdbt.leakage.report import to_text

        text = to_text(report, " ".join(shlex.quote(c) if "{" not in c else c
                                        for c in command))
    _finish(options, text, output, report.leaks)


def _finish(options: CheckOptions, text: str, output: str | None, leaks: bool) -> NoReturn:
    """Clear the progress line, write the report, exit 1 when it found leaks (else 0)."""
    if options.progress is not None:
        sys.stderr.write("\r\x1b[K")
    if output:
        with open(output, "w") as f:
            f.write(text)
    else:
        click.echo(text, nl=False)
    sys.exit(1 if leaks else 0)


def _timing(contract_path: str, binary: str, args: tuple[str, ...], contract: Contract,
            profile: Profile, options: CheckOptions, timing: bool, trials: int | None, jobs: int,
            granularity: str | None, replay: str | None, fmt: str, output: str | None,
            measurements: int | None) -> None:
    """``check --timing`` (leakdbt.leakage.timing)."""
    from leakdbt.leakage.timing import DEFAULT_MEASUREMENTS, run_timing, to_json, to_text

    if not timing:
        raise UsageError("--measurements applies to --timing only")
    unused = [name for name, given in (("--trials", trials is not None), ("--jobs", jobs > 1),
                                       ("--granularity", granularity is not None),
                                       ("--replay", replay is not None),
                                       ("--format sarif", fmt == "sarif")) if given]
    if unused:
        raise UsageError(f"--timing does not take {', '.join(unused)} (measurements run one "
                         "at a time; use --measurements, --mode, --seed, --cpu)")
    report = run_timing(binary, contract, profile, options,
                        measurements or DEFAULT_MEASUREMENTS, list(args) or None)
    if fmt == "html":
        from leakdbt.leakage.html import timing_html

        text = timing_html(report)
    else:
        text = to_json(report) if fmt == "json" else to_text(report)
    _finish(options, text, output, report.leaks)
