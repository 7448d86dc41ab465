"""Command-line parameters shared by several commands, defined once so that they mean and
parse the same everywhere: BINARY, and the tenancy detectors' trust options."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., object])


class BinaryPath(click.Path):
    """BINARY: a file path.  Commands stop parsing their own options at BINARY (the rest is
    the guest's), so an unknown option lands here; say that, not "cannot read"."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value.startswith("-") and not os.path.exists(value):
            name = value.partition("=")[0]
            known = [o for p in (ctx.command.params if ctx else []) for o in p.opts]
            raise click.NoSuchOption(name, possibilities=difflib.get_close_matches(name, known),
                                     ctx=ctx)
        return super().convert(value, param, ctx)


def binary_argument() -> Callable[[F], F]:
    """The BINARY argument of every command that runs or reads a program."""
    return click.argument("binary", type=BinaryPath(dir_okay=False))


def trust_options(prefix: str = "") -> Callable[[F], F]:
    """Add the three trust options (parameters ``trust_uid``, ``trust_name``,
    ``trust_cgroup``, each a tuple); ``prefix`` starts each help text."""
    def help_text(what: str) -> str:
        text = f"{prefix}processes {what} (repeatable)."
        return text[0].upper() + text[1:]

    def add(command: F) -> F:
        for option in reversed((
                click.option("--trust-uid", multiple=True, type=click.IntRange(min=0),
                             metavar="UID", help=help_text("of this user are trusted co-tenants")),
                click.option("--trust-name", multiple=True, metavar="COMM",
                             help=help_text("with this command name are trusted")),
                click.option("--trust-cgroup", multiple=True, metavar="PATH",
                             help=help_text("in this cgroup (or below) are trusted")))):
            command = option(command)
        return command
    return add
