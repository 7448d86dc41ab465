"""The top-level command: lazy subcommands (a plain ``exec`` imports only what it runs) and
usage errors for leakdbt options typed after BINARY, where they belong to the guest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from leakdbt.cli import LAZY_COMMANDS, cli, main
from tests.conftest import binary

# What a plain ``leakdbt exec`` must not load: the contract, the translator and the layers
# above it, the assembler.  (Capstone is checked on the import path only: the machine's VEX
# vetting loads it at run time, when the first code page with a 0xc4/0xc5 byte is fetched.)
NOT_FOR_PLAIN_EXEC = ("keystone", "leakdbt.contract", "leakdbt.dbt", "leakdbt.monitor",
                      "leakdbt.leakage", "leakdbt.analysis")
# The default of ExecOptions.mode: the one module of the translator's package a plain run needs.
ALLOWED = {"leakdbt.dbt", "leakdbt.dbt.mode"}


def _loaded(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m not in ALLOWED
                  and any(m == p or m.startswith(p + ".") for p in prefixes))


def test_exec_import_path_loads_no_contract_translator_or_decoder(tmp_path: Path) -> None:
    """Everything ``exec`` imports before it runs the guest (the run fails at loading)."""
    probe = ("import sys\nfrom leakdbt.cli import main\n"
             "try:\n    main(['exec', sys.argv[1]])\nexcept SystemExit as e:\n"
             "    print(e.code)\nprint(*sorted(sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=60)
    status, modules = done.stdout.split("\n", 1)
    assert status == "2", done.stderr  # the missing file: the whole exec path was imported
    assert "leakdbt.run.session" in modules.split()
    assert _loaded(modules.split(), ("capstone", *NOT_FOR_PLAIN_EXEC)) == []


def test_plain_exec_of_hello_imports_none_of_the_optional_layers(built: Path) -> None:
    """A real run under ``-X importtime``: the modules it lists are all it imported."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "leakdbt", "exec",
                           binary("static", "hello")], capture_output=True, text=True,
                          timeout=120)
    assert (done.returncode, done.stdout) == (0, "hello\n"), done.stderr
    imported = [line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:") and "|" in line]
    assert "leakdbt.machine.machine" in imported
    assert _loaded(imported, NOT_FOR_PLAIN_EXEC) == []


def test_every_lazy_command_resolves_and_is_listed() -> None:
    import click

    ctx = click.Context(cli)
    assert set(LAZY_COMMANDS) <= set(cli.list_commands(ctx))
    for name in LAZY_COMMANDS:
        command = cli.get_command(ctx, name)
        assert isinstance(command, click.Command) and command.name == name


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        status = 0
    except SystemExit as e:
        status = int(e.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("command", ["check", "analyze"])
@pytest.mark.parametrize("typed", [["--contract", "c.toml"], ["--contract=c.toml"]])
def test_required_option_after_binary_says_to_move_it(
        capsys: pytest.CaptureFixture[str], command: str, typed: list[str]) -> None:
    status, out, err = _run(capsys, command, "./prog", "x", *typed)
    assert (status, out) == (2, "")
    assert err.splitlines() == [
        f"leakdbt: --contract must come before BINARY (everything after BINARY is passed to "
        f"the program): leakdbt {command} {' '.join(typed)} [OPTIONS] BINARY [ARGS]..."]


def test_missing_option_not_typed_at_all_keeps_clicks_message(
        capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = _run(capsys, "check", "./prog", "--contracts", "c.toml")
    assert (status, out) == (2, "")
    assert err.splitlines() == ["leakdbt: Missing option '--contract'."]


@pytest.mark.parametrize("command", ["exec", "check", "analyze", "harden"])
def test_an_unknown_option_before_binary_is_named_as_one(
        capsys: pytest.CaptureFixture[str], command: str, tmp_path: Path) -> None:
    """Commands stop parsing at BINARY, so an unknown option would be taken for it; the
    error names the option (with click's suggestions), never "--contrct: cannot read"."""
    contract = ["--contract", str(tmp_path / "c.toml")] * (command != "exec")
    status, out, err = _run(capsys, command, *contract, "--contrct=x", "./prog")
    assert (status, out) == (2, "")
    [line] = err.splitlines()
    assert line.startswith("leakdbt: No such option '--contrct'. ") and "'--contract'" in line


def test_usage_lines_show_options_before_binary(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("exec", "check", "analyze"):
        status, out, _ = _run(capsys, command, "--help")
        assert status == 0
        assert out.splitlines()[0] == f"Usage: leakdbt {command} [OPTIONS] BINARY [ARGS]..."
        assert "options go before BINARY" in " ".join(out.split())


def test_docs_show_no_leakdbt_option_after_binary() -> None:
    """README and docs: no usage line or example puts a leakdbt option after BINARY."""
    import re

    repo = Path(__file__).resolve().parents[2]
    wrong = re.compile(r"leakdbt (?:exec|check|analyze) +(?:BINARY \[ARGS\]|\./\S+)[^`\n]*"
                       r" --[a-z]")
    for doc in [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            assert not wrong.search(line), f"{doc.name}:{number}: {line.strip()}"
