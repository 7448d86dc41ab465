"""copy_file_range (leakdbt.linux.sys_copy) between files the guest opened under the
sandbox's rules, and getsockname/getpeername (leakdbt.linux.sys_sockname): results and
errors are Linux's, and none of them is reported on stderr."""

from __future__ import annotations

import errno
import io
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from leakdbt.linux import sys_fs
from leakdbt.linux.files import FdTable, OpenFile
from leakdbt.linux.fs import FileSystem
from leakdbt.linux.kernel import Kernel, ProcessIds
from leakdbt.linux.syscalls import SyscallDispatcher
from tests.unit.linux.test_sys_fs import FakeMemory
from tests.unit.linux.test_unsupported import _call

COPY_FILE_RANGE, GETSOCKNAME, GETPEERNAME, LSEEK = 326, 51, 52, 8
DATA = bytes(range(256)) * 40  # 10240 bytes

Env = tuple[Kernel, FakeMemory, SyscallDispatcher, io.StringIO]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    root = tmp_path / "root"
    (root / "rw").mkdir(parents=True)
    (root / "src.bin").write_bytes(DATA)
    (root / "rw" / "old.bin").write_bytes(b"x" * 100)
    mem = FakeMemory()
    fds = FdTable()
    ids = ProcessIds(os.getpid(), os.getppid(), os.getuid(), os.getgid(), os.geteuid(),
                     os.getegid())
    k = Kernel(mem=mem, fs=FileSystem(str(root), rw=[str(root / "rw")], cwd="/"),  # type: ignore[arg-type]
               fds=fds, ids=ids, exe_path="/prog")
    err = io.StringIO()
    yield k, mem, SyscallDispatcher(k, stderr=err), err
    fds.close_all()
    assert err.getvalue() == ""  # nothing here is "unsupported"


def _open(k: Kernel, mem: FakeMemory, path: str, flags: int = os.O_RDONLY) -> int:
    fd = sys_fs.sys_open(k, mem.cstr(path), flags, 0o644)
    assert fd >= 0, (path, fd)
    return fd


def _contents(k: Kernel, path: str) -> bytes:
    return Path(k.fs.root, path.lstrip("/")).read_bytes()


def test_copy_at_file_offsets(env: Env) -> None:
    k, mem, d, _ = env
    src = _open(k, mem, "/src.bin")
    dst = _open(k, mem, "/rw/out.bin", os.O_WRONLY | os.O_CREAT)
    assert _call(d, COPY_FILE_RANGE, src, 0, dst, 0, 4000, 0) == 4000
    assert _call(d, COPY_FILE_RANGE, src, 0, dst, 0, 1 << 40, 0) == len(DATA) - 4000
    assert _call(d, COPY_FILE_RANGE, src, 0, dst, 0, 100, 0) == 0  # end of file
    assert _contents(k, "/rw/out.bin") == DATA
    assert _call(d, LSEEK, src, 0, os.SEEK_CUR) == len(DATA)  # both offsets advanced
    assert _call(d, LSEEK, dst, 0, os.SEEK_CUR) == len(DATA)


def test_copy_with_offset_pointers_leaves_file_offsets(env: Env) -> None:
    k, mem, d, _ = env
    src = _open(k, mem, "/src.bin")
    dst = _open(k, mem, "/rw/old.bin", os.O_RDWR)
    offs = mem.alloc(struct.pack("<qq", 300, 10))
    assert _call(d, COPY_FILE_RANGE, src, offs, dst, offs + 8, 50, 0) == 50
    assert struct.unpack("<qq", mem.read(offs, 16)) == (350, 60)  # pointers advanced
    assert _call(d, LSEEK, src, 0, os.SEEK_CUR) == 0
    assert _call(d, LSEEK, dst, 0, os.SEEK_CUR) == 0
    assert _contents(k, "/rw/old.bin") == b"x" * 10 + DATA[300:350] + b"x" * 40


def test_copy_errors_are_linux_s(env: Env) -> None:
    k, mem, d, _ = env
    src = _open(k, mem, "/src.bin")
    dst = _open(k, mem, "/rw/out.bin", os.O_WRONLY | os.O_CREAT)
    readonly = _open(k, mem, "/src.bin")  # outside --rw: only ever opened for reading
    appending = _open(k, mem, "/rw/old.bin", os.O_WRONLY | os.O_APPEND)
    rd, wr = os.pipe()
    pipe_w = k.fds.install(OpenFile(host_fd=wr, flags=os.O_WRONLY))
    os.close(rd)
    both = _open(k, mem, "/rw/old.bin", os.O_RDWR)
    neg, offs = mem.alloc(struct.pack("<q", -1)), mem.alloc(struct.pack("<qq", 0, 10))
    cases = {
        "flags": ((src, 0, dst, 0, 10, 1), errno.EINVAL),
        "output read-only": ((src, 0, readonly, 0, 10, 0), errno.EBADF),
        "output O_APPEND": ((src, 0, appending, 0, 10, 0), errno.EBADF),
        "bad fd": ((src, 0, 99, 0, 10, 0), errno.EBADF),
        "to a pipe": ((src, 0, pipe_w, 0, 10, 0), errno.EINVAL),
        "negative offset": ((src, neg, dst, 0, 10, 0), errno.EINVAL),
        "offset pointer unmapped": ((src, 0x10, dst, 0, 10, 0), errno.EFAULT),
        "same file overlapping": ((both, offs, both, offs + 8, 50, 0), errno.EINVAL),
    }
    for name, (args, err) in cases.items():
        assert _call(d, COPY_FILE_RANGE, *args) == -err, name
    assert _contents(k, "/src.bin") == DATA
    assert _contents(k, "/rw/out.bin") == b""
    assert _contents(k, "/rw/old.bin") == b"x" * 100


def test_sockname_of_a_non_socket_and_of_a_socketpair_end(env: Env) -> None:
    k, mem, d, _ = env
    f = _open(k, mem, "/src.bin")
    addr, length = mem.alloc(128), mem.alloc(struct.pack("<I", 128))
    assert _call(d, GETPEERNAME, f, addr, length) == -errno.ENOTSOCK
    assert _call(d, GETSOCKNAME, f, addr, length) == -errno.ENOTSOCK
    assert _call(d, GETPEERNAME, 77, addr, length) == -errno.EBADF
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    end = k.fds.install(OpenFile(host_fd=a.detach(), flags=os.O_RDWR))
    b.close()
    for nr in (GETPEERNAME, GETSOCKNAME):
        mem.write(length, struct.pack("<I", 128))
        assert _call(d, nr, end, addr, length) == 0
        # An unnamed AF_UNIX socket: its sa_family alone.
        assert struct.unpack("<I", mem.read(length, 4))[0] == 2
        assert struct.unpack("<H", mem.read(addr, 2))[0] == socket.AF_UNIX
    mem.write(addr, b"\xee\xee")
    mem.write(length, struct.pack("<I", 1))  # a short buffer: cut, full length reported
    assert _call(d, GETSOCKNAME, end, addr, length) == 0
    assert mem.read(addr, 2) == bytes([socket.AF_UNIX, 0xEE])
    assert struct.unpack("<I", mem.read(length, 4))[0] == 2
    mem.write(length, struct.pack("<i", -1))
    assert _call(d, GETSOCKNAME, end, addr, length) == -errno.EINVAL
    assert _call(d, GETSOCKNAME, end, addr, 0x10) == -errno.EFAULT
