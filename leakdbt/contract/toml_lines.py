"""Line numbers for the keys of a TOML document, which :mod:`tomllib` does not report.

:func:`key_lines` scans TOML text that tomllib has already accepted and maps every key path
(``("secret", 1, "length")``, ``("protect", "region", 0, "at")``) to the line where it is
written.  It follows TOML 1.0: ``[table]`` and ``[[array.of.tables]]`` headers, dotted and
quoted keys, inline tables and arrays (a value inside them gets the line it is written on),
basic, literal and multi-line strings, and comments.  The scanner is lenient: it trusts the
document to be valid and never raises; :func:`line_of` falls back to the nearest enclosing
table when a path is unknown.
"""

from __future__ import annotations

import bisect
import re
import tomllib
from collections.abc import Callable
from typing import Any

KeyPath = tuple[str | int, ...]

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def display(path: KeyPath) -> str:
    """``secret[1].length`` for ``("secret", 1, "length")``; odd keys are quoted."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if _BARE.fullmatch(part) else '"' + part.replace('"', '\\"') + '"'
            out += ("." if out else "") + text
    return out


def line_of(lines: dict[KeyPath, int], path: KeyPath) -> int:
    """The line of ``path``, or of its nearest recorded ancestor, or 1."""
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return 1


# Limits on a document's shape, checked before tomllib sees it: tomllib recurses once per
# nesting level (a deep document raises RecursionError), is quadratic in the components of a
# dotted key (100,000 took minutes), and int() refuses more than 4300 digits.  Contracts
# need a few levels, a few components and 20 digits.
MAX_NESTING = 64
MAX_KEY_PARTS = 64
MAX_DIGITS = 100

# Possessive parts and a start only at a word's beginning keep the search linear: a long
# run of key characters is tried once, not once per position with backtracking.
_KEY_PART = r"""(?:[A-Za-z0-9_-]++|"[^"\n]*+"|'[^'\n]*+')"""
_LONG_KEY = re.compile(r"(?<![A-Za-z0-9_-])" + _KEY_PART + r"(?:[ \t]*+\.[ \t]*+" + _KEY_PART
                       + "){" + str(MAX_KEY_PARTS) + ",}")
# Strings and comments (skipped), brackets (counted) and over-long digit runs.
_TOKENS = re.compile(
    r'"""(?:\\.|[^\\])*?"""' + r"|'''.*?'''" + r'|"(?:\\.|[^"\\\n])*"' + r"|'[^'\n]*'"
    + r"|#[^\n]*|[\[\]{}]|[0-9][0-9_]{" + str(MAX_DIGITS - 1) + ",}", re.DOTALL)


def shape_problem(text: str) -> tuple[int, str] | None:
    """(line, message) for a document nested deeper, with longer dotted keys or longer
    numbers than the limits above, else None.  Linear in the text."""
    m = _LONG_KEY.search(text)
    if m:
        return (text.count("\n", 0, m.start()) + 1,
                f"a dotted key with more than {MAX_KEY_PARTS} components")
    depth = 0
    for tok in _TOKENS.finditer(text):
        c = tok.group()
        if c in ("[", "{"):
            depth += 1
            if depth > MAX_NESTING:
                return (text.count("\n", 0, tok.start()) + 1,
                        f"arrays or tables nested more than {MAX_NESTING} deep")
        elif c in ("]", "}"):
            depth = max(depth - 1, 0)
        elif c[0].isdigit():
            return (text.count("\n", 0, tok.start()) + 1,
                    f"a number of more than {MAX_DIGITS} digits")
    return None


