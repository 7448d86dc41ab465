"""The ``leakdbt`` command: thin click wrappers over the Python API.

Every :class:`~leakdbt.errors.LeakDBTError` becomes one line on stderr and its exit status;
any other exception is reported as an internal error on one line (set ``LEAKDBT_DEBUG=1`` for
the traceback).  Heavy modules are imported inside the commands that need them, so that start-up
stays fast.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from typing import Any

import click

from leakdbt.cli_params import binary_argument, trust_options
from leakdbt.errors import LeakDBTError, UsageError

INTERNAL_ERROR_STATUS = 125


def _size(text: str) -> int:
    """Parse ``123``, ``64K``, ``512M`` or ``2G`` into bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().rstrip("b")
    mult = units.get(t[-1:], 1)
    number = t[:-1] if t[-1:] in units else t
    try:
        value = int(number) * mult
    except ValueError:
        raise UsageError(f"--max-memory: not a size: {text!r}") from None
    if value <= 0:
        raise UsageError(f"--max-memory: must be positive: {text!r}")
    return value


# Commands defined in their own layer's module, imported only when they run (or when
# ``leakdbt --help`` lists them), so that ``leakdbt exec`` loads neither the contract nor the
# translator, the checker or the analyses.
LAZY_COMMANDS = {
    "analyze": ("leakdbt.analysis.commands", "analyze"),
    "check": ("leakdbt.leakage.commands", "check"),
    "suite": ("leakdbt.leakage.suite_commands", "suite"),
    "tenancy": ("leakdbt.monitor.commands", "tenancy"),
    "monitor": ("leakdbt.monitor.commands", "monitor"),
    "contract": ("leakdbt.contract.commands", "contract"),
    "blocks": ("leakdbt.dbt.commands", "blocks"),
    "passes": ("leakdbt.dbt.commands", "passes"),
    "harden": ("leakdbt.elfpatch.commands", "harden"),
}


class LazyGroup(click.Group):
    """A command group whose LAZY_COMMANDS are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in LAZY_COMMANDS:
            module, name = LAZY_COMMANDS[cmd_name]
            command = getattr(importlib.import_module(module), name)
        return command


MAX_INSNS = 1 << 62  # the engine's instruction count is 64 bits
MAX_TIMEOUT = 1e7  # seconds (115 days): the engine's timeout is in microseconds


def _not_nan(value: float | None) -> float | None:
    """click's FloatRange lets NaN through (every comparison with it is false)."""
    if value is not None and value != value:
        raise click.BadParameter("nan is not a number of seconds")
    return value


@click.group(cls=LazyGroup)
@click.version_option(package_name="leakdbt")
def cli() -> None:
    """leakdbt: run x86-64 Linux binaries with side-channel hardening."""


@cli.command(context_settings={"ignore_unknown_options": True,
                               "allow_interspersed_args": False})
@click.option("--env", "env_items", multiple=True, metavar="K=V",
              help="Set an environment variable for the guest (repeatable).")
