"""File system-call handlers, driven through a fake guest memory and checked against the host."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import struct
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest

from leakdbt.linux import sys_fs
from leakdbt.linux.files import FdTable, OpenFile
from leakdbt.linux.fs import FileSystem
from leakdbt.linux.kernel import Kernel, ProcessIds
from leakdbt.machine.memory import GuestMemoryFault

BASE = 0x10000
SIZE = 1 << 20
AT_FDCWD = 0xFFFFFF9C  # -100 as the guest passes it (32-bit int in a 64-bit register)


class FakeMemory:
    """A bytearray-backed GuestMemory: [BASE, BASE+SIZE) is mapped, everything else faults."""

    def __init__(self) -> None:
        self.buf = bytearray(SIZE)
        self.next = BASE + 0x1000

    def _off(self, address: int, size: int) -> int:
        if address < BASE or address + size > BASE + SIZE:
            raise GuestMemoryFault(address)
        return address - BASE

    def read(self, address: int, size: int) -> bytes:
        off = self._off(address, size)
        return bytes(self.buf[off : off + size])

    def write(self, address: int, data: bytes) -> None:
        off = self._off(address, len(data))
        self.buf[off : off + len(data)] = data

    def read_cstring(self, address: int, limit: int = 4096) -> bytes:
        off = self._off(address, 1)
        end = self.buf.find(b"\0", off, off + limit)
        if end < 0:
            end = min(off + limit, len(self.buf))
        return bytes(self.buf[off:end])

    def alloc(self, data: bytes | int) -> int:
        """Copy bytes (or reserve that many zero bytes) into memory; return the address."""
        blob = bytes(data) if isinstance(data, int) else data
        addr = self.next
        self.write(addr, blob)
        self.next += (len(blob) + 15) & ~15 or 16
        return addr

    def cstr(self, s: str) -> int:
        return self.alloc(os.fsencode(s) + b"\0")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Kernel, FakeMemory, Path]]:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hello.txt").write_bytes(b"hello world\n")
    (root / "bin").mkdir()
    (root / "bin" / "prog").write_bytes(b"\x7fELF")
    (root / "rw").mkdir()
    (root / "d").mkdir()
    for name in ("alpha", "beta", "gamma"):
        (root / "d" / name).write_text(name)
    (root / "d" / "sub").mkdir()
    os.symlink("/etc/hello.txt", root / "link")
    mem = FakeMemory()
    fs = FileSystem(str(root), rw=[str(root / "rw")], cwd="/")
    fds = FdTable()
    ids = ProcessIds(
        os.getpid(), os.getppid(), os.getuid(), os.getgid(), os.geteuid(), os.getegid()
    )
    k = Kernel(mem=mem, fs=fs, fds=fds, ids=ids, exe_path="/bin/prog")  # type: ignore[arg-type]
    yield k, mem, root
    fds.close_all()


def _open(k: Kernel, mem: FakeMemory, path: str, flags: int = os.O_RDONLY, mode: int = 0) -> int:
    return sys_fs.sys_open(k, mem.cstr(path), flags, mode)


STAT = struct.Struct("<QQQIIIIQqqqqQqQqQ24x")


def _unpack_stat(data: bytes) -> dict[str, int]:
    names = [
        "dev",
        "ino",
        "nlink",
        "mode",
        "uid",
        "gid",
        "pad",
        "rdev",
        "size",
        "blksize",
        "blocks",
        "atime",
        "atime_ns",
        "mtime",
        "mtime_ns",
        "ctime",
        "ctime_ns",
    ]
    return dict(zip(names, STAT.unpack(data), strict=True))


def _check_stat(fields: dict[str, int], st: os.stat_result) -> None:
    assert fields["dev"] == st.st_dev
    assert fields["ino"] == st.st_ino
    assert fields["nlink"] == st.st_nlink
    assert fields["mode"] == st.st_mode
    assert fields["uid"] == st.st_uid and fields["gid"] == st.st_gid
    assert fields["rdev"] == st.st_rdev
    assert fields["size"] == st.st_size
    assert fields["blksize"] == st.st_blksize and fields["blocks"] == st.st_blocks
    assert fields["mtime"] * 10**9 + fields["mtime_ns"] == st.st_mtime_ns
    assert fields["ctime"] * 10**9 + fields["ctime_ns"] == st.st_ctime_ns


# -- table --------------------------------------------------------------------------------


def test_handler_numbers_match_unistd() -> None:
    header = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")  # linux-libc-dev (DEBS)
    numbers = {
        m[1]: int(m[2]) for m in re.finditer(r"#define __NR_(\w+) (\d+)", header.read_text())
    }
    for nr, (name, handler) in sys_fs.HANDLERS.items():
        assert numbers[name] == nr, name
        assert handler.__name__ == f"sys_{name}"


def test_handlers_accept_six_registers(env: tuple[Kernel, FakeMemory, Path]) -> None:
    k, mem, _ = env
    path = mem.cstr("/etc/hello.txt")
    fd = sys_fs.HANDLERS[2][1](k, path, 0, 0, 0xDEAD, 0xBEEF, 0xF00D)
    assert fd >= 3
    assert sys_fs.sys_close(k, fd, 1, 2, 3, 4, 5) == 0


# -- read / write ---------------------------------------------------------------------------


def test_write_to_stdout_exact_bytes(
    env: tuple[Kernel, FakeMemory, Path], capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    k, mem, _ = env
    data = b"out\x00\xff\n"
    assert sys_fs.sys_write(k, 1, mem.alloc(data), len(data)) == len(data)
    err = b"err line\n"
    assert sys_fs.sys_write(k, 2, mem.alloc(err), len(err)) == len(err)
    iov = mem.alloc(struct.pack("<QQQQ", mem.alloc(b"ab"), 2, mem.alloc(b"cd\n"), 3))
    assert sys_fs.sys_writev(k, 1, iov, 2) == 5
    captured = capfdbinary.readouterr()
    assert captured.out == data + b"abcd\n"
    assert captured.err == err


def test_write_to_stdout_binary_exact(
    env: tuple[Kernel, FakeMemory, Path], capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    k, mem, _ = env
    data = bytes(range(256))
    assert sys_fs.sys_write(k, 1, mem.alloc(data), len(data)) == 256
    assert capfdbinary.readouterr().out == data


def test_open_read_close(env: tuple[Kernel, FakeMemory, Path]) -> None:
    k, mem, _ = env
    fd = _open(k, mem, "/etc/hello.txt")
    assert fd == 3
    buf = mem.alloc(64)
    assert sys_fs.sys_read(k, fd, buf, 5) == 5
    assert mem.read(buf, 5) == b"hello"
    assert sys_fs.sys_read(k, fd, buf, 64) == 7
    assert mem.read(buf, 7) == b" world\n"
    assert sys_fs.sys_read(k, fd, buf, 64) == 0
    assert sys_fs.sys_close(k, fd) == 0
    assert sys_fs.sys_close(k, fd) == -errno.EBADF
    assert sys_fs.sys_read(k, fd, buf, 1) == -errno.EBADF


def test_efault(env: tuple[Kernel, FakeMemory, Path]) -> None:
    k, mem, _ = env
    assert sys_fs.sys_open(k, 0, 0, 0) == -errno.EFAULT
    assert sys_fs.sys_open(k, 0x10, 0, 0) == -errno.EFAULT
    fd = _open(k, mem, "/etc/hello.txt")
    assert sys_fs.sys_read(k, fd, 0x10, 5) == -errno.EFAULT
    assert sys_fs.sys_fstat(k, fd, 0x10) == -errno.EFAULT
    assert sys_fs.sys_write(k, 1, 0x10, 5) == -errno.EFAULT
    assert sys_fs.sys_getcwd(k, 0x10, 100) == -errno.EFAULT


def test_errors_are_negative_errno(env: tuple[Kernel, FakeMemory, Path]) -> None:
    k, mem, _ = env
    assert _open(k, mem, "/nope") == -errno.ENOENT
    assert _open(k, mem, "/etc/hello.txt/x") == -errno.ENOTDIR
    assert _open(k, mem, "/etc/new", os.O_CREAT | os.O_WRONLY, 0o644) == -errno.EACCES
    assert _open(k, mem, "/proc/self/maps") == -errno.EACCES
    assert _open(k, mem, "/" + "x" * 300) == -errno.ENAMETOOLONG
    assert sys_fs.sys_open(k, mem.cstr("/" + "a/" * 2100), 0, 0) == -errno.ENAMETOOLONG


def test_pread_pwrite_lseek_ftruncate(env: tuple[Kernel, FakeMemory, Path]) -> None:
    k, mem, root = env
    fd = _open(k, mem, "/rw/f", os.O_CREAT | os.O_RDWR, 0o644)
    assert fd >= 0
    data = mem.alloc(b"0123456789")
    assert sys_fs.sys_write(k, fd, data, 10) == 10
    buf = mem.alloc(16)
    assert sys_fs.sys_pread64(k, fd, buf, 4, 3) == 4
    assert mem.read(buf, 4) == b"3456"
    assert sys_fs.sys_lseek(k, fd, 0, os.SEEK_CUR) == 10
    assert sys_fs.sys_pwrite64(k, fd, mem.alloc(b"XY"), 2, 0) == 2
    assert sys_fs.sys_lseek(k, fd, (-3) & (2**64 - 1), os.SEEK_END) == 7
    assert sys_fs.sys_lseek(k, fd, 0, 99) == -errno.EINVAL
    assert sys_fs.sys_lseek(k, fd, (-100) & (2**64 - 1), os.SEEK_SET) == -errno.EINVAL
    assert sys_fs.sys_pread64(k, fd, buf, 4, (-1) & (2**64 - 1)) == -errno.EINVAL
    assert sys_fs.sys_ftruncate(k, fd, 4) == 0
    assert (root / "rw" / "f").read_bytes() == b"XY23"
    ro = _open(k, mem, "/etc/hello.txt")
    assert sys_fs.sys_ftruncate(k, ro, 0) in (-errno.EINVAL, -errno.EBADF)
    assert sys_fs.sys_write(k, ro, data, 1) == -errno.EBADF
    assert (root / "etc" / "hello.txt").read_bytes() == b"hello world\n"
    assert sys_fs.sys_fsync(k, fd) == 0 and sys_fs.sys_fdatasync(k, fd) == 0


def test_readv_writev(env: tuple[Kernel, FakeMemory, Path]) -> None:
    k, mem, root = env
    fd = _open(k, mem, "/rw/v", os.O_CREAT | os.O_RDWR, 0o644)
    iov = mem.alloc(struct.pack("<QQQQQQ", mem.alloc(b"abc"), 3, 0, 0, mem.alloc(b"defg"), 4))
    assert sys_fs.sys_writev(k, fd, iov, 3) == 7
    assert (root / "rw" / "v").read_bytes() == b"abcdefg"
    b1, b2 = mem.alloc(2), mem.alloc(10)
    riov = mem.alloc(struct.pack("<QQQQ", b1, 2, b2, 10))
    assert sys_fs.sys_lseek(k, fd, 0, os.SEEK_SET) == 0
    assert sys_fs.sys_readv(k, fd, riov, 2) == 7
    assert mem.read(b1, 2) == b"ab" and mem.read(b2, 5) == b"cdefg"
    assert sys_fs.sys_preadv(k, fd, riov, 2, 5) == 2
    assert mem.read(b1, 2) == b"fg"
    assert sys_fs.sys_pwritev(k, fd, iov, 1, 10) == 3
    assert (root / "rw" / "v").read_bytes() == b"abcdefg\0\0\0abc"
    assert sys_fs.sys_readv(k, fd, riov, 1025) == -errno.EINVAL
    assert sys_fs.sys_readv(k, fd, riov, 0xFFFFFFFF) == -errno.EINVAL
    bad = mem.alloc(struct.pack("<QQ", b1, 1 << 63))
    assert sys_fs.sys_writev(k, fd, bad, 1) == -errno.EINVAL
    assert sys_fs.sys_writev(k, fd, iov, 0) == 0


# -- stat family ----------------------------------------------------------------------------


def test_stat_lstat_fstat_vs_host(env: tuple[Kernel, FakeMemory, Path]) -> None:
    k, mem, root = env
    buf = mem.alloc(144)
    assert sys_fs.sys_stat(k, mem.cstr("/link"), buf) == 0
    _check_stat(_unpack_stat(mem.read(buf, 144)), os.stat(root / "etc" / "hello.txt"))
    assert sys_fs.sys_lstat(k, mem.cstr("/link"), buf) == 0
    _check_stat(_unpack_stat(mem.read(buf, 144)), os.lstat(root / "link"))
    fd = _open(k, mem, "/d", os.O_RDONLY | os.O_DIRECTORY)
    assert sys_fs.sys_fstat(k, fd, buf) == 0
    _check_stat(_unpack_stat(mem.read(buf, 144)), os.stat(root / "d"))
    assert sys_fs.sys_fstat(k, 1, buf) == 0
    _check_stat(_unpack_stat(mem.read(buf, 144)), os.fstat(1))
    assert sys_fs.sys_stat(k, mem.cstr("/missing"), buf) == -errno.ENOENT


def test_newfstatat(env: tuple[Kernel, FakeMemory, Path]) -> None:
    k, mem, root = env
    buf = mem.alloc(144)
    dfd = _open(k, mem, "/d", os.O_RDONLY | os.O_DIRECTORY)
    assert sys_fs.sys_newfstatat(k, dfd, mem.cstr("beta"), buf, 0) == 0
    _check_stat(_unpack_stat(mem.read(buf, 144)), os.stat(root / "d" / "beta"))
    assert sys_fs.sys_newfstatat(k, dfd, mem.cstr(""), buf, 0x1000) == 0  # AT_EMPTY_PATH
    _check_stat(_unpack_stat(mem.read(buf, 144)), os.stat(root / "d"))
    assert sys_fs.sys_newfstatat(k, dfd, 0, buf, 0x1000) == 0  # NULL path + AT_EMPTY_PATH
    assert sys_fs.sys_newfstatat(k, dfd, mem.cstr(""), buf, 0) == -errno.ENOENT
    assert sys_fs.sys_newfstatat(k, AT_FDCWD, mem.cstr("link"), buf, 0x100) == 0
    assert stat.S_ISLNK(_unpack_stat(mem.read(buf, 144))["mode"])
    assert sys_fs.sys_newfstatat(k, AT_FDCWD, mem.cstr("link"), buf, 0x1) == -errno.EINVAL
    fd = _open(k, mem, "/etc/hello.txt")
    assert sys_fs.sys_newfstatat(k, fd, mem.cstr("x"), buf, 0) == -errno.ENOTDIR
    assert sys_fs.sys_newfstatat(k, 77, mem.cstr("x"), buf, 0) == -errno.EBADF
    # an absolute path ignores dirfd
    assert sys_fs.sys_newfstatat(k, 77, mem.cstr("/d"), buf, 0) == 0


def test_statx_vs_host(env: tuple[Kernel, FakeMemory, Path]) -> None:
    k, mem, root = env
    buf = mem.alloc(256)
    mem.write(buf, b"\xaa" * 256)
    assert sys_fs.sys_statx(k, AT_FDCWD, mem.cstr("/etc/hello.txt"), 0, 0xFFF, buf) == 0
    raw = mem.read(buf, 256)
    st = os.stat(root / "etc" / "hello.txt")
    mask, blksize, _attrs, nlink, uid, gid, mode = struct.unpack_from("<IIQIIIH", raw, 0)
    ino, size, blocks = struct.unpack_from("<QQQ", raw, 32)
    assert mask & 0x7FF == 0x7FF
    assert (blksize, nlink, uid, gid, mode) == (
        st.st_blksize,
        st.st_nlink,
        st.st_uid,
        st.st_gid,
        st.st_mode,
    )
    assert (ino, size, blocks) == (st.st_ino, st.st_size, st.st_blocks)
    for off, ns in ((64, st.st_atime_ns), (96, st.st_ctime_ns), (112, st.st_mtime_ns)):
        sec, nsec = struct.unpack_from("<qI", raw, off)
        assert sec * 10**9 + nsec == ns
    dev_major, dev_minor = struct.unpack_from("<II", raw, 136)
    assert (dev_major, dev_minor) == (os.major(st.st_dev), os.minor(st.st_dev))
    assert raw[160:] == bytes(96)
    assert sys_fs.sys_statx(k, AT_FDCWD, mem.cstr("/x"), 0x6000, 0x7FF, buf) == -errno.EINVAL
    assert sys_fs.sys_statx(k, AT_FDCWD, mem.cstr("/nope"), 0, 0x7FF, buf) == -errno.ENOENT


def test_access(env: tuple[Kernel, FakeMemory, Path]) -> None:
    k, mem, _ = env
    assert sys_fs.sys_access(k, mem.cstr("/etc/hello.txt"), os.R_OK) == 0
    assert sys_fs.sys_access(k, mem.cstr("/etc/hello.txt"), os.W_OK) == -errno.EACCES
    assert sys_fs.sys_access(k, mem.cstr("/rw"), os.W_OK) == 0
    assert sys_fs.sys_access(k, mem.cstr("/nope"), os.F_OK) == -errno.ENOENT
    assert sys_fs.sys_access(k, mem.cstr("/etc"), 8) == -errno.EINVAL
    dfd = _open(k, mem, "/d", os.O_RDONLY | os.O_DIRECTORY)
    assert sys_fs.sys_faccessat(k, dfd, mem.cstr("alpha"), os.R_OK) == 0
    assert sys_fs.sys_faccessat2(k, dfd, mem.cstr(""), os.R_OK, 0x1000) == 0
    assert sys_fs.sys_faccessat2(k, AT_FDCWD, mem.cstr("/etc"), 0, 0x1) == -errno.EINVAL
    assert sys_fs.sys_access(k, mem.cstr("/dev/null"), os.W_OK) == 0
    assert sys_fs.sys_access(k, mem.cstr("/dev/zero"), os.W_OK) == -errno.EACCES


# -- descriptors ----------------------------------------------------------------------------


def test_dup_family_and_fcntl(env: tuple[Kernel, FakeMemory, Path]) -> None:
    k, mem, _ = env
    fd = _open(k, mem, "/etc/hello.txt", os.O_RDONLY | os.O_CLOEXEC)
    assert sys_fs.sys_fcntl(k, fd, 1, 0) == 1  # F_GETFD: FD_CLOEXEC
    d = sys_fs.sys_dup(k, fd)
    assert d == fd + 1
    assert sys_fs.sys_fcntl(k, d, 1, 0) == 0  # dup clears FD_CLOEXEC
    assert sys_fs.sys_fcntl(k, d, 2, 1) == 0 and sys_fs.sys_fcntl(k, d, 1, 0) == 1
    assert sys_fs.sys_dup2(k, fd, 20) == 20
    assert sys_fs.sys_dup2(k, fd, fd) == fd
    assert sys_fs.sys_dup2(k, 99, 5) == -errno.EBADF
    assert sys_fs.sys_dup3(k, fd, fd, 0) == -errno.EINVAL
    assert sys_fs.sys_dup3(k, fd, 21, 1) == -errno.EINVAL
    assert sys_fs.sys_dup3(k, fd, 21, os.O_CLOEXEC) == 21
    assert sys_fs.sys_fcntl(k, 21, 1, 0) == 1
    assert sys_fs.sys_fcntl(k, fd, 0, 30) == 30  # F_DUPFD
    assert sys_fs.sys_fcntl(k, fd, 1030, 30) == 31  # F_DUPFD_CLOEXEC
    assert sys_fs.sys_fcntl(k, 31, 1, 0) == 1
    assert sys_fs.sys_fcntl(k, fd, 0, 5000) == -errno.EINVAL
    fl = sys_fs.sys_fcntl(k, fd, 3, 0)  # F_GETFL
    assert fl & os.O_ACCMODE == os.O_RDONLY and not fl & os.O_NOFOLLOW
    assert sys_fs.sys_fcntl(k, fd, 4, os.O_NONBLOCK) == 0
    assert sys_fs.sys_fcntl(k, fd, 3, 0) & os.O_NONBLOCK
    assert sys_fs.sys_fcntl(k, fd, 9999, 0) == -errno.EINVAL
    assert sys_fs.sys_fcntl(k, 99, 1, 0) == -errno.EBADF
    # shared offsets
    buf = mem.alloc(8)
    assert sys_fs.sys_read(k, fd, buf, 2) == 2
    assert sys_fs.sys_read(k, 20, buf, 3) == 3 and mem.read(buf, 3) == b"llo"
    # ioctl FIOCLEX / FIONCLEX
    assert sys_fs.sys_ioctl(k, 20, 0x5451, 0) == 0 and sys_fs.sys_fcntl(k, 20, 1, 0) == 1
    assert sys_fs.sys_ioctl(k, 20, 0x5450, 0) == 0 and sys_fs.sys_fcntl(k, 20, 1, 0) == 0
    # close_range
    assert sys_fs.sys_close_range(k, 30, 31, 4) == 0
    assert sys_fs.sys_fcntl(k, 30, 1, 0) == 1
    assert sys_fs.sys_close_range(k, 20, 0xFFFFFFFF, 0) == 0
    assert 20 not in k.fds and 30 not in k.fds and fd in k.fds
    assert sys_fs.sys_close_range(k, 5, 4, 0) == -errno.EINVAL


def test_append_flag(env: tuple[Kernel, FakeMemory, Path]) -> None:
    k, mem, root = env
    (root / "rw" / "log").write_bytes(b"a")
    fd = _open(k, mem, "/rw/log", os.O_WRONLY | os.O_APPEND)
    assert sys_fs.sys_fcntl(k, fd, 3, 0) & os.O_APPEND
    assert sys_fs.sys_write(k, fd, mem.alloc(b"b"), 1) == 1
    assert sys_fs.sys_fcntl(k, fd, 4, 0) == 0  # clear O_APPEND
    assert sys_fs.sys_lseek(k, fd, 0, os.SEEK_SET) == 0
    assert sys_fs.sys_write(k, fd, mem.alloc(b"c"), 1) == 1
    assert (root / "rw" / "log").read_bytes() == b"cb"


def test_stdio_close_does_not_close_host(env: tuple[Kernel, FakeMemory, Path]) -> None:
    k, mem, _ = env
    d = sys_fs.sys_dup(k, 1)
    assert sys_fs.sys_close(k, 1) == 0
    assert sys_fs.sys_close(k, 0) == 0
    os.fstat(1)
    os.fstat(0)
    assert sys_fs.sys_dup2(k, d, 1) == 1
    assert _open(k, mem, "/etc/hello.txt") == 0  # lowest free


def test_ioctl(env: tuple[Kernel, FakeMemory, Path]) -> None:
    k, mem, _ = env
    buf = mem.alloc(64)
    fd = _open(k, mem, "/etc/hello.txt")
    assert sys_fs.sys_ioctl(k, fd, 0x5401, buf) == -errno.ENOTTY
    assert sys_fs.sys_ioctl(k, fd, 0x5413, buf) == -errno.ENOTTY
    assert sys_fs.sys_ioctl(k, fd, 0x541B, buf) == 0  # FIONREAD on a regular file
    assert struct.unpack("<i", mem.read(buf, 4))[0] == 12
    assert sys_fs.sys_ioctl(k, fd, 0x1234, buf) == -errno.ENOTTY
    master, slave = os.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("<HHHH", 33, 101, 0, 0))
        tty = k.fds.install(OpenFile(slave, None, os.O_RDWR))
        assert sys_fs.sys_ioctl(k, tty, 0x5401, buf) == 0
        iflag, oflag, cflag, lflag, line = struct.unpack_from("<IIIIB", mem.read(buf, 36))
        attrs = termios.tcgetattr(slave)
        assert [iflag, oflag, cflag, lflag] == attrs[:4]
        cc = mem.read(buf + 17, 19)
        assert cc[termios.VINTR] == attrs[6][termios.VINTR][0]
        assert line == 0
        assert sys_fs.sys_ioctl(k, tty, 0x5413, buf) == 0
        assert struct.unpack("<HHHH", mem.read(buf, 8))[:2] == (33, 101)
        k.fds.close(tty)
    finally:
        os.close(master)


# -- directories and names ------------------------------------------------------------------


def test_getcwd_chdir_fchdir(env: tuple[Kernel, FakeMemory, Path]) -> None:
    k, mem, _ = env
    buf = mem.alloc(64)
    assert sys_fs.sys_getcwd(k, buf, 64) == 2 and mem.read(buf, 2) == b"/\0"
    assert sys_fs.sys_chdir(k, mem.cstr("d/sub")) == 0
    assert sys_fs.sys_getcwd(k, buf, 64) == len("/d/sub") + 1
    assert mem.read(buf, 7) == b"/d/sub\0"
    assert sys_fs.sys_getcwd(k, buf, 3) == -errno.ERANGE
    assert _open(k, mem, "../alpha") >= 0
    etc = _open(k, mem, "/etc", os.O_RDONLY | os.O_DIRECTORY)
    assert sys_fs.sys_fchdir(k, etc) == 0
    assert k.fs.cwd == "/etc"
    assert sys_fs.sys_chdir(k, mem.cstr("/nope")) == -errno.ENOENT
    assert sys_fs.sys_chdir(k, mem.cstr("/etc/hello.txt")) == -errno.ENOTDIR
    f = _open(k, mem, "hello.txt")
    assert sys_fs.sys_fchdir(k, f) == -errno.ENOTDIR


def test_getdents64_handler(env: tuple[Kernel, FakeMemory, Path]) -> None:
    k, mem, root = env
    fd = _open(k, mem, "/d", os.O_RDONLY | os.O_DIRECTORY)
    buf = mem.alloc(64)
    names = []
    while True:
        n = sys_fs.sys_getdents64(k, fd, buf, 64)
        assert n >= 0
        if n == 0:
            break
        data = mem.read(buf, n)
        pos = 0
        while pos < n:
            _ino, _off, reclen, _type = struct.unpack_from("<QqHB", data, pos)
            names.append(data[pos + 19 : pos + reclen].split(b"\0")[0].decode())
            pos += reclen
    assert sorted(names) == sorted([".", "..", *os.listdir(root / "d")])
    assert sys_fs.sys_getdents64(k, fd, buf, 8) == 0  # at the end: 0, not EINVAL
    f = _open(k, mem, "/etc/hello.txt")
    assert sys_fs.sys_getdents64(k, f, buf, 64) == -errno.ENOTDIR


def test_openat_relative_to_dirfd(env: tuple[Kernel, FakeMemory, Path]) -> None:
    k, mem, _ = env
    dfd = _open(k, mem, "/d", os.O_RDONLY | os.O_DIRECTORY)
    fd = sys_fs.sys_openat(k, dfd, mem.cstr("gamma"), 0, 0)
    buf = mem.alloc(8)
    assert sys_fs.sys_read(k, fd, buf, 8) == 5 and mem.read(buf, 5) == b"gamma"
    assert sys_fs.sys_openat(k, dfd, mem.cstr("../../../etc/hello.txt"), 0, 0) >= 0
    assert sys_fs.sys_openat(k, AT_FDCWD, mem.cstr("d/alpha"), 0, 0) >= 0
    assert sys_fs.sys_openat(k, fd, mem.cstr("x"), 0, 0) == -errno.ENOTDIR


def test_mkdir_rename_unlink_rmdir(env: tuple[Kernel, FakeMemory, Path]) -> None:
    k, mem, root = env
    rw = root / "rw"
    assert sys_fs.sys_mkdir(k, mem.cstr("/rw/x"), 0o755) == 0
    assert (rw / "x").is_dir()
    assert sys_fs.sys_mkdir(k, mem.cstr("/rw/x"), 0o755) == -errno.EEXIST
    assert sys_fs.sys_mkdir(k, mem.cstr("/etc/x"), 0o755) == -errno.EACCES
    assert not (root / "etc" / "x").exists()
    dfd = _open(k, mem, "/rw", os.O_RDONLY | os.O_DIRECTORY)
    assert sys_fs.sys_mkdirat(k, dfd, mem.cstr("y"), 0o700) == 0
    assert (rw / "y").is_dir()
    fd = _open(k, mem, "/rw/x/f", os.O_CREAT | os.O_WRONLY, 0o644)
    assert fd >= 0 and (rw / "x" / "f").exists()
    assert sys_fs.sys_rename(k, mem.cstr("/rw/x/f"), mem.cstr("/rw/y/g")) == 0
    assert (rw / "y" / "g").exists() and not (rw / "x" / "f").exists()
    assert sys_fs.sys_renameat(k, dfd, mem.cstr("y/g"), dfd, mem.cstr("h")) == 0
    assert (rw / "h").exists()
    (rw / "i").write_text("i")
    assert sys_fs.sys_renameat2(k, dfd, mem.cstr("h"), dfd, mem.cstr("i"), 1) == -errno.EEXIST
    assert sys_fs.sys_renameat2(k, dfd, mem.cstr("h"), dfd, mem.cstr("i"), 3) == -errno.EINVAL
    assert sys_fs.sys_rename(k, mem.cstr("/etc/hello.txt"), mem.cstr("/rw/s")) == -errno.EACCES
    assert sys_fs.sys_rename(k, mem.cstr("/rw/h"), mem.cstr("/etc/s")) == -errno.EACCES
    assert (root / "etc" / "hello.txt").exists() and not (root / "etc" / "s").exists()
    assert sys_fs.sys_unlink(k, mem.cstr("/rw/h")) == 0
    assert sys_fs.sys_unlink(k, mem.cstr("/rw/h")) == -errno.ENOENT
    assert sys_fs.sys_unlink(k, mem.cstr("/etc/hello.txt")) == -errno.EACCES
    assert sys_fs.sys_unlinkat(k, dfd, mem.cstr("i"), 0) == 0
    assert sys_fs.sys_unlinkat(k, dfd, mem.cstr("x"), 0) == -errno.EISDIR
    assert sys_fs.sys_unlinkat(k, dfd, mem.cstr("x"), 0x200) == 0
    assert sys_fs.sys_unlinkat(k, dfd, mem.cstr("y"), 0x4) == -errno.EINVAL
    assert sys_fs.sys_rmdir(k, mem.cstr("/rw/y")) == 0
    assert sys_fs.sys_rmdir(k, mem.cstr("/d/sub")) == -errno.EACCES
    assert sorted(os.listdir(rw)) == []


def test_readlink_and_symlink(env: tuple[Kernel, FakeMemory, Path]) -> None:
    k, mem, root = env
    buf = mem.alloc(64)
    assert sys_fs.sys_readlink(k, mem.cstr("/link"), buf, 64) == len("/etc/hello.txt")
    assert mem.read(buf, 14) == b"/etc/hello.txt"
    assert sys_fs.sys_readlink(k, mem.cstr("/link"), buf, 4) == 4
    assert sys_fs.sys_readlink(k, mem.cstr("/link"), buf, 0) == -errno.EINVAL
    assert sys_fs.sys_readlink(k, mem.cstr("/etc"), buf, 64) == -errno.EINVAL
    assert sys_fs.sys_readlink(k, mem.cstr("/proc/self/exe"), buf, 64) == len("/bin/prog")
    assert mem.read(buf, 9) == b"/bin/prog"
    assert sys_fs.sys_readlink(k, mem.cstr("/proc/self/maps"), buf, 64) == -errno.EACCES
    fd = _open(k, mem, "/etc/hello.txt")
    n = sys_fs.sys_readlinkat(k, AT_FDCWD, mem.cstr(f"/proc/self/fd/{fd}"), buf, 64)
    assert mem.read(buf, n) == b"/etc/hello.txt"
    assert sys_fs.sys_symlink(k, mem.cstr("../etc"), mem.cstr("/rw/l")) == 0
    assert os.readlink(root / "rw" / "l") == "../etc"
    dfd = _open(k, mem, "/rw", os.O_RDONLY | os.O_DIRECTORY)
    assert sys_fs.sys_symlinkat(k, mem.cstr("x"), dfd, mem.cstr("m")) == 0
    assert os.readlink(root / "rw" / "m") == "x"
    assert sys_fs.sys_readlinkat(k, dfd, mem.cstr("m"), buf, 64) == 1
    assert sys_fs.sys_symlink(k, mem.cstr("x"), mem.cstr("/etc/l")) == -errno.EACCES
    assert not os.path.lexists(root / "etc" / "l")
    assert sys_fs.sys_symlink(k, mem.cstr("x"), mem.cstr("/rw/m")) == -errno.EEXIST


def test_chmod_fchmod_umask(env: tuple[Kernel, FakeMemory, Path]) -> None:
    k, mem, root = env
    assert sys_fs.sys_umask(k, 0o27) == k.fs._host_mask  # starts as the host's umask
    assert sys_fs.sys_umask(k, 0o22) == 0o27
    fd = _open(k, mem, "/rw/f", os.O_CREAT | os.O_WRONLY, 0o666)
    assert stat.S_IMODE((root / "rw" / "f").stat().st_mode) == 0o644
    assert sys_fs.sys_chmod(k, mem.cstr("/rw/f"), 0o600) == 0
    assert stat.S_IMODE((root / "rw" / "f").stat().st_mode) == 0o600
    assert sys_fs.sys_fchmod(k, fd, 0o640) == 0
    assert stat.S_IMODE((root / "rw" / "f").stat().st_mode) == 0o640
    dfd = _open(k, mem, "/rw", os.O_RDONLY | os.O_DIRECTORY)
    assert sys_fs.sys_fchmodat(k, dfd, mem.cstr("f"), 0o604) == 0
    assert stat.S_IMODE((root / "rw" / "f").stat().st_mode) == 0o604
    before = (root / "etc" / "hello.txt").stat().st_mode
    assert sys_fs.sys_chmod(k, mem.cstr("/etc/hello.txt"), 0o777) == -errno.EACCES
    ro = _open(k, mem, "/etc/hello.txt")
    assert sys_fs.sys_fchmod(k, ro, 0o777) == -errno.EACCES
    assert (root / "etc" / "hello.txt").stat().st_mode == before


def test_creat_truncate(env: tuple[Kernel, FakeMemory, Path]) -> None:
    k, mem, root = env
    (root / "rw" / "t").write_bytes(b"long content")
    fd = sys_fs.sys_creat(k, mem.cstr("/rw/t"), 0o644)
    assert fd >= 0 and (root / "rw" / "t").read_bytes() == b""
    assert sys_fs.sys_write(k, fd, mem.alloc(b"abcdef"), 6) == 6
    assert sys_fs.sys_truncate(k, mem.cstr("/rw/t"), 3) == 0
    assert (root / "rw" / "t").read_bytes() == b"abc"
    assert sys_fs.sys_truncate(k, mem.cstr("/etc/hello.txt"), 0) == -errno.EACCES
    assert sys_fs.sys_creat(k, mem.cstr("/etc/hello.txt"), 0o644) == -errno.EACCES
    assert (root / "etc" / "hello.txt").read_bytes() == b"hello world\n"


def test_dev_null_and_zero(env: tuple[Kernel, FakeMemory, Path]) -> None:
    k, mem, _ = env
    null = _open(k, mem, "/dev/null", os.O_WRONLY)
    assert sys_fs.sys_write(k, null, mem.alloc(b"xyz"), 3) == 3
    zero = _open(k, mem, "/dev/zero")
    buf = mem.alloc(b"\xff" * 8)
    assert sys_fs.sys_read(k, zero, buf, 8) == 8 and mem.read(buf, 8) == bytes(8)
    assert _open(k, mem, "/dev/zero", os.O_RDWR) == -errno.EACCES
    assert _open(k, mem, "/dev/mem") == -errno.EACCES
    assert _open(k, mem, "/sys/class") == -errno.EACCES
