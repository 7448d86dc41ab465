"""``leakdbt blocks``: every output format, the JSON schema, and one-line errors.

The program below is compiled by gcc in the test's temporary directory; what the report says
is checked against leakdbt's CFG API (the recovery itself is checked against objdump in
test_cfg.py), against the documented schema, and against Graphviz, which must accept the dot
output.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from leakdbt.cli import main
from leakdbt.dbt.cfg import function_cfg
from leakdbt.loader.elf import load_image

SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
#define NOIPA __attribute__((noipa))
volatile int sink;
NOIPA int a(int x) { sink = 1; return x + 1; }
NOIPA int b(int x) { sink = 2; return x * 3; }
NOIPA int c(int x) { sink = 3; return x - 7; }
NOIPA int pick(int k, int x) {
    switch (k) {
    case 0: return a(x); case 1: return b(x); case 2: return c(x);
    case 3: return a(x + 1); case 4: return b(x + 2); case 5: return c(x + 3);
    default: return 0;
    }
}
NOIPA int interp(const unsigned char *ops) {
    static void *labels[] = { &&op_add, &&op_end };
    int acc = 0;
    goto *labels[*ops++];
op_add: acc += 3; goto *labels[*ops++];
op_end: return acc;
}
NOIPA int careful(int x) {
    if (__builtin_expect(x == 4242, 0)) { fprintf(stderr, "no\n"); abort(); }
    return x * 2;
}
int main(int argc, char **argv) {
    static const unsigned char prog[] = {0, 1};
    (void)argv;
    return pick(argc, argc) + interp(prog) + careful(argc);
}
"""