def key_lines(text: str) -> dict[KeyPath, int]:
    """Map each key path of the (valid) TOML ``text`` to its 1-based line number."""
    return _Scanner(text).run()


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.n = len(text)
        self.i = 0
        self.newlines = [m.start() for m in re.finditer("\n", text)]
        self.lines: dict[KeyPath, int] = {}
        self.aot: dict[KeyPath, int] = {}  # array-of-tables path -> elements seen so far

    def line(self, pos: int) -> int:
        return bisect.bisect_left(self.newlines, pos) + 1

    def record(self, path: KeyPath, pos: int) -> None:
        self.lines.setdefault(path, self.line(pos))

    def run(self) -> dict[KeyPath, int]:
        table: KeyPath = ()
        while True:
            self.skip_space(newlines=True)
            if self.i >= self.n:
                return self.lines
            start = self.i
            if self.text.startswith("[[", self.i):
                self.i += 2
                parts = self.keys()
                self.i = self.text.find("]]", self.i) + 2 or self.n
                table = self.header(parts, start, array=True)
            elif self.text[self.i] == "[":
                self.i += 1
                parts = self.keys()
                self.i = self.text.find("]", self.i) + 1 or self.n
                table = self.header(parts, start, array=False)
            else:
                self.key_value(table)
            self.skip_line_rest()

    def header(self, parts: list[str], pos: int, array: bool) -> KeyPath:
        path: KeyPath = ()
        for j, key in enumerate(parts):
            path = (*path, key)
            if array and j == len(parts) - 1:
                self.record(path, pos)
                self.aot[path] = self.aot.get(path, 0) + 1
                path = (*path, self.aot[path] - 1)
            elif path in self.aot:
                path = (*path, self.aot[path] - 1)
            self.record(path, pos)
        return path

    def key_value(self, table: KeyPath) -> None:
        start = self.i
        parts = self.keys()
        path = table
        for key in parts:
            path = (*path, key)
            self.record(path, start)
        self.skip_space()
        if self.i < self.n and self.text[self.i] == "=":
            self.i += 1
        self.skip_space()
        self.value(path)

    def keys(self) -> list[str]:
        """Parse a dotted key at the cursor."""
        parts: list[str] = []
        while True:
            self.skip_space()
            if self.i >= self.n:
                return parts
            c = self.text[self.i]
            if c in "\"'":
                end = self.string_end()
                raw = self.text[self.i:end]
                self.i = end
                try:
                    parts.append(str(tomllib.loads(f"k = {raw}")["k"]))
                except tomllib.TOMLDecodeError:
                    parts.append(raw.strip("\"'"))
            else:
                m = _BARE.match(self.text, self.i)
                if not m:
                    return parts
                parts.append(m.group())
                self.i = m.end()
            self.skip_space()
            if self.i < self.n and self.text[self.i] == ".":
                self.i += 1
                continue
            return parts

    def value(self, path: KeyPath) -> None:
        if self.i >= self.n:
            return
        c = self.text[self.i]
        if c in "\"'":
            self.i = self.string_end()
        elif c == "[":
            self.i += 1
            index = 0
            while True:
                self.skip_space(newlines=True)
                if self.i >= self.n:
                    return
                if self.text[self.i] == "]":
                    self.i += 1
                    return
                before = self.i
                self.record((*path, index), self.i)
                self.value((*path, index))
                self.skip_space(newlines=True)
                if self.i < self.n and self.text[self.i] == ",":
                    self.i += 1
                if self.i == before:  # not valid TOML; never loop forever
                    self.i += 1
                index += 1
        elif c == "{":
            self.i += 1
            while True:
                self.skip_space(newlines=True)
                if self.i >= self.n:
                    return
                if self.text[self.i] == "}":
                    self.i += 1
                    return
                before = self.i
                self.key_value(path)
                self.skip_space(newlines=True)
                if self.i < self.n and self.text[self.i] == ",":
                    self.i += 1
                if self.i == before:  # not valid TOML; never loop forever
                    self.i += 1
        else:
            while self.i < self.n and self.text[self.i] not in ",]}\n#":
                self.i += 1

    def string_end(self) -> int:
        """Index just after the string that starts at the cursor."""
        t, i = self.text, self.i
        for delim in ('"""', "'''"):
            if t.startswith(delim, i):
                j = i + 3
                while j < self.n:
                    if delim == '"""' and t[j] == "\\":
                        j += 2
                        continue
                    if t.startswith(delim, j):
                        # Up to two quotes just before the closing delimiter belong to the body.
                        k = j
                        while k < self.n and t[k] == delim[0]:
                            k += 1
                        return j + min(k - j, 5)
                    j += 1
                return self.n
        quote = t[i]
        j = i + 1
        while j < self.n and t[j] != quote and t[j] != "\n":
            if quote == '"' and t[j] == "\\":
                j += 1
            j += 1
        return min(j + 1, self.n)

    def skip_space(self, newlines: bool = False) -> None:
        while self.i < self.n:
            c = self.text[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self.i += 1
            elif c == "#" and newlines:
                end = self.text.find("\n", self.i)
                self.i = self.n if end < 0 else end
            else:
                return

    def skip_line_rest(self) -> None:
        """After a header or key/value pair: skip trailing space, comment and the newline."""
        self.skip_space()
        if self.i < self.n and self.text[self.i] == "#":
            end = self.text.find("\n", self.i)
            self.i = self.n if end < 0 else end
        elif self.i < self.n and self.text[self.i] not in "\n":
            # Unexpected text (cannot happen in valid TOML): skip the rest of the line.
            end = self.text.find("\n", self.i)
            self.i = self.n if end < 0 else end


def parse_toml(text: str, path: str, error: Callable[[str, list[tuple[int, str, str]]],
                                                     Exception]) -> dict[str, Any]:
    """``text`` parsed by tomllib after the shape check; any syntax problem is raised as
    ``error(path, [(line, "syntax", message)])`` (contracts and suite files alike)."""
    shape = shape_problem(text)
    if shape is not None:
        raise error(path, [(shape[0], "syntax", shape[1])])
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        line, message = _syntax_error(str(e))
        raise error(path, [(line, "syntax", message)]) from None
    except (RecursionError, ValueError) as e:  # limits shape_problem did not foresee
        raise error(path, [(1, "syntax", f"cannot parse: {e}")]) from None


def _syntax_error(message: str) -> tuple[int, str]:
    """tomllib's message as (line, text): its position suffix becomes a line and column."""
    m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if m:
        return int(m.group(1)), f"{message[: m.start()]} (column {m.group(2)})"
    m = re.search(r"\s*\(at end of document\)$", message)
    if m:
        return 1, f"{message[: m.start()]} at the end of the file"
    return 1, message
