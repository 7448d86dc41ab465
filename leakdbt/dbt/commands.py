"""``leakdbt blocks``: the basic blocks, edges and dominators leakdbt recovers for functions.

Registered by the top-level CLI with ``cli.add_command(blocks)``.  A thin click wrapper over
:mod:`leakdbt.dbt.cfg` and :mod:`leakdbt.dbt.blocks_report`; heavy modules (the ELF loader,
Capstone) are imported inside the command so that ``leakdbt --help`` stays fast.  Errors are
:class:`~leakdbt.errors.LeakDBTError`, which the CLI prints as one line (exit status 2).
"""

from __future__ import annotations

import difflib
import shutil
import subprocess
from typing import TYPE_CHECKING

import click

from leakdbt.cli_params import binary_argument
from leakdbt.errors import UsageError

if TYPE_CHECKING:
    from leakdbt.loader.image import Image, Symbol

FORMATS = ("text", "json", "dot", "svg")


@click.command("blocks")
@binary_argument()
@click.option("--function", "-f", "names", multiple=True, metavar="NAME",
              help="A function to show (repeatable; default: every function symbol).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True,
              help="text for people, json for tools, dot/svg for Graphviz drawings.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write to FILE instead of standard output.")
def blocks(binary: str, names: tuple[str, ...], fmt: str, output: str | None) -> None:
    """Show the basic blocks leakdbt recovers in BINARY's functions: instructions, edges,
    immediate (post-)dominators, jump tables and unresolved indirect jumps."""
    import json

    from leakdbt.dbt.blocks_report import describe, format_dot, format_text, namer
    from leakdbt.dbt.cfg import function_cfg
    from leakdbt.loader.elf import load_image

    if fmt == "svg" and shutil.which("dot") is None:
        raise UsageError("--format svg needs Graphviz's dot program: install graphviz "
                         "(Debian: apt-get install graphviz)")
    image = load_image(binary)
    chosen = select_functions(image, names)
    cfgs = [function_cfg(image, sym) for sym in chosen]
    report = describe(binary, image.kind.value, image.is_pie,
                      ((cfg, namer(cfg, image.symbolize)) for cfg in cfgs))
    if fmt == "json":
        text = json.dumps(report, indent=2) + "\n"
    elif fmt == "text":
        text = format_text(report)
    else:
        text = format_dot(report)
        if fmt == "svg":
            text = render_svg(text)
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise UsageError(f"-o {output}: {e.strerror or e}") from None


def select_functions(image: Image, names: tuple[str, ...]) -> list[Symbol]:
    """The functions named (in the order given, once each), or every function of the image
    by address when none is named (a stripped binary's are found from its direct calls,
    named ``sub_ADDR``); gcc's ``NAME.cold`` parts are shown with NAME."""
    from leakdbt.loader.functions import code_functions

    functions = code_functions(image)
    if not names:
        if not functions:
            raise UsageError(f"{image.path}: no functions found; nothing to show")
        parents = {f.name for f in functions}
        return [f for f in functions if _cold_parent(f.name) not in parents]
    by_name = {f.name: f for f in functions}
    out: list[Symbol] = []
    for name in dict.fromkeys(names):
        sym = image.symbol(name) or by_name.get(name)
        if sym is None or sym.kind != "func" or not sym.value:
            raise UsageError(_not_a_function(image, name, sym))
        out.append(sym)
    return out


def _cold_parent(name: str) -> str | None:
    """``f`` for gcc's split-off ``f.cold`` / ``f.cold.N``, else None."""
    base, dot, rest = name.partition(".cold")
    return base if dot and (not rest or rest.startswith(".")) else None


def _not_a_function(image: Image, name: str, sym: Symbol | None) -> str:
    if sym is not None and sym.kind != "func":
        article = "an" if sym.kind[:1] in ("a", "e", "i", "o", "u") else "a"
        return (f"--function {name}: {image.path} has {name} as {article} {sym.kind} symbol, "
                "not a function")
    close = difflib.get_close_matches(name, sorted({f.name for f in image.functions}), n=3)
    hint = f"; close matches: {', '.join(close)}" if close else "; no close match"
    return f"--function {name}: no such function in {image.path}{hint}"


def render_svg(dot_source: str) -> str:
    """Graphviz's SVG drawing of ``dot_source`` (``dot -Tsvg``)."""
    exe = shutil.which("dot")
    if exe is None:
        raise UsageError("--format svg needs Graphviz's dot program: install graphviz "
                         "(Debian: apt-get install graphviz)")
    done = subprocess.run([exe, "-Tsvg"], input=dot_source, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["no message"])[0]
        raise RuntimeError(f"dot -Tsvg failed (status {done.returncode}): {first}")
    return done.stdout


@click.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def passes(fmt: str) -> None:
    """List the installed hardening passes in the order they run."""
    import json

    from leakdbt.dbt.passes import load_passes

    loaded = load_passes()
    rows = [{"name": p.name, "origin": p.origin, "after": list(p.hardening.after),
             "before": list(p.hardening.before)} for p in loaded]
    if fmt == "json":
        click.echo(json.dumps({"passes": rows}, indent=2))
        return
    if not rows:
        click.echo("no hardening passes installed")
    for i, r in enumerate(rows, 1):
        order = "; ".join(f"{k}: {', '.join(r[k])}" for k in ("after", "before") if r[k])
        click.echo(f"{i}. {r['name']}  ({r['origin']}){'  ' + order if order else ''}")
