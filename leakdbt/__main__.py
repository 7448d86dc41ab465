"""``python -m leakdbt`` runs the command-line interface."""

from leakdbt.cli import main

main()
