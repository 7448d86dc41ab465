"""`check --format html`: one self-contained page that headless Chromium renders with the
findings, their source lines and disassembly, the witness, and the CFG as SVG with the
leaking block and the hardened region marked; original and hardened side by side."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, binary, run_leakdbt

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking"]


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium (``make test`` installs it)."""
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is needed: install Debian's chromium (make test does)")
    return exe


@pytest.fixture(scope="module")
def page(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("html") / "report.html"
    run = run_leakdbt(["check", "--contract", str(REPO / "contracts" / "ct_modexp.toml"),
                       "--mode", "both", "--trials", "6", "--directed-rounds", "0",
                       "--cpu", "intel-skylake", "--format", "html", "-o", str(out),
                       binary("static", "ct_modexp")])
    assert run.status == 1, run.stderr
    return out


def test_the_page_needs_no_network(page: Path) -> None:
    html = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "<link" not in html and "<script" not in html


def test_chromium_renders_findings_source_lines_and_cfg(chromium: str, page: Path) -> None:
    dom = subprocess.run([chromium, *CHROMIUM_FLAGS, "--dump-dom", str(page)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    # The findings of the original code (tests/integration/test_check.py's ground truth)...
    for location in ("modexp+0x28", "modexp+0x2f", "modexp+0x3a"):
        assert f'data-location="{location}"' in dom
    # ...none in the hardened column, side by side with the original one.
    assert "original code: 3 finding(s)" in dom and "hardened code: 0 finding(s)" in dom
    # The source line of the branch, marked, and the branch in its block's disassembly.
    assert re.search(r'<span class="hit">\s*29\s+if \(\(e &gt;&gt; i\) &amp; 1\)', dom)
    assert re.search(r'<span class="hit">0x[0-9a-f]+\s+jae ', dom)
    # The witness: two trials' secrets side by side.
    assert "exponent=" in dom and "went to modexp+0x31" in dom
    # The CFG, drawn inline, with the leaking blocks filled and the region outlined.
    svg = dom[dom.index("<svg"):dom.index("</svg>")]
    assert "#ffc9c9" in svg and "hardened region" in svg and "modexp+0x20" in svg


def test_analyze_writes_the_same_page_for_its_findings(built: Path) -> None:
    run = run_leakdbt(["analyze", "--contract", str(REPO / "contracts" / "ct_modexp.toml"),
                       "--cpu", "intel-skylake", "--format", "html",
                       binary("static", "ct_modexp")])
    html = run.stdout.decode()
    assert run.status == 0 and html.startswith("<!DOCTYPE html>")
    assert 'data-location="modexp+0x2f"' in html and "<svg" in html
