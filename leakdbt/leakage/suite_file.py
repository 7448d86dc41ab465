"""Suite files (``leakdbt suite``, docs/suite.md): the checks of a whole library in one TOML
file, validated like contracts (every problem at once, as ``file:LINE: key: message``).

Paths (binaries, contracts) are relative to the suite file's directory; a binary may be a
glob, and each file it matches becomes an entry of its own.  Entries come out with absolute
paths: Dask workers find the binaries and contracts at those same paths.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from leakdbt.contract.toml_lines import KeyPath, display, key_lines, line_of, parse_toml
from leakdbt.errors import SuiteError

SUITE_VERSION = 1
MODES = {"original": ("original",), "hardened": ("hardened",),
         "both": ("original", "hardened")}


@dataclass(frozen=True)
class SuiteEntry:
    """One check of the suite: ``leakdbt check`` with these options."""

    name: str
    binary: str  # absolute
    contract: str  # absolute
    args: tuple[str, ...] | None  # None: the contract's check.args
    modes: tuple[str, ...]
    trials: int | None  # None: the contract's
    seed: int | None
    cpu: str | None  # None: the host's profile
    max_insns: int
    directed_rounds: int | None  # None: check's default
    timeout: float  # host seconds per trial on a worker (0: none)
    line: int  # where the entry is written in the suite file


def _string(v: object) -> str | None:
    return None if isinstance(v, str) and v else "must be a non-empty string"


def _strings(v: object) -> str | None:
    ok = isinstance(v, list) and all(isinstance(x, str) for x in v)
    return None if ok else "must be an array of strings"


def _mode(v: object) -> str | None:
    return None if v in MODES else f"must be one of {', '.join(MODES)}"


def _seconds(v: object) -> str | None:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < 1e7
    return None if ok else "must be a positive number of seconds"


def _count(least: int) -> Callable[[object], str | None]:
    def check(v: object) -> str | None:
        ok = isinstance(v, int) and not isinstance(v, bool) and v >= least
        return None if ok else f"must be an integer of at least {least}"
    return check


# key -> its check; the same keys may go in [defaults] except those marked entry-only.
_KEYS: dict[str, Callable[[object], str | None]] = {
    "name": _string, "binary": _string, "contract": _string, "args": _strings,
    "mode": _mode, "trials": _count(2), "seed": _count(0), "cpu": _string,
    "max_insns": _count(1), "directed_rounds": _count(0), "timeout": _seconds,
}
_ENTRY_ONLY = {"name", "binary"}


def load_suite(path: str) -> list[SuiteEntry]:
    """Read and validate the suite file at ``path``; :class:`SuiteError` lists every
    problem."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as e:
        raise SuiteError(path, [(1, "suite", f"cannot read: {e.strerror}")]) from None
    except UnicodeDecodeError:
        raise SuiteError(path, [(1, "suite", "not UTF-8 text")]) from None
    return parse_suite(text, path)


def parse_suite(text: str, path: str) -> list[SuiteEntry]:
    """Validate suite ``text`` (read from ``path``: messages, relative paths)."""
    doc = parse_toml(text, path, SuiteError)
    lines = key_lines(text)
    problems: list[tuple[int, str, str]] = []

    def problem(where: KeyPath, message: str) -> None:
        problems.append((line_of(lines, where), display(where), message))

    for key in doc:
        if key not in ("version", "defaults", "entry"):
            problem((key,), "unknown key (expected version, defaults, entry)")
    if doc.get("version") != SUITE_VERSION:
        problem(("version",), f"must be {SUITE_VERSION}")
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        problem(("defaults",), "must be a table")
        defaults = {}
    _check_keys(defaults, ("defaults",), problem, entry=False)
    raw = doc.get("entry")
    if not isinstance(raw, list) or not raw:
        problem(("entry",), "the suite needs at least one [[entry]]")
        raw = []
    base = os.path.dirname(os.path.abspath(path))
    entries: list[SuiteEntry] = []
    for n, item in enumerate(raw):
        where: KeyPath = ("entry", n)
        if not isinstance(item, dict):
            problem(where, "must be a table")
            continue
        if not _check_keys(item, where, problem, entry=True):
            continue
        entries += _expand({**defaults, **item}, base, line_of(lines, where),
                           partial(_in_entry, problem, where))
    if problems:
        raise SuiteError(path, sorted(problems, key=lambda p: p[0]))
    return entries


def _in_entry(problem: Callable[[KeyPath, str], None], where: KeyPath, key: str,
              message: str) -> None:
    problem((*where, key), message)


def _check_keys(table: dict[str, Any], where: KeyPath,
                problem: Callable[[KeyPath, str], None], entry: bool) -> bool:
    """Report unknown, misplaced, missing and ill-typed keys; True when all is well."""
    ok = True
    for key, value in table.items():
        check = _KEYS.get(key)
        if check is None or (not entry and key in _ENTRY_ONLY):
            problem((*where, key), f"unknown key (expected {', '.join(_KEYS)})")
            ok = False
        elif (message := check(value)) is not None:
            problem((*where, key), message)
            ok = False
    if entry and "binary" not in table:
        problem(where, "missing key binary")
        ok = False
    return ok


def _expand(item: dict[str, Any], base: str, line: int,
            problem: Callable[[str, str], None]) -> list[SuiteEntry]:
    """The entries of one ``[[entry]]``: one per binary its glob matches."""
    if "contract" not in item:
        problem("contract", "missing key contract (in the entry or in [defaults])")
        return []
    contract = os.path.join(base, item["contract"])
    if not os.path.isfile(contract):
        problem("contract", f"no such file: {item['contract']}")
        return []
    pattern = os.path.join(base, item["binary"])
    binaries = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    binaries = [b for b in binaries if os.path.isfile(b)]
    if not binaries:
        problem("binary", f"no file matches {item['binary']}")
        return []
    args = item.get("args")
    entries = []
    for b in binaries:
        name = item.get("name", os.path.basename(b))
        if len(binaries) > 1 and "name" in item:
            name = f"{name}: {os.path.basename(b)}"
        entries.append(SuiteEntry(
            name, os.path.abspath(b), os.path.abspath(contract),
            tuple(args) if args is not None else None, MODES[item.get("mode", "original")],
            item.get("trials"), item.get("seed"), item.get("cpu"), item.get("max_insns", 0),
            item.get("directed_rounds"), float(item.get("timeout", 0.0)), line))
    return entries
