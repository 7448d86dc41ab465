"""Write a :class:`~leakdbt.contract.model.Contract` back as canonical TOML (format version 1).

``loads(dumps(c)) == c`` for every valid contract ``c``: the tests round-trip every example
through this module, so the format the docs describe, the reader and the writer cannot drift.
Defaults are written out explicitly, comments are not preserved.
"""

from __future__ import annotations

import re

from leakdbt.contract.model import (
    ArgvSource,
    Contract,
    DeclassifyWhen,
    EnvSource,
    FileSource,
    PointerSource,
    RegisterSource,
    Secret,
    StdinSource,
    SymbolSource,
)

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def quote(text: str) -> str:
    """A TOML basic string for ``text``."""
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)



def region_lines(at: str, kind: str | None, *, symbol: str | None = None,
                 length: int | None = None, bound: int | str | None = None, why: str = "",
                 clone_depth: int | None = None, clone_insns: int | None = None,
                 inner_bounds: tuple[tuple[str, int], ...] = (),
                 public: tuple[str, ...] = ()) -> list[str]:
    """One ``[[protect.region]]`` table as lines: the one writer of regions (the canonical
    dump and analyze's additions to a user's contract)."""
    lines = ["[[protect.region]]", f"at = {quote(at)}"]
    if kind is not None:
        lines.append(f"kind = {quote(kind)}")
    if symbol is not None:
        lines.append(f"symbol = {quote(symbol)}")
    if length is not None:
        lines.append(f"length = {length}")
    if bound is not None:
        lines.append(f"bound = {quote(bound) if isinstance(bound, str) else bound}")
    if inner_bounds:
        pairs = ", ".join(f"{quote(header)} = {n}" for header, n in inner_bounds)
        lines.append(f"inner_bounds = {{ {pairs} }}")
    if clone_depth is not None:
        lines.append(f"clone_depth = {clone_depth}")
    if clone_insns is not None:
        lines.append(f"clone_insns = {clone_insns}")
    if public:
        lines.append(f"public = {_strings(public)}")
    if why:
        lines.append(f"why = {quote(why)}")
    return lines

def _key(name: str) -> str:
    return name if _BARE.fullmatch(name) else quote(name)


def _strings(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(quote(i) for i in items) + "]"


def _secret(secret: Secret) -> list[str]:
    lines = ["[[secret]]", f"name = {quote(secret.name)}"]
    src = secret.source
    if isinstance(src, ArgvSource):
        lines.append(f"argv = {src.index}")
    elif isinstance(src, StdinSource):
        lines += ["stdin = true", f"offset = {src.offset}"]
    elif isinstance(src, FileSource):
        lines += [f"file = {quote(src.path)}", f"offset = {src.offset}"]
    elif isinstance(src, EnvSource):
        lines.append(f"env = {quote(src.name)}")
    elif isinstance(src, RegisterSource | PointerSource):
        key = "register" if isinstance(src, RegisterSource) else "pointer"
        lines += [f"{key} = {quote(src.register)}", f"function = {quote(str(src.function))}"]
    elif isinstance(src, SymbolSource):
        lines.append(f"symbol = {quote(str(src.symbol))}")
    lines += [f"length = {secret.length}", f"format = {quote(secret.format.value)}"]
    if secret.why:
        lines.append(f"why = {quote(secret.why)}")
    return lines


def dumps(contract: Contract) -> str:
    """Canonical TOML text for ``contract`` (its binding, if any, is not written)."""
    out = [f"version = {contract.version}"]
    if contract.description:
        out.append(f"description = {quote(contract.description)}")
    for secret in contract.secrets:
        out += ["", *_secret(secret)]
    protect = contract.protect
    out += ["", "[protect]", f"adversary = {quote(protect.adversary.value)}",
            f"policy = {quote(protect.policy.value)}"]
    if protect.functions:
        out.append(f"functions = {_strings(tuple(str(f) for f in protect.functions))}")
    if protect.passes_off:
        out.append(f"passes_off = {_strings(protect.passes_off)}")
    for region in protect.regions:
        table = region.table
        out += [""] + region_lines(
            str(region.at), region.kind.value if region.kind is not None else None,
            symbol=str(table.symbol) if table is not None and table.symbol is not None else None,
            length=table.length if table is not None else None,
            bound=region.bound, why=region.why, clone_depth=region.clone_depth,
            clone_insns=region.clone_insns, public=region.public,
            inner_bounds=tuple((str(h), n) for h, n in region.inner_bounds))
    check = contract.check
    out += ["", "[check]", f"trials = {check.trials}", f"seed = {check.seed}"]
    if check.args:
        out.append(f"args = {_strings(check.args)}")
    if check.stdin is not None:
        out.append(f"stdin = {quote(check.stdin)}")
    if check.declassify:
        out.append(f"declassify = {_strings(tuple(o.value for o in check.declassify))}")
    if check.env:
        out += ["", "[check.env]"]
        out += [f"{_key(name)} = {quote(value)}" for name, value in check.env]
    if check.values:
        out += ["", "[check.values]"]
        for name, values in check.values:
            owner = contract.secret(name)
            assert owner is not None
            texts = tuple(owner.render(v).decode("latin-1") for v in values)
            out.append(f"{_key(name)} = {_strings(texts)}")
    for point in check.declassify_at:
        out += ["", "[[check.declassify_at]]", f"name = {quote(point.name)}",
                f"at = {quote(str(point.at))}"]
        if point.when is not DeclassifyWhen.REACHED:
            out.append(f"when = {quote(point.when.value)}")
        if point.register is not None:
            out.append(f"register = {quote(point.register)}")
        if point.pointer is not None:
            out.append(f"pointer = {quote(point.pointer)}")
        if point.length != 8:
            out.append(f"length = {point.length}")
    return "\n".join(out) + "\n"
