"""Directories the guest holds (working directory, directory fds) are resolved by what they
are, not by the path they once had; plus the sandbox's refusals and SIGPIPE on a write."""

from __future__ import annotations

import errno
import os
import signal
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from leakdbt.errors import GuestFault, NotExecutable
from leakdbt.linux import sys_fs, sys_xattr
from leakdbt.linux.files import FdTable, OpenFile
from leakdbt.linux.fs import RENAME_WHITEOUT, Anchor, FileSystem, require_executable
from leakdbt.linux.kernel import Kernel, ProcessIds
from leakdbt.linux.signals import Action
from tests.unit.linux.test_sys_fs import FakeMemory


@pytest.fixture
def stale(tmp_path: Path) -> tuple[FileSystem, Path, Path]:
    """A guest whose cwd /rw/d was renamed to /rw/d_moved and replaced by a symlink to a host
    directory outside the root that holds canary.txt."""
    root, host = tmp_path / "root", tmp_path / "host"
    (root / "rw").mkdir(parents=True)
    host.mkdir()
    (host / "canary.txt").write_text("CANARY")
    fs = FileSystem(str(root), rw=[str(root / "rw")])
    fs.mkdir("/rw/d")
    fs.chdir("/rw/d")
    fs.rename("/rw/d", "/rw/d_moved")
    fs.symlink(str(host), "/rw/d")
    return fs, root, host


def _errno_of(call: object) -> int | None:
    try:
        call()  # type: ignore[operator]
    except OSError as e:
        return e.errno
    return None


@pytest.mark.parametrize("name", ["canary.txt", "missing.txt"])
def test_stale_cwd_reaches_nothing_outside(stale: tuple[FileSystem, Path, Path],
                                           name: str) -> None:
    fs, _, _ = stale
    calls = [
        lambda: fs.stat(name),
        lambda: fs.stat(name, follow=False),
        lambda: fs.open(name, os.O_RDONLY),
        lambda: fs.readlink(name),
        lambda: fs.access(name, os.F_OK),
        lambda: fs.getxattr(name, "user.x"),
        lambda: fs.listxattr(name),
        lambda: fs.statvfs(name),
    ]
    assert [_errno_of(c) for c in calls] == [errno.ENOENT] * len(calls)


def test_cwd_follows_its_directory(stale: tuple[FileSystem, Path, Path]) -> None:
    fs, root, _ = stale
    (root / "rw" / "d_moved" / "inside.txt").write_text("in")
    assert fs.getcwd() == "/rw/d_moved"
    assert fs.resolve("inside.txt").host == str(root / "rw" / "d_moved" / "inside.txt")
    assert fs.resolve("..").guest == "/rw"


def test_removed_cwd_is_enoent(tmp_path: Path) -> None:
    (tmp_path / "gone").mkdir()
    fs = FileSystem(str(tmp_path), cwd="/gone")
    os.rmdir(tmp_path / "gone")
    assert _errno_of(fs.getcwd) == errno.ENOENT
    assert _errno_of(lambda: fs.stat(".")) == errno.ENOENT


