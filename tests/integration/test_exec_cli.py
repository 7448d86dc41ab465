"""``leakdbt exec`` behaviour beyond plain equivalence: the sandbox, limits, errors, --stats."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import KINDS, binary, run_leakdbt


def _one_error_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert "Traceback" not in text
    lines = [ln for ln in text.splitlines() if ln.startswith("leakdbt:")]
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize("kind", KINDS)
def test_sandbox_denies_every_escape(built: Path, tmp_path: Path, kind: str) -> None:
    argdir = tmp_path / "a" / "b" / "arg"
    outside = tmp_path / "outside"
    argdir.mkdir(parents=True)
    outside.mkdir()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    guest = run_leakdbt(["exec", "--rw", str(argdir), binary(kind, "escape"), str(argdir),
                         str(outside)])
    assert guest.status == 0, guest.stderr
    attempts = dict(re.findall(rb"ATTEMPT (\w+): (\w+)", guest.stdout))
    # Reading the host is allowed (read-only by default); creating a link inside the
    # writable directory is allowed; everything that writes elsewhere is denied.
    assert attempts.pop(b"read_dotdot") == b"ok"
    assert attempts.pop(b"symlink_create") == b"ok"
    assert len(attempts) == 8
    assert set(attempts.values()) == {b"denied"}, attempts
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    created = set(after) - set(before)
    assert all(str(p).startswith("a/b/arg/") for p in created), created
    assert not list(outside.iterdir())


def test_root_confines_reads(built: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    (root / "data" / "f.txt").write_text("inside\n")
    os.symlink("/etc/passwd", root / "data" / "abs-link")
    os.symlink("../../../../../../etc/hostname", root / "data" / "rel-link")
    exe = "/bin/busybox"
    ok = run_leakdbt(["exec", "--root", str(root), "--cwd", "/data", exe, "cat", "f.txt"])
    assert ok.stdout == b"inside\n"
    for link in ("abs-link", "rel-link", "../../etc/passwd"):
        r = run_leakdbt(["exec", "--root", str(root), "--cwd", "/data", exe, "cat", link])
        assert r.status == 1 and r.stdout == b"", (link, r)


@pytest.mark.parametrize("kind", KINDS)
def test_max_insns_stops_runaway(built: Path, kind: str) -> None:
    r = run_leakdbt(["exec", "--max-insns", "200000", binary(kind, "modexp")])
    assert r.status == 124
    line = _one_error_line(r.stderr)
    assert "--max-insns 200000 reached at" in line


def test_timeout_stops_runaway(built: Path) -> None:
    r = run_leakdbt(["exec", "--timeout", "0.3", binary("static", "modexp"), "100000000"])
    assert r.status == 124
    assert "--timeout 0.3 s reached" in _one_error_line(r.stderr)


def test_max_memory_caps_mappings(built: Path) -> None:
    r = run_leakdbt(["exec", "--max-memory", "4M", binary("static", "hello")])
    assert r.status == 124
    assert "--max-memory" in _one_error_line(r.stderr)
    ok = run_leakdbt(["exec", "--max-memory", "64M", binary("static", "hello")])
    assert ok.status == 0 and ok.stdout == b"hello\n"


@pytest.mark.parametrize("kind", KINDS)
def test_crash_names_signal_and_location(built: Path, kind: str) -> None:
    r = run_leakdbt(["exec", binary(kind, "segfault")])
    assert r.status == 139
    line = _one_error_line(r.stderr)
    assert re.search(r"SIGSEGV at crash_here\+0x[0-9a-f]+: write to 0x0", line), line
    r = run_leakdbt(["exec", binary(kind, "divzero")])
    assert r.status == 136
    assert re.search(r"SIGFPE at divide\+0x[0-9a-f]+: divide error", _one_error_line(r.stderr))


def test_stats_report(built: Path) -> None:
    r = run_leakdbt(["exec", "--stats", "--count-insns", binary("dynamic", "hello")])
    assert r.status == 0 and r.stdout == b"hello\n"
    text = r.stderr.decode()
    insns = int(re.search(r"guest instructions: (\d+)", text).group(1))  # type: ignore[union-attr]
    blocks = int(re.search(r"blocks translated:\s+(\d+)", text).group(1))  # type: ignore[union-attr]
    assert insns > 10_000 and blocks > 100
    assert re.search(r"^\s+openat\s+\d+$", text, re.M)
    assert re.search(r"^\s+mmap\s+\d+$", text, re.M)
    assert "wall time:" in text


def test_count_insns_is_exact(built: Path) -> None:
    """The block-hook count agrees with the engine's own instruction limit."""
    r = run_leakdbt(["exec", "--stats", "--count-insns", binary("static", "hello")])
    n = int(re.search(rb"guest instructions: (\d+)", r.stderr).group(1))  # type: ignore[union-attr]
    assert run_leakdbt(["exec", "--max-insns", str(n + 5), binary("static", "hello")]).status == 0
    assert run_leakdbt(["exec", "--max-insns", str(n - 5), binary("static", "hello")]).status == 124


