"""``leakdbt harden``: the command-line face of :mod:`leakdbt.elfpatch.hardened`."""

from __future__ import annotations

import click

from leakdbt.cli_params import binary_argument
from leakdbt.monitor.modefile import DEFAULT_MODE_FILE


@click.command("harden")
@click.option("--contract", "contract_path", required=True, type=click.Path(dir_okay=False),
              help="The security contract whose regions are hardened.")
@click.option("--cpu", metavar="NAME", default=None,
              help="CPU profile the contract is mapped for (default: the host's).")
@click.option("--mode", type=click.Choice(["hardened", "adaptive"]), default="hardened",
              help="Always run the hardened copies, or choose at each entry from the mode "
                   "word a monitor writes (docs/harden.md).")
@click.option("--mode-file", default=DEFAULT_MODE_FILE, show_default=True,
              help="Adaptive: the file the program maps its mode word from.")
@click.option("--allow-unhardened", is_flag=True,
              help="Keep regions no pass can fully harden (with the passes that did apply) "
                   "instead of stopping with an error.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the hardened file.")
@binary_argument()
def harden(contract_path: str, cpu: str | None, mode: str, mode_file: str,
           allow_unhardened: bool, output: str, binary: str) -> None:
    """Write a hardened copy of BINARY (an executable or a shared library) to OUTPUT.
    Exit status 0, or 2 with a one-line reason (and no output file)."""
    from leakdbt.elfpatch.hardened import harden_file, write_file

    result = harden_file(binary, contract_path, cpu, mode, allow_unhardened, mode_file)
    write_file(output, result.data, binary)
    for r in result.regions:
        state = f"UNHARDENED ({r.unhardened})" if r.unhardened else ", ".join(r.passes)
        click.echo(f"{r.name}: {state}")
    click.echo(f"wrote {output} ({len(result.data)} bytes, mode {mode})")