def test_cwd_moved_out_of_the_root_is_enoent(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("s")
    fs = FileSystem(str(root), cwd="/d")
    os.rename(root / "d", tmp_path / "d")  # by the host: now outside the root
    assert _errno_of(lambda: fs.stat("../secret.txt")) == errno.ENOENT
    assert _errno_of(fs.getcwd) == errno.ENOENT


def test_stale_directory_anchor(stale: tuple[FileSystem, Path, Path]) -> None:
    fs, root, _ = stale
    fs.mkdir("/rw/e")
    fd = os.open(root / "rw" / "e", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fs.rename("/rw/e", "/rw/e_moved")
        os.symlink(str(root.parent / "host"), root / "rw" / "e")
        anchor = Anchor("/rw/e", fd)
        assert _errno_of(lambda: fs.stat("canary.txt", anchor)) == errno.ENOENT
        assert fs.resolve(".", anchor).guest == "/rw/e_moved"
        fs.chdir(".", anchor)
        assert fs.getcwd() == "/rw/e_moved"
    finally:
        os.close(fd)


def test_rename_whiteout_refused(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    fs = FileSystem(str(tmp_path), rw=[str(tmp_path)])
    assert _errno_of(lambda: fs.rename("/a", "/b", flags=RENAME_WHITEOUT)) == errno.EPERM
    assert sorted(os.listdir(tmp_path)) == ["a"]


def test_require_executable(tmp_path: Path) -> None:
    prog = tmp_path / "prog"
    prog.write_bytes(b"\x7fELF")
    prog.chmod(0o644)
    with pytest.raises(NotExecutable) as e:
        require_executable(str(prog))
    assert e.value.exit_status == 126
    with pytest.raises(NotExecutable):
        require_executable(str(tmp_path))  # a directory
    prog.chmod(0o755)
    require_executable(str(prog))
    require_executable(str(tmp_path / "missing"))  # left to the loader


class _Cpu:
    def reg(self, name: str) -> int:
        return 0x401000


@pytest.fixture
def pipe_kernel(tmp_path: Path) -> Iterator[tuple[Kernel, FakeMemory, int]]:
    """A kernel whose guest fd 5 is the write end of a pipe whose reader is closed."""
    mem = FakeMemory()
    fds = FdTable(stdio=False)
    ids = ProcessIds(os.getpid(), os.getppid(), 0, 0, 0, 0)
    k = Kernel(mem=mem, fs=FileSystem(str(tmp_path)), fds=fds, ids=ids,  # type: ignore[arg-type]
               exe_path="/prog", cpu=_Cpu())  # type: ignore[arg-type]
    r, w = os.pipe()
    os.close(r)
    fds.install_at(5, OpenFile(w))
    yield k, mem, mem.alloc(b"data")
    fds.close_all()


def test_write_to_closed_pipe_is_sigpipe(pipe_kernel: tuple[Kernel, FakeMemory, int]) -> None:
    k, _, buf = pipe_kernel
    with pytest.raises(GuestFault) as e:
        sys_fs.sys_write(k, 5, buf, 4)
    assert e.value.signo == signal.SIGPIPE and e.value.exit_status == 141


@pytest.mark.parametrize("how", ["ignored", "blocked", "caught"])
def test_write_to_closed_pipe_is_epipe_unless_default(
    pipe_kernel: tuple[Kernel, FakeMemory, int], how: str
) -> None:
    k, _, buf = pipe_kernel
    if how == "blocked":
        k.signals.blocked = 1 << (signal.SIGPIPE - 1)
    else:
        handler = 1 if how == "ignored" else 0x401234
        k.signals.actions[signal.SIGPIPE] = Action.unpack(struct.pack("<Q", handler) + bytes(24))
    assert sys_fs.sys_write(k, 5, buf, 4) == -errno.EPIPE
    # A caught or blocked SIGPIPE is queued (the handler runs after the call); an ignored
    # one is dropped.
    assert [s for s, _ in k.signals.pending] == ([] if how == "ignored" else [signal.SIGPIPE])


def test_xattr_syscalls_go_through_the_sandbox(stale: tuple[FileSystem, Path, Path]) -> None:
    fs, _, host = stale
    try:
        os.setxattr(host / "canary.txt", "user.canary", b"LEAK")
        xattrs = True
    except OSError:  # no user xattrs here: the host file still must not be reached
        xattrs = False
    mem = FakeMemory()
    k = Kernel(mem=mem, fs=fs, fds=FdTable(stdio=False),  # type: ignore[arg-type]
               ids=ProcessIds(0, 0, 0, 0, 0, 0), exe_path="/prog")
    get = sys_xattr.HANDLERS[191][1]
    value = mem.alloc(64)
    assert get(k, mem.cstr("canary.txt"), mem.cstr("user.canary"), value, 64) == -errno.ENOENT
    if xattrs:  # inside the root the same call works
        (Path(fs.root) / "rw" / "d_moved" / "f").write_text("f")
        os.setxattr(Path(fs.root) / "rw" / "d_moved" / "f", "user.canary", b"OK")
        assert get(k, mem.cstr("f"), mem.cstr("user.canary"), value, 64) == 2
        assert mem.read(value, 2) == b"OK"
