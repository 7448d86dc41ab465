"""The ``--trust-uid/--trust-name/--trust-cgroup`` options, one definition for every command
that runs a tenancy detector (exec, tenancy, monitor), so they mean and parse the same."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

F = TypeVar("F", bound=Callable[..., object])


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