@pytest.fixture(scope="module")
def dot() -> str:
    """Graphviz's dot (``make test`` installs Debian's graphviz)."""
    exe = shutil.which("dot")
    if exe is None:
        pytest.fail("Graphviz's dot is needed: install graphviz (make test does)")
    return exe


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("blocks")
    (d / "prog.c").write_text(SOURCE)
    out = d / "prog"
    subprocess.run(["gcc", "-O2", "-g", "-fPIE", "-pie", "-o", str(out), str(d / "prog.c")],
                   check=True, capture_output=True)
    return out


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``leakdbt blocks ARGS`` in-process: (exit status, stdout, stderr)."""
    try:
        main(["blocks", *args])
        status = 0
    except SystemExit as e:
        status = int(e.code or 0)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def report(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    status, out, err = run(capsys, *args, "--format", "json")
    assert (status, err) == (0, "")
    result: dict[str, Any] = json.loads(out)
    return result


# -- text -------------------------------------------------------------------------------------

def test_text_lists_each_block_with_its_instructions_and_edges(
        capsys: pytest.CaptureFixture[str], program: Path) -> None:
    status, out, err = run(capsys, str(program), "--function", "pick", "-f", "interp")
    assert (status, err) == (0, "")
    image = load_image(program)
    paragraphs = out.split("\n\n")
    assert paragraphs[0] == f"binary: {program} (dynamic, PIE: addresses are link-time)"
    for name in ("pick", "interp"):
        sym = image.symbol(name)
        assert sym is not None
        cfg = function_cfg(image, sym)
        header = next(p for p in paragraphs if p.startswith(f"function {name} at "))
        n = len(cfg.blocks)
        assert f": {n} block{'s' if n != 1 else ''} (code {name} " in header.splitlines()[0]
        for b in cfg.ordered():
            label = name if b.start == cfg.entry else f"{name}+{b.start - cfg.entry:#x}"
            [para] = [p for p in paragraphs if p.startswith(f"  {label} {b.start:#x}  idom ")]
            lines = para.splitlines()
            assert len(lines) == 1 + len(b.insns) + 1
            for line, insn in zip(lines[1:], b.insns, strict=False):
                assert line.split()[:2] == [f"{insn.address:#x}", insn.raw.hex()]
                assert insn.text in line
            assert lines[-1].startswith("    -> ")
            for e in b.succs:
                assert e.kind.value in lines[-1]
    assert re.search(r"^  jump table for pick\+0x[0-9a-f]+: 6 x 4-byte entries at 0x", out,
                     re.M)
    assert re.search(r"^  unknown indirect jump at interp\+0x[0-9a-f]+$", out, re.M)
    assert "-> unknown (indirect jump)" in out


def test_without_function_every_function_is_shown_once(capsys: pytest.CaptureFixture[str],
                                                       program: Path) -> None:
    image = load_image(program)
    names = [f["name"] for f in report(capsys, str(program))["functions"]]
    expected = [f.name for f in image.functions if ".cold" not in f.name]
    assert names == expected and "main" in names and "careful" in names
    colds = [f for f in image.functions if f.name.startswith("careful.cold")]
    careful = report(capsys, str(program), "-f", "careful")["functions"][0]
    # gcc's split-off unlikely path is shown as a part of careful, not as a function
    assert [p["name"] for p in careful["parts"]] == ["careful"] + [c.name for c in colds]


# -- json -------------------------------------------------------------------------------------

def _is_location(value: Any) -> bool:
    return (isinstance(value, dict) and set(value) == {"address", "name"}
            and isinstance(value["address"], int) and isinstance(value["name"], str))


def check_schema(doc: dict[str, Any]) -> None:
    """The schema documented in docs/cli.md, field by field, and its internal consistency."""
    assert set(doc) == {"schema", "binary", "kind", "pie", "functions"}
    assert doc["schema"] == "leakdbt-blocks/1" and isinstance(doc["pie"], bool)
    for f in doc["functions"]:
        assert set(f) == {"address", "name", "parts", "blocks", "jump_tables", "unknown_jumps",
                          "undecodable"}
        assert [set(p) for p in f["parts"]] == [{"start", "end", "name"}] * len(f["parts"])
        assert f["parts"][0]["start"] == f["address"]
        starts = {b["address"] for b in f["blocks"]}
        assert f["address"] in starts
        assert [b["address"] for b in f["blocks"]] == sorted(starts)
        preds: dict[int, set[int]] = {s: set() for s in starts}
        for b in f["blocks"]:
            assert set(b) == {"address", "name", "end", "reachable", "instructions",
                              "successors", "predecessors", "idom", "reaches_exit", "ipdom"}
            at = b["address"]
            for i in b["instructions"]:
                assert set(i) - {"target"} == {"address", "bytes", "text"}
                assert i["address"] == at and isinstance(i["text"], str)
                at += len(bytes.fromhex(i["bytes"]))
                assert "target" not in i or _is_location(i["target"])
            assert at == b["end"]
            for e in b["successors"]:
                assert set(e) == {"kind", "target", "inside"} and _is_location(e["target"])
                assert e["kind"] in {"fallthrough", "jump", "taken", "not-taken", "return-site",
                                     "jump-table"}
                assert e["inside"] == (e["target"]["address"] in starts)
                if e["inside"]:
                    preds[e["target"]["address"]].add(b["address"])
            assert all(map(_is_location, b["predecessors"]))
            assert b["idom"] is None or b["idom"]["address"] in starts
            assert b["ipdom"] is None or b["ipdom"]["address"] in starts
            assert b["reaches_exit"] or b["ipdom"] is None
            assert b["reachable"] == (b["idom"] is not None or b["address"] == f["address"])
        for b in f["blocks"]:
            assert {p["address"] for p in b["predecessors"]} == preds[b["address"]]
        for t in f["jump_tables"]:
            assert set(t) == {"jump", "table", "entry_size", "entries"}
            assert t["entry_size"] in (4, 8) and isinstance(t["table"], int)
            assert {e["address"] for e in t["entries"]} <= starts
        for u in f["unknown_jumps"] + f["undecodable"]:
            assert _is_location(u)


def test_json_follows_the_schema_and_the_cfg(capsys: pytest.CaptureFixture[str],
                                             program: Path) -> None:
    doc = report(capsys, str(program))
    check_schema(doc)
    assert doc["binary"] == str(program) and doc["kind"] == "dynamic" and doc["pie"] is True
    image = load_image(program)
    for f in doc["functions"]:
        sym = image.symbol(f["name"])
        assert sym is not None
        cfg = function_cfg(image, sym)
        assert [b["address"] for b in f["blocks"]] == sorted(cfg.blocks)
        for b in f["blocks"]:
            idom = cfg.dominators.get(b["address"])
            assert (b["idom"] or {}).get("address") == idom
            assert b["reaches_exit"] == (b["address"] in cfg.postdominators)
            assert (b["ipdom"] or {}).get("address") == cfg.postdominators.get(b["address"])
        assert [u["address"] for u in f["unknown_jumps"]] == sorted(cfg.unknown_jumps)
    pick = next(f for f in doc["functions"] if f["name"] == "pick")
    [table] = pick["jump_tables"]
    assert table["entry_size"] == 4 and len(table["entries"]) == 6  # cases 0..5
    assert all(e["name"].startswith("pick+0x") for e in table["entries"])
    interp = next(f for f in doc["functions"] if f["name"] == "interp")
    assert interp["unknown_jumps"] and interp["jump_tables"] == []


def test_json_of_a_static_program(capsys: pytest.CaptureFixture[str], built: Path) -> None:
    binary = built / "static" / "sha256"
    doc = report(capsys, str(binary), "-f", "main", "-f", "block", "-f", "memcpy")
    check_schema(doc)
    assert doc["kind"] == "static" and doc["pie"] is False
    assert [f["name"] for f in doc["functions"]] == ["main", "block", "memcpy"]


# -- dot and svg ------------------------------------------------------------------------------

def test_dot_is_accepted_by_graphviz(capsys: pytest.CaptureFixture[str], program: Path,
                                     dot: str) -> None:
    status, out, err = run(capsys, str(program), "--format", "dot")
    assert (status, err) == (0, "")
    assert out.startswith("digraph ") and out.rstrip().endswith("}")
    doc = report(capsys, str(program))
    assert out.count("subgraph cluster_") == len(doc["functions"])
    blocks = sum(len(f["blocks"]) for f in doc["functions"])
    assert len(re.findall(r"^    f\d+_[0-9a-f]+ \[label=", out, re.M)) == blocks
    for kind in ("taken", "not-taken", "return-site"):
        assert f'label="{kind}"' in out
    assert 'label="case 0"' in out and 'label="unknown"' in out
    drawn = subprocess.run([dot, "-Tsvg"], input=out, capture_output=True, text=True)
    assert drawn.returncode == 0 and drawn.stderr == ""


def test_svg_to_a_file(capsys: pytest.CaptureFixture[str], program: Path, tmp_path: Path,
                       dot: str) -> None:
    target = tmp_path / "pick.svg"
    status, out, err = run(capsys, str(program), "-f", "pick", "--format", "svg", "-o",
                           str(target))
    assert (status, out, err) == (0, "", "")
    svg = target.read_text()
    assert svg.startswith(("<?xml", "<svg")) and "<svg" in svg and "pick+0x" in svg


def test_svg_without_graphviz_says_to_install_it(capsys: pytest.CaptureFixture[str],
                                                 program: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot here
    status, out, err = run(capsys, str(program), "-f", "pick", "--format", "svg")
    assert status == 2 and out == ""
    assert len(err.splitlines()) == 1 and "install graphviz" in err


# -- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "message"), [
    ("pikc", "--function pikc: no such function in {}; close matches: pick"),
    ("zzzzzz", "--function zzzzzz: no such function in {}; no close match"),
    ("sink", "--function sink: {} has sink as an object symbol, not a function"),
    ("abort", "--function abort: no such function in {}; close matches: abort@plt"),
])
def test_bad_function_names_are_one_line_errors(capsys: pytest.CaptureFixture[str],
                                                program: Path, name: str, message: str) -> None:
    status, out, err = run(capsys, str(program), "-f", "main", "-f", name)
    assert (status, out) == (2, "")
    assert err == f"leakdbt: {message.format(program)}\n"


def test_not_an_elf_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("hello\n")
    status, out, err = run(capsys, str(bogus))
    assert (status, out) == (2, "")
    assert len(err.splitlines()) == 1 and err.startswith(f"leakdbt: {bogus}: not an ELF file")


def test_stripped_binary(capsys: pytest.CaptureFixture[str], program: Path,
                         tmp_path: Path) -> None:
    stripped = tmp_path / "stripped"
    subprocess.run(["strip", "-o", str(stripped), str(program)], check=True)
    status, out, err = run(capsys, str(stripped))
    assert (status, err) == (0, "")
    # functions found from direct calls (sub_ADDR) and the PLT stubs named from .rela.plt
    assert "sub_" in out and "abort@plt" in out


def test_unwritable_output(capsys: pytest.CaptureFixture[str], program: Path,
                           tmp_path: Path) -> None:
    status, out, err = run(capsys, str(program), "-f", "main", "-o",
                           str(tmp_path / "missing" / "out.txt"))
    assert (status, out) == (2, "")
    assert len(err.splitlines()) == 1 and err.startswith("leakdbt: -o ")


def test_bad_format_is_a_usage_error(capsys: pytest.CaptureFixture[str], program: Path) -> None:
    status, out, err = run(capsys, str(program), "--format", "png")
    assert (status, out) == (2, "") and len(err.splitlines()) == 1


def test_command_line_end_to_end(program: Path) -> None:
    """The installed entry point, and start-up stays free of the decoder and the loader."""
    done = subprocess.run([sys.executable, "-m", "leakdbt", "blocks", str(program), "-f",
                           "careful"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("binary: ")
    probe = ("import sys, leakdbt.cli; print(sorted(m for m in ('capstone', 'leakdbt.dbt.cfg', "
             "'leakdbt.dbt.blocks_report') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "[]"
