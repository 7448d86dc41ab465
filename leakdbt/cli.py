"""The ``leakdbt`` command: thin click wrappers over the Python API.

Every :class:`~leakdbt.errors.LeakDBTError` becomes one line on stderr and its exit status;
any other exception is reported as an internal error on one line (set ``LEAKDBT_DEBUG=1`` for
the traceback).  Heavy modules are imported inside the commands that need them, so that start-up
stays fast.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import click

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


@click.group()
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
@click.option("--strict", is_flag=True, help="Make unsupported system calls fatal.")
@click.option("--max-insns", type=click.IntRange(min=1), default=None,
              help="Stop the guest after N instructions (exit status 124).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop the guest after SECONDS of wall time (exit status 124).")
@click.option("--max-memory", default=None, help="Cap guest mappings, e.g. 512M.")
@click.option("--count-insns", is_flag=True,
              help="Count guest instructions exactly for --stats (slower).")
@click.option("--stats", is_flag=True, help="Print execution statistics on exit (stderr).")
@click.argument("binary", type=click.Path(dir_okay=False))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def exec(env_items: tuple[str, ...], clear_env: bool, rw: tuple[str, ...], root: str,
         cwd: str | None, strict: bool, max_insns: int | None, timeout: float | None,
         max_memory: str | None, count_insns: bool, stats: bool, binary: str,
         args: tuple[str, ...]) -> None:
    """Run BINARY [ARGS]... under leakdbt; exit with the guest's status."""
    from leakdbt.linux.launch import ExecOptions, execute
    from leakdbt.stats import format_stats

    env = {} if clear_env else dict(os.environ)
    for item in env_items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--env: expected K=V, got {item!r}")
        env[key] = value
    options = ExecOptions(
        argv=[binary, *args], env=[f"{k}={v}" for k, v in env.items()], root=root, rw=rw,
        cwd=cwd, strict=strict, max_insns=max_insns or 0, count_insns=count_insns,
        timeout=timeout or 0.0, max_memory=_size(max_memory) if max_memory else 0)
    result = execute(binary, options, on_exit=(lambda r: sys.stderr.write(format_stats(r)))
                     if stats else None)
    sys.exit(result.exit_status)


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.argument("binary", type=click.Path(dir_okay=False))
def info(fmt: str, binary: str) -> None:
    """Print what the loader sees in BINARY."""
    import json

    from leakdbt.loader.elf import load_image
    from leakdbt.loader.info import describe, format_info

    image = load_image(binary)
    click.echo(json.dumps(describe(image), indent=2) if fmt == "json" else format_info(image),
               nl=fmt == "json")


def _register_subcommands() -> None:
    from leakdbt.contract.commands import contract

    cli.add_command(contract)


_register_subcommands()


def main(argv: list[str] | None = None) -> Any:
    """Entry point: run the CLI and turn every error into one line and an exit status."""
    try:
        return cli.main(args=argv, prog_name="leakdbt", standalone_mode=False)
    except LeakDBTError as e:
        _fail(f"leakdbt: {e.one_line()}", e.exit_status)
    except click.exceptions.Abort:
        _fail("leakdbt: aborted", 130)
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


def _fail(message: str, status: int) -> None:
    with contextlib.suppress(Exception):  # stdout may be a closed pipe
        sys.stdout.flush()
    print(message, file=sys.stderr)
    sys.exit(status)