def test_unknown_syscall_reported_once_and_strict(built: Path, tmp_path: Path) -> None:
    src = tmp_path / "ns.c"
    src.write_text('#include <unistd.h>\n#include <sys/syscall.h>\n#include <stdio.h>\n'
                   'int main(void){long a=syscall(SYS_io_setup,1,0),b=syscall(SYS_io_setup,1,0);'
                   'printf("%ld %ld\\n",a,b);return 0;}\n')
    exe = tmp_path / "ns"
    os.system(f"gcc -O2 -static -o {exe} {src}")
    r = run_leakdbt(["exec", str(exe)])
    assert r.stdout == b"-1 -1\n" and r.status == 0
    assert r.stderr.decode().count("unsupported system call io_setup") == 1
    s = run_leakdbt(["exec", "--strict", str(exe)])
    assert s.status == 126
    assert "io_setup" in _one_error_line(s.stderr)


def test_env_and_clear_env(built: Path) -> None:
    r = run_leakdbt(["exec", "--clear-env", "--env", "A=1", "--env", "B=x=y",
                     binary("static", "args_env"), "--environ"])
    assert b"environ count=2\n" in r.stdout
    assert b"environ A=1\n" in r.stdout and b"environ B=x=y\n" in r.stdout
    bad = run_leakdbt(["exec", "--env", "novalue", binary("static", "hello")])
    assert bad.status == 2 and "--env" in _one_error_line(bad.stderr)


BAD_FILES = {
    "text": b"#!/bin/sh\necho hi\n",
    "empty": b"",
    "elf32": b"\x7fELF\x01\x01\x01" + bytes(60),
    "truncated": b"\x7fELF\x02\x01\x01" + bytes(20),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_input_is_one_line_and_status_2(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(BAD_FILES[name])
    for command in (["exec", str(path)], ["info", str(path)]):
        r = run_leakdbt(command)
        assert r.status == 2
        assert str(path) in _one_error_line(r.stderr)


def test_missing_interpreter(built: Path, tmp_path: Path) -> None:
    data = bytearray(Path(binary("dynamic", "hello")).read_bytes())
    i = data.index(b"/lib64/ld-linux-x86-64.so.2")
    data[i:i + 27] = b"/lib64/ld-missing-x86-64.so"
    path = tmp_path / "nointerp"
    path.write_bytes(bytes(data))
    r = run_leakdbt(["exec", str(path)])
    assert r.status == 2
    assert "interpreter /lib64/ld-missing-x86-64.so" in _one_error_line(r.stderr)


def test_wrong_architecture(tmp_path: Path) -> None:
    data = bytearray(Path("/bin/true").read_bytes())
    data[18:20] = (183).to_bytes(2, "little")  # EM_AARCH64
    path = tmp_path / "arm"
    path.write_bytes(bytes(data))
    r = run_leakdbt(["exec", str(path)])
    assert r.status == 2
    assert "AARCH64" in _one_error_line(r.stderr).upper()


def _stat(stderr: bytes, key: str) -> int:
    m = re.search(rf"^\s+{key}:\s+(\d+)$", stderr.decode(), re.M)
    assert m, stderr.decode()
    return int(m.group(1))


@pytest.mark.parametrize("divisor", ["0000000a", "ffffffff"])
def test_stats_scope_counts_what_callgrind_counts(built: Path, tmp_path: Path,
                                                  divisor: str) -> None:
    """exec --stats reports the contract's scope (protect.functions, callees included) as
    check and analyze see it.  Ground truth: valgrind's callgrind on the native binary,
    collecting only while process() is active (--toggle-collect counts its callees too)."""
    exe = binary("static", "entry_div")
    run = run_leakdbt(["exec", "--contract", "contracts/entry_div.toml", "--stats", exe,
                       divisor])
    assert run.status == 0, run.stderr
    out = tmp_path / "cg.out"
    native = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                             "--toggle-collect=process", exe, divisor],
                            capture_output=True, text=True, check=True)
    collected = re.search(r"Collected : (\d+)", native.stderr)
    assert collected, native.stderr
    assert _stat(run.stderr, "entries") == 1
    assert _stat(run.stderr, "instructions") == int(collected.group(1))


def test_stats_scope_of_a_whole_program_contract_is_the_whole_run(built: Path) -> None:
    """Without protect.functions the scope is the whole run: every counted instruction."""
    run = run_leakdbt(["exec", "--contract", "contracts/hello.toml", "--stats",
                       "--count-insns", binary("static", "hello")])
    assert run.status == 0, run.stderr
    assert b"scope (the whole run: no protect.functions)" in run.stderr
    assert b"entries:" not in run.stderr
    assert _stat(run.stderr, "instructions") == _stat(run.stderr, "guest instructions")
