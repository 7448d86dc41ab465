"""``leakdbt contract validate|explain``: output, error lines and exit statuses."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from leakdbt.contract.commands import contract

REPO = Path(__file__).resolve().parents[3]
REGION_LOOP = REPO / "contracts" / "region_loop.toml"


def run(*args: str) -> Result:
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        runner = CliRunner()
    return runner.invoke(contract, list(args))


@pytest.fixture(scope="module")
def region_loop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the test program")
    out = tmp_path_factory.mktemp("cli") / "region_loop"
    subprocess.run(["gcc", "-O2", "-static", "-no-pie", "-o", str(out),
                    str(REPO / "test_binaries" / "region_loop.c")], check=True)
    return out


def test_validate_ok() -> None:
    result = run("validate", str(REGION_LOOP))
    assert result.exit_code == 0
    assert result.stdout == (
        f"{REGION_LOOP}: valid (version 1: 1 secret, 1 region, adversary same-core, policy "
        "adaptive); locations not checked against a binary (use --binary)\n")


def test_validate_against_a_binary(region_loop: Path) -> None:
    result = run("validate", str(REGION_LOOP), "--binary", str(region_loop))
    assert result.exit_code == 0
    assert result.stdout.endswith(f"; every location resolves in {region_loop}\n")


def test_validate_reports_every_problem_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "contract.toml"
    bad.write_text('version = 1\n[[secret]]\nname = "k"\nargv = -1\nlength = 4\n'
                   '[protect]\nadversary = "remote"\npolicy = "maybe"\n')
    result = run("validate", str(bad))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{bad}:4: secret[0].argv: must be between 1 and 4096, got -1",
        f"{bad}:8: protect.policy: must be one of always, adaptive, never; got 'maybe'",
    ]


def test_validate_reports_binding_problems(tmp_path: Path, region_loop: Path) -> None:
    bad = tmp_path / "contract.toml"
    bad.write_text(REGION_LOOP.read_text().replace('at = "tiny_region"',
                                                   'at = "tiny_region+1"'))
    result = run("validate", str(bad), "--binary", str(region_loop))
    assert result.exit_code == 2
    assert result.stderr == (
        f"{bad}:20: protect.region[0].at: tiny_region+0x1 is not an instruction boundary "
        "(nearest instructions start at tiny_region and tiny_region+0x3)\n")


def test_validate_reports_binding_and_structural_problems_together(
        tmp_path: Path, region_loop: Path) -> None:
    bad = tmp_path / "contract.toml"
    text = REGION_LOOP.read_text().replace('at = "tiny_region"', 'at = "tiny_regoin"')
    bad.write_text(text.replace('adversary = "same-core"', 'adversary = "nobody"'))
    result = run("validate", str(bad), "--binary", str(region_loop))
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{bad}:") and ": protect.adversary: must be one of" in lines[0]
    assert lines[1] == (f"{bad}:20: protect.region[0].at: symbol 'tiny_regoin' is not in "
                        "region_loop (did you mean 'tiny_region'?)")


def test_validate_with_a_binary_that_is_not_elf(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_text("#!/bin/sh\n")
    result = run("validate", str(REGION_LOOP), "--binary", str(junk))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"leakdbt: {junk}: ")
    assert "not an ELF file" in result.stderr


def test_explain_text_names_each_secret_region_and_pass() -> None:
    result = run("explain", str(REGION_LOOP), "--cpu", "intel-skylake")
    assert result.exit_code == 0
    out = result.stdout
    assert "CPU profile: intel-skylake" in out and "why this profile: chosen with --cpu" in out
    assert "Adversary: same-core" in out and "+ intra-line:" in out
    assert "1. x: register rdi at entry of tiny_region, 8 bytes" in out
    assert "1. tiny_region: kind branch" in out
    assert "1. if-conversion - regions 1\n  2. ct-division - regions 1" in out


def test_explain_with_binary_shows_addresses(region_loop: Path) -> None:
    result = run("explain", str(REGION_LOOP), "--binary", str(region_loop), "--cpu",
                 "amd-zen3")
    assert result.exit_code == 0
    assert "block tiny_region = 0x" in result.stdout
    assert "entered at tiny_region = 0x" in result.stdout


def test_explain_json(region_loop: Path) -> None:
    result = run("explain", str(REGION_LOOP), "--binary", str(region_loop), "--cpu",
                 "intel-gracemont", "--format", "json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["profile"]["name"] == "intel-gracemont" and not data["profile"]["smt"]
    assert [o["name"] for o in data["observers"] if o["observed"]] == ["time", "cache-line"]
    assert data["mode"] == "adaptive"
    assert data["passes"][0]["name"] == "if-conversion"
    region = data["regions"][0]
    assert region["kind"] == "branch" and region["resolved"]["function"]["name"] == "tiny_region"
    assert data["secrets"][0]["resolved"]["function"]["name"] == "tiny_region"
    assert data["binary"]["kind"] == "static"


def test_explain_uses_the_host_profile_by_default() -> None:
    result = run("explain", str(REGION_LOOP))
    assert result.exit_code == 0
    assert "why this profile: host CPU" in result.stdout


def test_explain_unknown_cpu() -> None:
    result = run("explain", str(REGION_LOOP), "--cpu", "pentium")
    assert result.exit_code == 2
    assert result.stderr.startswith("leakdbt: unknown CPU profile 'pentium'; choose one of ")