@click.option("--clear-env", is_flag=True, help="Start the guest with an empty environment.")
@click.option("--rw", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Host directory the guest may write to (repeatable).")
@click.option("--root", default="/", type=click.Path(exists=True, file_okay=False),
              help="Host directory used as the guest's / (default: the host's, read-only).")
@click.option("--cwd", default=None, help="Guest working directory (default: the current one).")
@click.option("--strict", is_flag=True,
              help="Make unsupported system calls fatal, and a region no pass can harden "
                   "an error in a whole-program contract too.")
@click.option("--max-insns", type=click.IntRange(min=1, max=MAX_INSNS), default=None,
              help="Stop the guest after N instructions (exit status 124).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True, max=MAX_TIMEOUT),
              default=None, callback=lambda _ctx, _param, value: _not_nan(value),
              help="Stop the guest after SECONDS of wall time, loading included (exit "
                   "status 124).")
@click.option("--max-memory", default=None,
              help="Cap guest mappings, e.g. 512M: mmap/brk beyond it fail with ENOMEM as "
                   "under RLIMIT_AS; a program that does not fit is refused (exit status 2).")
@click.option("--count-insns", is_flag=True,
              help="Count guest instructions exactly for --stats (slower).")
@click.option("--stats", is_flag=True, help="Print execution statistics on exit (stderr).")
@click.option("--contract", "contract_path", type=click.Path(dir_okay=False), default=None,
              help="Security contract whose regions are translated.")
@click.option("--mode", type=click.Choice(["fast", "hardened", "adaptive"]), default=None,
              help="Run the contract's regions from the original code (fast), the hardened "
                   "copies (hardened), or switch between them as co-tenants come and go "
                   "(adaptive); default: from the contract's policy.")
@click.option("--detector", default="procfs", metavar="NAME[:ARG]",
              help="Adaptive mode: the tenancy detector (leakdbt tenancy lists them).")
@click.option("--poll-ms", type=click.FloatRange(min=0.1), default=None,
              help="Adaptive mode: how often the detector is asked (default 20 ms).")
@click.option("--hold-ms", type=click.FloatRange(min=0), default=None,
              help="Adaptive mode: how long no co-tenant must be seen before running fast "
                   "again (default 200 ms).")
@click.option("--events", "events_path", type=click.Path(dir_okay=False), default=None,
              help="Adaptive mode: write every switch as a JSON line to FILE.")
@trust_options("Adaptive mode: ")
@click.option("--allow-unhardened", is_flag=True,
              help="Run regions that no pass can harden as they are (with the passes that "
                   "did apply) instead of stopping with an error.")
@click.option("--cpu", metavar="NAME", default=None,
              help="CPU profile the contract is mapped for (default: the host's).")
@click.option("--translate-all", is_flag=True,
              help="Research/debug: relocate every function (or those named by --function) "
                   "to the code cache and run it from there.")
@click.option("--function", "functions", multiple=True, metavar="NAME",
              help="With --translate-all: only this function (NAME or lib.so:NAME; "
                   "repeatable).")
@binary_argument()
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def exec(env_items: tuple[str, ...], clear_env: bool, rw: tuple[str, ...], root: str,
         cwd: str | None, strict: bool, max_insns: int | None, timeout: float | None,
         max_memory: str | None, count_insns: bool, stats: bool, contract_path: str | None,
         mode: str | None, detector: str, poll_ms: float | None, hold_ms: float | None,
         events_path: str | None, trust_uid: tuple[int, ...], trust_name: tuple[str, ...],
         trust_cgroup: tuple[str, ...], allow_unhardened: bool, cpu: str | None,
         translate_all: bool, functions: tuple[str, ...], binary: str,
         args: tuple[str, ...]) -> None:
    """Run BINARY [ARGS]... under leakdbt; exit with the guest's status.

    leakdbt's options go before BINARY: everything after it is passed to the program."""
    from leakdbt.dbt.mode import Mode
    from leakdbt.run.session import ExecOptions, execute
    from leakdbt.run.stats import format_stats

    if functions and not translate_all:
        raise UsageError("--function selects functions for --translate-all")
    if translate_all and contract_path:
        raise UsageError("--translate-all and --contract cannot be combined")
    regions = []
    contract = None
    run_mode = Mode.HARDENED
    hardener = None
    monitor = None
    if contract_path:
        from leakdbt.contract import load
        from leakdbt.contract.model import Policy
        from leakdbt.contract.profiles import choose_profile
        from leakdbt.run.protect import protection
        from leakdbt.run.scope import scoped_functions

        contract = load(contract_path, binary=binary)
        profile, _why = choose_profile(cpu)
        protected = protection(contract, profile, allow_unhardened, strict,
                               lambda line: print(line, file=sys.stderr, flush=True))
        the_plan = protected.plan
        regions = list(protected.regions)
        hardener = protected.hardener()
        # The policy in effect decides what "adaptive" (and no --mode) means.
        policy_mode = {Policy.NEVER: "fast", Policy.ALWAYS: "hardened",
                       Policy.ADAPTIVE: "adaptive"}[the_plan.mode]
        wanted = mode or policy_mode
        if wanted == "adaptive" and policy_mode != "adaptive":
            wanted = policy_mode  # always regions stay hardened, never regions fast
        if wanted == "adaptive":
            monitor = _monitor_factory(contract, detector, poll_ms, hold_ms, events_path,
                                       trust_uid, trust_name, trust_cgroup)
            wanted = "hardened"  # until the first observation says otherwise
        run_mode = Mode(wanted)
    else:
        given = [flag for flag, value in (
            ("--mode", mode), ("--allow-unhardened", allow_unhardened), ("--cpu", cpu),
            ("--detector", detector != "procfs"), ("--poll-ms", poll_ms),
            ("--hold-ms", hold_ms), ("--events", events_path), ("--trust-uid", trust_uid),
            ("--trust-name", trust_name), ("--trust-cgroup", trust_cgroup)) if value]
        if given:
            raise UsageError(f"{given[0]} needs --contract (the regions to harden)")

    env = {} if clear_env else dict(os.environ)
    for item in env_items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--env: expected K=V, got {item!r}")
        env[key] = value
    options = ExecOptions(
        argv=[binary, *args], env=[f"{k}={v}" for k, v in env.items()], root=root, rw=rw,
        cwd=cwd, strict=strict, max_insns=max_insns or 0, count_insns=count_insns,
        timeout=timeout or 0.0, max_memory=_size(max_memory) if max_memory else 0,
        regions=regions, mode=run_mode, count_entries=stats,
        translate_all=list(functions) if translate_all else None, hardener=hardener,
        monitor=monitor, count_scope=stats and contract is not None,
        scope_functions=scoped_functions(contract) if stats and contract is not None else None)
    result = execute(binary, options, on_exit=(lambda r: sys.stderr.write(format_stats(r)))
                     if stats else None)
    sys.exit(result.exit_status)


def _monitor_factory(contract: Any, detector: str, poll_ms: float | None,
                     hold_ms: float | None, events_path: str | None, trust_uid: tuple[int, ...],
                     trust_name: tuple[str, ...], trust_cgroup: tuple[str, ...]) -> Any:
    """How ``exec --mode adaptive`` makes its monitor once the dispatcher exists."""
    from leakdbt.monitor.detectors import create_detector, default_context
    from leakdbt.monitor.monitor import DEFAULT_HOLD_MS, DEFAULT_POLL_MS, Monitor

    tenancy = create_detector(detector, default_context(trust_uid, trust_name, trust_cgroup))
    events = open(events_path, "w") if events_path else None  # noqa: SIM115 - lives as long as the run

    def make(dispatcher: Any) -> Monitor:
        return Monitor(tenancy, dispatcher, contract.protect.adversary,
                       poll_ms or DEFAULT_POLL_MS,
                       DEFAULT_HOLD_MS if hold_ms is None else hold_ms, events)
    return make


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@binary_argument()
def info(fmt: str, binary: str) -> None:
    """Print what the loader sees in BINARY."""
    import json

    from leakdbt.loader.elf import load_image
    from leakdbt.loader.info import describe, format_info

    image = load_image(binary)
    click.echo(json.dumps(describe(image), indent=2) if fmt == "json" else format_info(image),
               nl=fmt == "json")




def main(argv: list[str] | None = None) -> Any:
    """Entry point: run the CLI and turn every error into one line and an exit status."""
    try:
        return cli.main(args=argv, prog_name="leakdbt", standalone_mode=False)
    except LeakDBTError as e:
        _fail(f"leakdbt: {e.one_line()}", e.exit_status)
    except click.exceptions.Abort:
        _fail("leakdbt: aborted", 130)
    except click.MissingParameter as e:
        given = sys.argv[1:] if argv is None else argv
        _fail(f"leakdbt: {_misplaced(e, given) or ' '.join(e.format_message().split())}", 2)
    except click.ClickException as e:
        _fail(f"leakdbt: {' '.join(e.format_message().split())}", 2)
    except KeyboardInterrupt:
        _fail("leakdbt: interrupted", 130)
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - the promise is: never a traceback
        if os.environ.get("LEAKDBT_DEBUG"):
            raise
        _fail(f"leakdbt: internal error: {type(e).__name__}: {e} "
              "(set LEAKDBT_DEBUG=1 for a traceback)", INTERNAL_ERROR_STATUS)


def _misplaced(error: click.MissingParameter, argv: list[str]) -> str | None:
    """The message for a required option typed after BINARY, where it became the guest's."""
    param, ctx = error.param, error.ctx
    if not isinstance(param, click.Option) or ctx is None:
        return None
    for i, word in enumerate(argv):
        name, eq, _value = word.partition("=")
        if name in param.opts:
            typed = word if eq or i + 1 == len(argv) else f"{word} {argv[i + 1]}"
            return (f"{name} must come before BINARY (everything after BINARY is passed to "
                    f"the program): {ctx.command_path} {typed} [OPTIONS] BINARY [ARGS]...")
    return None


def _fail(message: str, status: int) -> None:
    with contextlib.suppress(Exception):  # stdout may be a closed pipe
        sys.stdout.flush()
    print(message, file=sys.stderr)
    sys.exit(status)
