"""Hostile programs and limits: each ends with a one-line error and a documented status, never
"internal error" (125): huge segments load lazily, a bad entry point is SIGSEGV as on Linux,
leakdbt's reserved page is invisible, --max-insns stops at exactly N instructions."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from tests.conftest import binary, run_leakdbt

PT_LOAD = 1


def _one_error_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert "Traceback" not in text and "internal error" not in text, text
    lines = [ln for ln in text.splitlines() if ln.startswith("leakdbt:")]
    assert len(lines) == 1, text
    return lines[0]


def _patched(src: str, dst: Path, *, entry: int | None = None, memsz: int | None = None
             ) -> str:
    """A copy of ``src`` with e_entry or the last PT_LOAD's p_memsz replaced."""
    data = bytearray(Path(src).read_bytes())
    if entry is not None:
        struct.pack_into("<Q", data, 24, entry)
    if memsz is not None:
        phoff, = struct.unpack_from("<Q", data, 32)
        phnum, = struct.unpack_from("<H", data, 56)
        loads = [phoff + 56 * i for i in range(phnum)
                 if struct.unpack_from("<I", data, phoff + 56 * i)[0] == PT_LOAD]
        struct.pack_into("<Q", data, loads[-1] + 40, memsz)
    dst.write_bytes(bytes(data))
    dst.chmod(0o755)
    return str(dst)


@pytest.mark.parametrize("memsz", [0x1_0000_0000, 0xFFFF_FFFF])
def test_huge_bss_loads_lazily(built: Path, tmp_path: Path, memsz: int) -> None:
    """A 4 GiB bss was zero-filled (8.4 GB of host memory): now it is only reserved."""
    exe = _patched(binary("static", "hello"), tmp_path / "big", memsz=memsz)
    r = run_leakdbt(["exec", "--timeout", "30", exe])
    assert (r.status, r.stdout) == (0, b"hello\n"), r.stderr


def test_segment_over_max_memory_is_refused(built: Path, tmp_path: Path) -> None:
    exe = _patched(binary("static", "hello"), tmp_path / "big", memsz=0x1_0000_0000)
    r = run_leakdbt(["exec", "--max-memory", "64M", exe])
    assert r.status == 2
    line = _one_error_line(r.stderr)
    assert "segment too large" in line and "--max-memory (67108864 bytes)" in line


def test_segment_over_default_cap_is_refused(built: Path, tmp_path: Path) -> None:
    exe = _patched(binary("static", "hello"), tmp_path / "big", memsz=1 << 35)
    r = run_leakdbt(["exec", exe])
    assert r.status == 2
    assert "segment too large" in _one_error_line(r.stderr)


@pytest.mark.parametrize(("kind", "entry", "where"), [
    ("static-pie", 0xFFFF_FFFF_8000_0000, 0xFFFF_FFFF_8000_0000 + 0x5555_5555_4000 - (1 << 64)),
    ("static", 0xFFFF_FFFF_8000_0000, 0xFFFF_FFFF_8000_0000),
    ("static", 0x7FFF_FFFF_F000, 0x7FFF_FFFF_F000),  # leakdbt's stop page
    ("static", 0x7FFF_FFFF_F010, 0x7FFF_FFFF_F010),  # the stop address itself
])
def test_bad_entry_point_is_sigsegv(built: Path, tmp_path: Path, kind: str, entry: int,
                                    where: int) -> None:
    """Linux: execve past its point of no return kills the process with SIGSEGV."""
    exe = _patched(binary(kind, "hello"), tmp_path / "bad_entry", entry=entry)
    r = run_leakdbt(["exec", exe])
    assert r.status == 139
    line = _one_error_line(r.stderr)
    assert f"SIGSEGV at {where:#x}: execution at {where:#x} (unmapped)" in line, line


