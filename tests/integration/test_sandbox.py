"""The sandbox against a hostile guest (docs/sandbox.md): stale working directories and
directory fds cannot reach the host outside ``--root``, and Linux's answers are kept where
the sandbox touches them (mprotect of a shared file mapping, RENAME_WHITEOUT, the execute
bit, SIGPIPE)."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import LEAKDBT, binary, run_leakdbt, shell_status

CANARY = "CANARY-7f3a"
XATTR = b"XATTR-LEAKED-91c2"


def _user_xattrs_work(directory: Path) -> bool:
    probe = directory / ".xattr_probe"
    probe.write_text("x")
    try:
        os.setxattr(probe, "user.canary", b"1")
    except OSError:
        return False
    finally:
        probe.unlink()
    return True


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, Path, bool]:
    """(guest root with a writable /rw, host directory outside it holding canary.txt, whether
    the canary carries a user xattr)."""
    root = tmp_path / "root"
    (root / "rw").mkdir(parents=True)
    host = tmp_path / "host"
    host.mkdir()
    (host / "canary.txt").write_text(CANARY)
    has_xattr = _user_xattrs_work(host)
    if has_xattr:
        os.setxattr(host / "canary.txt", "user.canary", XATTR)
    return root, host, has_xattr


def _probe_lines(out: str, name: str) -> list[str]:
    """The probe lines about ``name``, with the name taken out (to compare two names)."""
    return [ln.replace(f" {name}:", ":") for ln in out.splitlines()
            if ln.startswith("PROBE ") and f" {name}:" in ln]


@pytest.mark.parametrize("mode", ["stale-cwd", "stale-dirfd"])
def test_stale_directory_cannot_read_or_probe_the_host(
    built: Path, sandbox: tuple[Path, Path, bool], mode: str
) -> None:
    """A directory renamed away and replaced by a symlink to a host directory: every read
    and metadata call through the held directory stays inside the root, and an existing host
    file answers exactly like a missing one."""
    root, host, has_xattr = sandbox
    r = run_leakdbt(["exec", "--root", str(root), "--rw", str(root / "rw"),
                     binary("static", "sandbox_probe"), mode, "/rw", str(host)])
    out = r.stdout.decode()
    assert r.status == 0, r.stderr
    assert "SETUP" not in out
    assert CANARY not in out and XATTR.decode() not in out
    existing, missing = _probe_lines(out, "canary.txt"), _probe_lines(out, "missing.txt")
    assert len(existing) >= 7  # every probe ran
    assert existing == missing  # no existence oracle
    assert all(line.endswith("errno=ENOENT") for line in existing)
    if mode == "stale-cwd":
        expected = (["getxattr", "listxattr", "statfs", "readlink", "access"])
        assert {line.split()[1].rstrip(":") for line in existing} >= set(expected)
        # The working directory followed its directory, as on Linux.
        assert "CWD /rw/d_moved" in out.splitlines()
    if has_xattr:  # the canary really is readable natively, so the test can fail
        assert os.getxattr(host / "canary.txt", "user.canary") == XATTR


def test_mprotect_cannot_make_a_shared_read_only_mapping_writable(
    built: Path, tmp_path: Path
) -> None:
    (tmp_path / "f").write_text("content\n")
    argv = [binary("static", "sandbox_probe"), "mprotect", str(tmp_path / "f")]
    native = subprocess.run(argv, capture_output=True, check=True).stdout
    guest = run_leakdbt(["exec", *argv])
    assert guest.status == 0
    assert b"mprotect shared: EACCES\n" in guest.stdout
    assert guest.stdout == native


def test_rename_whiteout_creates_no_device(built: Path, tmp_path: Path) -> None:
    rw = tmp_path / "rw"
    rw.mkdir()
    r = run_leakdbt(["exec", "--rw", str(rw), binary("static", "sandbox_probe"), "whiteout",
                     str(rw)])
    assert r.status == 0
    assert r.stdout == b"renameat2 whiteout: EPERM\n"
    assert sorted(os.listdir(rw)) == ["a"]
    assert stat.S_ISREG(os.lstat(rw / "a").st_mode)


def test_program_without_execute_bit_is_refused(built: Path, tmp_path: Path) -> None:
    prog = tmp_path / "hello"
    shutil.copy(binary("static", "hello"), prog)
    prog.chmod(0o644)
    r = run_leakdbt(["exec", str(prog)])
    assert r.status == 126
    assert r.stdout == b""
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1 and "Permission denied" in lines[0] and str(prog) in lines[0]
    prog.chmod(0o755)
    assert run_leakdbt(["exec", str(prog)]).status == 0


def _status_after_reader_closes(argv: list[str]) -> tuple[int, bytes]:
    """Run ``argv`` with stdout into a pipe; read a little, close the pipe, wait."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         restore_signals=True)
    assert p.stdout is not None and p.stderr is not None
    assert p.stdout.read(4) == b"y\ny\n"
    p.stdout.close()
    err = p.stderr.read()
    return shell_status(p.wait(timeout=120)), err


@pytest.mark.parametrize("ignore", [False, True])
def test_sigpipe_like_native(built: Path, ignore: bool) -> None:
    """Writing into a pipe whose reader left kills with SIGPIPE (141) by default; a guest
    that ignores SIGPIPE gets EPIPE instead."""
    argv = [binary("static", "sandbox_probe"), "pipe-writer", *(["ignore"] if ignore else [])]
    native, native_err = _status_after_reader_closes(argv)
    guest, guest_err = _status_after_reader_closes([*LEAKDBT, "exec", *argv])
    assert native == (3 if ignore else 128 + signal.SIGPIPE)
    assert guest == native
    if ignore:
        assert guest_err == native_err == b"write: EPIPE\n"
    else:
        assert b"SIGPIPE" in guest_err
