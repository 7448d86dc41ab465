"""`leakdbt harden` refusals not covered by test_harden_file.py: each is one line on stderr,
exit status 2, and no output file.  The inputs are built here (small C or assembly files),
so each message is reached through the command as a user would reach it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import REPO, binary, run_leakdbt

CONTRACTS = REPO / "contracts"


def refused(tmp_path: Path, contract: Path | str, exe: str | Path, *flags: str) -> str:
    """Harden ``exe``; assert the refusal's form; return its message."""
    out = tmp_path / "out"
    run = run_leakdbt(["harden", "--contract", str(contract), "--cpu", "intel-skylake",
                       *flags, "-o", str(out), str(exe)])
    assert run.status == 2, run.stderr
    assert not out.exists()
    assert not list(tmp_path.glob(".leakdbt-harden-*"))  # no temporary file either
    lines = run.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("leakdbt: "), lines
    return lines[0].removeprefix("leakdbt: ")


def contract(tmp_path: Path, secret: str, regions: list[tuple[str, str]]) -> Path:
    """A contract with ``secret`` (TOML lines of a [[secret]]) and ``regions`` (at, kind)."""
    lines = ["version = 1", 'description = "a harden refusal"', "", "[[secret]]",
             'name = "s"', *secret.splitlines(), "", "[protect]",
             'adversary = "co-resident"', 'policy = "always"', ""]
    for at, kind in regions:
        lines += ["[[protect.region]]", f'at = "{at}"', f'kind = "{kind}"', ""]
    path = tmp_path / "c.toml"
    path.write_text("\n".join(lines))
    return path


REGISTER_SECRET = 'register = "rsi"\nfunction = "{}"\nlength = 4'


def test_a_contract_without_regions(built: Path, tmp_path: Path) -> None:
    assert refused(tmp_path, CONTRACTS / "entry_div.toml", binary("static", "entry_div")) == (
        f"{CONTRACTS / 'entry_div.toml'}: the contract names no region to harden")


def test_a_region_in_a_library_the_program_loads(built: Path, tmp_path: Path) -> None:
    c = contract(tmp_path, 'argv = 1\nlength = 32\nformat = "hex"',
                 [("libcrypto.so.3:BN_mod_exp_mont", "function")])
    assert refused(tmp_path, c, binary("dynamic", "ossl_modexp")) == (
        "region libcrypto.so.3:BN_mod_exp_mont is in libcrypto.so.3, not in this file: "
        "harden libcrypto.so.3 itself")


def test_a_mode_file_path_too_long_for_the_file(built: Path, tmp_path: Path) -> None:
    path = "/tmp/" + "m" * 1100
    assert refused(tmp_path, CONTRACTS / "ct_modexp.toml", binary("static", "ct_modexp"),
                   "--mode", "adaptive", "--mode-file", path) == (
        f"--mode-file {path!r}: not a usable path")


def test_an_adaptive_library_needs_dt_init(tmp_path: Path) -> None:
    src = tmp_path / "div.c"
    src.write_text("unsigned divide(unsigned a, unsigned b) { return a / b; }\n")
    lib = tmp_path / "libdiv.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-nostartfiles", "-o", str(lib),
                    str(src)], check=True)
    c = contract(tmp_path, REGISTER_SECRET.format("divide"), [("divide", "divide")])
    assert refused(tmp_path, c, lib, "--mode", "adaptive") == (
        f"{lib}: a shared library without DT_INIT cannot run the adaptive mode's "
        "initialisation (harden it with --mode hardened)")
    # The same library hardens in the plain mode (no initialisation routine is needed).
    out = tmp_path / "hardened.so"
    run = run_leakdbt(["harden", "--contract", str(c), "--cpu", "intel-skylake", "-o",
                       str(out), str(lib)])
    assert run.status == 0 and out.exists(), run.stderr


LOOP_DIV = """\
	.text
	.globl	divloop
	.type	divloop, @function
divloop:
	movl	%edi, %eax
1:	xorl	%edx, %edx		/* a branch target 2 bytes after the entry */
	divl	%esi
	decl	%ecx
	jnz	1b
	ret
	.size	divloop, .-divloop
	.section .note.GNU-stack,"",@progbits
"""


def test_an_entry_too_short_for_the_jump(tmp_path: Path) -> None:
    """The region at divloop is its 2-byte entry block: the loop's head follows at +2, so a
    5-byte jump would overwrite another entry point.  (--allow-unhardened: no pass applies
    to a lone mov; the refusal is the jump's.)"""
    src = tmp_path / "loopdiv.S"
    src.write_text(LOOP_DIV)
    lib = tmp_path / "libloopdiv.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    c = contract(tmp_path, REGISTER_SECRET.format("divloop"), [("divloop", "divide")])
    assert refused(tmp_path, c, lib, "--allow-unhardened") == (
        "region divloop: its first 5 bytes cannot hold a jump (another entry point, or a "
        "call returning, inside them, or a block too short)")


def test_more_regions_than_the_adaptive_page_counts(tmp_path: Path) -> None:
    from leakdbt.monitor.modefile import MAX_REGIONS

    n = MAX_REGIONS + 1
    src = tmp_path / "many.c"
    src.write_text("#include <stdio.h>\n#include <stdlib.h>\n" + "".join(
        f"__attribute__((noipa)) unsigned d{i}(unsigned a, unsigned b) "
        f"{{ return a / b + {i}; }}\n" for i in range(n)) +
        "int main(int argc, char **argv) { unsigned s = 0, b = argc;\n" +
        "".join(f"  s += d{i}(1000003u, b);\n" for i in range(n)) +
        '  printf("%u\\n", s); (void)argv; return 0; }\n')
    exe = tmp_path / "many"
    subprocess.run(["gcc", "-O2", "-static", "-o", str(exe), str(src)], check=True)
    c = contract(tmp_path, 'argv = 1\nlength = 4\nformat = "hex"',
                 [(f"d{i}", "divide") for i in range(n)])
    assert refused(tmp_path, c, exe, "--mode", "adaptive") == (
        f"an adaptive file holds at most {MAX_REGIONS} regions")