def test_a_brk_the_engine_cannot_reserve_fails_like_linux(built: Path, tmp_path: Path) -> None:
    """make fuzz: a TLS segment of 0x7ffff7fff000 bytes makes static glibc ask brk for all of
    user space.  Linux's brk fails (the old break comes back) and glibc gives up with its own
    message and status 127; leakdbt did the same only when --max-memory refused it, and
    otherwise ended in status 125."""
    data = bytearray(Path(binary("static", "hello")).read_bytes())
    phoff, = struct.unpack_from("<Q", data, 32)
    phnum, = struct.unpack_from("<H", data, 56)
    tls = next(phoff + 56 * i for i in range(phnum)
               if struct.unpack_from("<I", data, phoff + 56 * i)[0] == 7)  # PT_TLS
    struct.pack_into("<Q", data, tls + 40, 0x7FFF_F7FF_F000)  # p_memsz
    exe = tmp_path / "huge_tls"
    exe.write_bytes(bytes(data))
    exe.chmod(0o755)
    run = run_leakdbt(["exec", "--timeout", "5", str(exe)])
    assert run.status == 127, run.stderr
    assert b"Cannot allocate TLS block" in run.stderr
    assert b"internal error" not in run.stderr


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e300"])
def test_timeout_must_be_a_finite_number(built: Path, value: str) -> None:
    r = run_leakdbt(["exec", "--timeout", value, binary("static", "hello")])
    assert r.status == 2
    assert "--timeout" in _one_error_line(r.stderr)


def test_max_insns_too_large_is_a_usage_error(built: Path) -> None:
    r = run_leakdbt(["exec", "--max-insns", "9" * 30, binary("static", "hello")])
    assert r.status == 2
    assert "--max-insns" in _one_error_line(r.stderr)


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_max_insns_is_exact(built: Path, kind: str) -> None:
    """A run stopped by --max-insns M has executed exactly M instructions (the per-block
    count plus the engine-counted last step); a limit at the full count lets it finish."""
    r = run_leakdbt(["exec", "--stats", "--count-insns", binary(kind, "hello")])
    n = int(re.search(rb"guest instructions: (\d+)", r.stderr).group(1))  # type: ignore[union-attr]
    ok = run_leakdbt(["exec", "--max-insns", str(n), binary(kind, "hello")])
    assert (ok.status, ok.stdout) == (0, b"hello\n"), ok.stderr
    for limit in (1, 7, 1000, 12345, n // 2, n - 50):
        stopped = run_leakdbt(["exec", "--max-insns", str(limit), "--stats",
                               binary(kind, "hello")])
        assert stopped.status == 124, (limit, stopped.stderr)
        assert f"--max-insns {limit} reached" in _one_error_line(stopped.stderr)
        assert re.search(rb"guest instructions: %d\b" % limit, stopped.stderr), stopped.stderr


@pytest.mark.parametrize(("kind", "name", "args", "limit"), [
    ("static", "region_loop", ["100000000"], 20_000_000),
    ("dynamic", "modexp", [], 200_000),  # the last step lands in an already-translated loop
])
def test_max_insns_counts_a_hot_loop(built: Path, kind: str, name: str, args: list[str],
                                     limit: int) -> None:
    """A hot loop stops at exactly the limit, with the limit's own status."""
    r = run_leakdbt(["exec", "--max-insns", str(limit), "--stats", binary(kind, name), *args])
    assert r.status == 124
    assert f"--max-insns {limit} reached" in _one_error_line(r.stderr)
    assert re.search(rb"guest instructions: %d\b" % limit, r.stderr), r.stderr


@pytest.mark.parametrize("name", ["sig_segv", "sig_fpe", "divzero"])
def test_max_insns_is_exact_across_faults(built: Path, name: str) -> None:
    """Guests that fault mid-block (and survive, through their handlers, or die): the count
    takes back the instructions a fault skipped, so a limit of the full count lets the run
    end as it does unlimited, one less stops it, and limits before stop exactly there."""
    exe = binary("static", name)
    plain = run_leakdbt(["exec", exe])
    r = run_leakdbt(["exec", "--stats", "--count-insns", exe])
    assert (r.status, r.stdout) == (plain.status, plain.stdout)
    n = int(re.search(rb"guest instructions: (\d+)", r.stderr).group(1))  # type: ignore[union-attr]
    ok = run_leakdbt(["exec", "--max-insns", str(n), exe])
    assert (ok.status, ok.stdout) == (plain.status, plain.stdout), ok.stderr
    for limit in (n - 1, n - 3, n // 2):
        stopped = run_leakdbt(["exec", "--max-insns", str(limit), "--stats", exe])
        assert stopped.status == 124, (limit, stopped.stderr)
        assert re.search(rb"guest instructions: %d\b" % limit, stopped.stderr), stopped.stderr
