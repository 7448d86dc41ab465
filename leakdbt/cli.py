"""The ``leakdbt`` command: thin click wrappers over the Python API."""
import click


@click.group()
def main() -> None:
    """leakdbt: run x86-64 Linux binaries with side-channel hardening."""
