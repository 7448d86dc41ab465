"""File and file-system system calls: marshalling between guest registers/memory and the
:class:`~leakdbt.linux.fs.FileSystem` and :class:`~leakdbt.linux.files.FdTable` of the kernel.

Follows the Linux man pages read(2), write(2), open(2), close(2), stat(2), statx(2), lseek(2),
pread(2), readv(2), preadv(2), sendfile(2), access(2), dup(2), fcntl(2), truncate(2),
fsync(2), getcwd(3) (the system call), chdir(2), rename(2), mkdir(2), rmdir(2), unlink(2),
readlink(2), getdents64(2), symlink(2), chmod(2), umask(2), close_range(2), ioctl(2),
ioctl_tty(2) (TCGETS, TIOCGWINSZ, TIOCGPGRP/TIOCSPGRP, FIONREAD) and the x86-64 kernel
layouts of struct stat (144 bytes), struct statx (256 bytes), struct iovec, struct flock and
struct termios.

Every handler takes the raw 64-bit argument registers and returns the result or ``-errno``:
FsError/OSError become ``-errno`` and a :class:`~leakdbt.machine.memory.GuestMemoryFault`
becomes ``-EFAULT``.  Writes to fds 1/2 are single ``os.write`` calls on the host's fds (no
Python buffering); reads of fd 0 are ``os.read`` on the host's stdin.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import inspect
import os
import select
import signal
import struct
from collections.abc import Callable

from leakdbt.linux.blocking import may_wait, nonblocking, park_on_fd, take_progress, write_waiting
from leakdbt.linux.files import MAX_RW_COUNT, FsError, OpenFile
from leakdbt.linux.fs import (
    PATH_MAX,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    RENAME_WHITEOUT,
    Anchor,
    FileSystem,
)
from leakdbt.linux.kernel import EFAULT, Kernel, s32, s64
from leakdbt.linux.sigdeliver import send_from_kernel
from leakdbt.machine.memory import GuestMemoryFault

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_REMOVEDIR = 0x200
AT_EACCESS = 0x200
AT_NO_AUTOMOUNT = 0x800
AT_EMPTY_PATH = 0x1000
AT_STATX_SYNC_TYPE = 0x6000
AT_STATX_DONT_SYNC = 0x4000

F_DUPFD = 0
F_GETFD = 1
F_SETFD = 2
F_GETFL = 3
F_SETFL = 4
F_GETLK = 5
F_SETLK = 6
F_SETLKW = 7
F_OFD_GETLK = 36
F_OFD_SETLK = 37
F_OFD_SETLKW = 38
F_DUPFD_CLOEXEC = 1030
F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032
F_ADD_SEALS = 1033
F_GET_SEALS = 1034
FD_CLOEXEC = 1
_SETFL_MASK = os.O_APPEND | os.O_NONBLOCK | os.O_ASYNC | os.O_DIRECT | os.O_NOATIME
_FLOCK_SIZE = 32  # struct flock on x86-64

TCGETS = 0x5401
TIOCGWINSZ = 0x5413
TIOCGPGRP = 0x540F
TIOCSPGRP = 0x5410
FIONREAD = 0x541B
FIONCLEX = 0x5450
FIOCLEX = 0x5451
TERMIOS_SIZE = 36  # struct termios (kernel): 4 x u32, c_line, c_cc[19]
WINSIZE_SIZE = 8

IOV_MAX = 1024
SSIZE_MAX = (1 << 63) - 1
CLOSE_RANGE_UNSHARE = 2
CLOSE_RANGE_CLOEXEC = 4

STATX_BASIC_STATS = 0x7FF
STATX__RESERVED = 0x80000000
STAT_SIZE = 144
STATX_SIZE = 256

_STAT = struct.Struct("<QQQIIIIQqqqqQqQqQ24x")
_STATX_HEAD = struct.Struct("<IIQIIIHHQQQQ")
_STATX_TS = struct.Struct("<qIi")
_STATX_DEVS = struct.Struct("<IIII")
_IOVEC = struct.Struct("<QQ")

assert _STAT.size == STAT_SIZE


# -- plumbing -------------------------------------------------------------------------------


def _syscall(fn: Callable[..., int]) -> Callable[..., int]:
    """Wrap a handler: accept any number of argument registers, map errors to -errno."""
    nargs = len(inspect.signature(fn).parameters) - 1

    @functools.wraps(fn)
    def handler(k: Kernel, *args: int) -> int:
        if len(args) < nargs:
            args = args + (0,) * (nargs - len(args))
        try:
            return fn(k, *args[:nargs])
        except GuestMemoryFault:
            return EFAULT
        except OSError as e:
            return -(e.errno or errno.EIO)
        except (ValueError, OverflowError):
            return -errno.EINVAL

    return handler


def _fs(k: Kernel) -> FileSystem:
    """The kernel's FileSystem, told about the guest's exe and fds (for /proc/self)."""
    fs = k.fs
    if k.exe_path:
        fs.exe_path = k.exe_path
    fs.fd_paths = k.fds.guest_path
    return fs


def _path(k: Kernel, addr: int) -> str:
    """A guest path string (EFAULT for NULL, ENAMETOOLONG past PATH_MAX)."""
    if addr == 0:
        raise GuestMemoryFault(0)
    raw = k.mem.read_cstring(addr, PATH_MAX)
    if len(raw) >= PATH_MAX:
        raise FsError(errno.ENAMETOOLONG)
    return os.fsdecode(raw)


def _path_or_empty(k: Kernel, addr: int, flags: int) -> str:
    """Like _path, but a NULL path is "" when AT_EMPTY_PATH is given."""
    if addr == 0 and flags & AT_EMPTY_PATH:
        return ""
    return _path(k, addr)


def _base(k: Kernel, dirfd: int, path: str) -> Anchor | None:
    """The directory a relative ``path`` is resolved from (None: the cwd): the host directory
    the fd holds, not the path it was opened by (which may name something else by now)."""
    if path.startswith("/") or dirfd == AT_FDCWD:
        return None
    f = k.fds.get(dirfd)
    if f.path is None or not f.is_dir:
        raise FsError(errno.ENOTDIR)
    return Anchor(f.path, f.host_fd)


def _fd_target(k: Kernel, dirfd: int) -> OpenFile | None:
    """The open file an AT_EMPTY_PATH call acts on (None: the cwd)."""
    if dirfd == AT_FDCWD:
        return None
    return k.fds.get(dirfd)


def pack_stat(st: os.stat_result) -> bytes:
    """The x86-64 kernel ``struct stat`` (144 bytes) of a host stat result."""
    atime, atime_ns = divmod(_ns(st, "atime"), 10**9)
    mtime, mtime_ns = divmod(_ns(st, "mtime"), 10**9)
    ctime, ctime_ns = divmod(_ns(st, "ctime"), 10**9)
    return _STAT.pack(
        st.st_dev & 0xFFFFFFFFFFFFFFFF,
        st.st_ino & 0xFFFFFFFFFFFFFFFF,
        st.st_nlink,
        st.st_mode,
        st.st_uid,
        st.st_gid,
        0,
        getattr(st, "st_rdev", 0) or 0,
        st.st_size,
        getattr(st, "st_blksize", 0) or 0,
        getattr(st, "st_blocks", 0) or 0,
        atime,
        atime_ns,
        mtime,
        mtime_ns,
        ctime,
        ctime_ns,
    )


def pack_statx(st: os.stat_result) -> bytes:
    """The ``struct statx`` (256 bytes) of a host stat result (mask STATX_BASIC_STATS)."""
    head = _STATX_HEAD.pack(
        STATX_BASIC_STATS,
        getattr(st, "st_blksize", 0) or 0,
        0,  # stx_attributes
        st.st_nlink,
        st.st_uid,
        st.st_gid,
        st.st_mode & 0xFFFF,
        0,
        st.st_ino & 0xFFFFFFFFFFFFFFFF,
        st.st_size,
        getattr(st, "st_blocks", 0) or 0,
        0,  # stx_attributes_mask
    )
    times = b""
    for name in ("atime", None, "ctime", "mtime"):  # stx_atime, stx_btime, stx_ctime, stx_mtime
        if name is None:
            times += bytes(_STATX_TS.size)
            continue
        sec, nsec = divmod(_ns(st, name), 10**9)
        times += _STATX_TS.pack(sec, nsec, 0)
    rdev = getattr(st, "st_rdev", 0) or 0
    devs = _STATX_DEVS.pack(
        os.major(rdev), os.minor(rdev), os.major(st.st_dev), os.minor(st.st_dev)
    )
    out = head + times + devs
    return out + bytes(STATX_SIZE - len(out))


def _ns(st: os.stat_result, name: str) -> int:
    value = getattr(st, f"st_{name}_ns", None)
    if value is None:
        value = int(getattr(st, f"st_{name}") * 10**9)
    return int(value)


def _iovecs(k: Kernel, iov: int, iovcnt: int) -> list[tuple[int, int]]:
    """The guest's struct iovec array (EINVAL past IOV_MAX or SSIZE_MAX bytes)."""
    count = s32(iovcnt)
    if count < 0 or count > IOV_MAX:
        raise FsError(errno.EINVAL)
    if count == 0:
        return []
    vecs = [(b, n) for b, n in _IOVEC.iter_unpack(k.mem.read(iov, _IOVEC.size * count))]
    total = 0
    for _, length in vecs:
        total += length
        if length > SSIZE_MAX or total > SSIZE_MAX:
            raise FsError(errno.EINVAL)
    return vecs


def _scatter(k: Kernel, vecs: list[tuple[int, int]], data: bytes) -> None:
    off = 0
    for base, length in vecs:
        if off >= len(data):
            break
        if length:
            piece = data[off : off + length]
            k.mem.write(base, piece)
            off += len(piece)


def _gather(k: Kernel, vecs: list[tuple[int, int]]) -> bytes:
    parts = []
    left = MAX_RW_COUNT
    for base, length in vecs:
        n = min(length, left)
        if n:
            parts.append(k.mem.read(base, n))
            left -= n
    return b"".join(parts)


def _offset(raw: int) -> int:
    off = s64(raw)
    if off < 0:
        raise FsError(errno.EINVAL)
    return off


# -- data -----------------------------------------------------------------------------------


def _written(k: Kernel, write: Callable[[], int]) -> int:
    """Run a guest write; on a pipe with no reader the guest gets SIGPIPE first (and dies of
    it unless it ignores, blocks or catches it), then EPIPE, as write(2) says."""
    try:
        return write()
    except BrokenPipeError:
        send_from_kernel(k, signal.SIGPIPE, "write to a pipe with no reader")
        raise


@_syscall
def sys_read(k: Kernel, fd: int, buf: int, count: int) -> int:
    """read(2); a read that would block lets other threads run (park_on_fd)."""
    f = k.fds.get(s32(fd))
    if count and may_wait(k, f) and park_on_fd(k, f.host_fd, select.POLLIN, 0, "read"):
        return 0  # the call is made again once the fd is readable
    data = f.read(min(count, MAX_RW_COUNT))
    if data:
        k.mem.write(buf, data)
    return len(data)


@_syscall
def sys_write(k: Kernel, fd: int, buf: int, count: int) -> int:
    """write(2); into a full pipe or socket, other threads run meanwhile
    (blocking.write_waiting)."""
    done = take_progress(k)
    f = k.fds.get(s32(fd))
    data = k.mem.read(buf, min(count, MAX_RW_COUNT)) if count else b""
    if data and may_wait(k, f) and not nonblocking(f.host_fd):
        return _written(k, lambda: write_waiting(k, f, data, 1, done))
    return _written(k, lambda: f.write(data))


@_syscall
def sys_pread64(k: Kernel, fd: int, buf: int, count: int, offset: int) -> int:
    """pread64(2)."""
    f = k.fds.get(s32(fd))
    data = f.pread(min(count, MAX_RW_COUNT), _offset(offset))
    if data:
        k.mem.write(buf, data)
    return len(data)


@_syscall
def sys_pwrite64(k: Kernel, fd: int, buf: int, count: int, offset: int) -> int:
    """pwrite64(2)."""
    f = k.fds.get(s32(fd))
    off = _offset(offset)
    data = k.mem.read(buf, min(count, MAX_RW_COUNT)) if count else b""
    return _written(k, lambda: f.pwrite(data, off))


@_syscall
def sys_readv(k: Kernel, fd: int, iov: int, iovcnt: int) -> int:
    """readv(2): one host read, scattered over the guest's buffers."""
    f = k.fds.get(s32(fd))
    vecs = _iovecs(k, iov, iovcnt)
    total = min(sum(n for _, n in vecs), MAX_RW_COUNT)
    if total and may_wait(k, f) and park_on_fd(k, f.host_fd, select.POLLIN, 19, "readv"):
        return 0  # made again once readable
    data = f.read(total)
    _scatter(k, vecs, data)
    return len(data)


@_syscall
def sys_writev(k: Kernel, fd: int, iov: int, iovcnt: int) -> int:
    """writev(2): the guest's buffers gathered into one host write (in pieces that wait our
    way into a full pipe or socket, as write)."""
    done = take_progress(k)
    f = k.fds.get(s32(fd))
    data = _gather(k, _iovecs(k, iov, iovcnt))
    if data and may_wait(k, f) and not nonblocking(f.host_fd):
        return _written(k, lambda: write_waiting(k, f, data, 20, done, "writev"))
    return _written(k, lambda: f.write(data))


@_syscall
def sys_preadv(k: Kernel, fd: int, iov: int, iovcnt: int, pos: int) -> int:
    """preadv(2) (x86-64 passes the whole offset in pos_l)."""
    f = k.fds.get(s32(fd))
    vecs = _iovecs(k, iov, iovcnt)
    data = f.pread(min(sum(n for _, n in vecs), MAX_RW_COUNT), _offset(pos))
    _scatter(k, vecs, data)
    return len(data)


@_syscall
def sys_pwritev(k: Kernel, fd: int, iov: int, iovcnt: int, pos: int) -> int:
    """pwritev(2)."""
    f = k.fds.get(s32(fd))
    data, off = _gather(k, _iovecs(k, iov, iovcnt)), _offset(pos)
    return _written(k, lambda: f.pwrite(data, off))


@_syscall
def sys_sendfile(k: Kernel, out_fd: int, in_fd: int, offset: int, count: int) -> int:
    """sendfile(2): the host's, between the two host fds; with ``offset`` the input's own
    offset is left alone and the new one is written back."""
    dst, src = k.fds.get(s32(out_fd)), k.fds.get(s32(in_fd))
    n = min(count, MAX_RW_COUNT)
    if not offset:
        return _written(k, lambda: os.sendfile(dst.host_fd, src.host_fd, None, n))
    start = s64(struct.unpack("<q", k.mem.read(offset, 8))[0])
    if start < 0:
        return -errno.EINVAL
    done = _written(k, lambda: os.sendfile(dst.host_fd, src.host_fd, start, n))
    k.mem.write(offset, struct.pack("<q", start + done))
    return done


@_syscall
def sys_lseek(k: Kernel, fd: int, offset: int, whence: int) -> int:
    """lseek(2) (SEEK_SET/CUR/END/DATA/HOLE)."""
    f = k.fds.get(s32(fd))
    w = s32(whence)
    if w not in (os.SEEK_SET, os.SEEK_CUR, os.SEEK_END, os.SEEK_DATA, os.SEEK_HOLE):
        return -errno.EINVAL
    return f.lseek(s64(offset), w)


@_syscall
def sys_getdents64(k: Kernel, fd: int, dirp: int, count: int) -> int:
    """getdents64(2): linux_dirent64 records; 0 at the end of the directory."""
    data = k.fds.get(s32(fd)).getdents64(min(count, MAX_RW_COUNT))
    if data:
        k.mem.write(dirp, data)
    return len(data)


@_syscall
def sys_ftruncate(k: Kernel, fd: int, length: int) -> int:
    """ftruncate(2)."""
    k.fds.get(s32(fd)).ftruncate(s64(length))
    return 0


@_syscall
def sys_truncate(k: Kernel, path: int, length: int) -> int:
    """truncate(2) (writable directories only)."""
    _fs(k).truncate(_path(k, path), s64(length))
    return 0


@_syscall
def sys_fsync(k: Kernel, fd: int) -> int:
    """fsync(2)."""
    os.fsync(k.fds.get(s32(fd)).host_fd)
    return 0


@_syscall
def sys_fdatasync(k: Kernel, fd: int) -> int:
    """fdatasync(2)."""
    os.fdatasync(k.fds.get(s32(fd)).host_fd)
    return 0


# -- opening and descriptors ----------------------------------------------------------------


def _do_open(k: Kernel, dirfd: int, path_addr: int, flags: int, mode: int) -> int:
    path = _path(k, path_addr)
    fl = s32(flags)
    f = _fs(k).open(path, fl, mode & 0o7777, _base(k, dirfd, path))
    try:
        return k.fds.install(f, cloexec=bool(fl & os.O_CLOEXEC))
    except OSError:
        f.close_host()
        raise


@_syscall
def sys_open(k: Kernel, path: int, flags: int, mode: int) -> int:
    """open(2)."""
    return _do_open(k, AT_FDCWD, path, flags, mode)


@_syscall
def sys_creat(k: Kernel, path: int, mode: int) -> int:
    """creat(2): open(path, O_CREAT | O_WRONLY | O_TRUNC, mode)."""
    return _do_open(k, AT_FDCWD, path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, mode)


@_syscall
def sys_openat(k: Kernel, dirfd: int, path: int, flags: int, mode: int) -> int:
    """openat(2)."""
    return _do_open(k, s32(dirfd), path, flags, mode)


@_syscall
def sys_close(k: Kernel, fd: int) -> int:
    """close(2)."""
    k.fds.close(s32(fd))
    return 0


@_syscall
def sys_close_range(k: Kernel, first: int, last: int, flags: int) -> int:
    """close_range(2) (CLOSE_RANGE_CLOEXEC marks instead of closing; UNSHARE is moot)."""
    lo, hi, fl = first & 0xFFFFFFFF, last & 0xFFFFFFFF, flags & 0xFFFFFFFF
    if lo > hi or fl & ~(CLOSE_RANGE_UNSHARE | CLOSE_RANGE_CLOEXEC):
        return -errno.EINVAL
    for fd in [fd for fd in k.fds if lo <= fd <= hi]:
        if fl & CLOSE_RANGE_CLOEXEC:
            k.fds.set_cloexec(fd, True)
        else:
            k.fds.close(fd)
    return 0


@_syscall
def sys_dup(k: Kernel, fd: int) -> int:
    """dup(2)."""
    return k.fds.dup(s32(fd))


@_syscall
def sys_dup2(k: Kernel, oldfd: int, newfd: int) -> int:
    """dup2(2)."""
    return k.fds.dup2(s32(oldfd), s32(newfd))


@_syscall
def sys_dup3(k: Kernel, oldfd: int, newfd: int, flags: int) -> int:
    """dup3(2)."""
    old, new, fl = s32(oldfd), s32(newfd), s32(flags)
    if fl & ~os.O_CLOEXEC or old == new:
        return -errno.EINVAL
    return k.fds.dup2(old, new, cloexec=bool(fl & os.O_CLOEXEC))


@_syscall
def sys_fcntl(k: Kernel, fd: int, cmd: int, arg: int) -> int:
    """fcntl(2): dup, FD_CLOEXEC, status flags, record locks, pipe size and seals."""
    guest_fd, c = s32(fd), s32(cmd)
    f = k.fds.get(guest_fd)
    if c in (F_DUPFD, F_DUPFD_CLOEXEC):
        if arg >= k.fds.max_fds:
            return -errno.EINVAL
        return k.fds.dup(guest_fd, lowest=arg, cloexec=c == F_DUPFD_CLOEXEC)
    if c == F_GETFD:
        return FD_CLOEXEC if k.fds.get_cloexec(guest_fd) else 0
    if c == F_SETFD:
        k.fds.set_cloexec(guest_fd, bool(arg & FD_CLOEXEC))
        return 0
    if c == F_GETFL:
        host = fcntl.fcntl(f.host_fd, fcntl.F_GETFL)
        return (host & ~os.O_NOFOLLOW) | (f.flags & os.O_NOFOLLOW)
    if c == F_SETFL:
        fcntl.fcntl(f.host_fd, fcntl.F_SETFL, s32(arg) & _SETFL_MASK)
        f.flags = (f.flags & ~_SETFL_MASK) | (s32(arg) & _SETFL_MASK)
        return 0
    if c in (F_GETLK, F_SETLK, F_SETLKW, F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW):
        result = fcntl.fcntl(f.host_fd, c, k.mem.read(arg, _FLOCK_SIZE))
        if c in (F_GETLK, F_OFD_GETLK):
            k.mem.write(arg, result)
        return 0
    if c in (F_SETPIPE_SZ, F_GETPIPE_SZ, F_ADD_SEALS, F_GET_SEALS):
        return fcntl.fcntl(f.host_fd, c, s32(arg))
    return -errno.EINVAL


@_syscall
def sys_ioctl(k: Kernel, fd: int, request: int, arg: int) -> int:
    """ioctl(2): TCGETS, TIOCGWINSZ, TIOCGPGRP/TIOCSPGRP, FIONREAD, FIOCLEX/FIONCLEX; else
    ENOTTY."""
    guest_fd, req = s32(fd), request & 0xFFFFFFFF
    f = k.fds.get(guest_fd)
    if req in (FIOCLEX, FIONCLEX):
        k.fds.set_cloexec(guest_fd, req == FIOCLEX)
        return 0
    if req == FIONREAD:
        k.mem.write(arg, fcntl.ioctl(f.host_fd, FIONREAD, bytes(4)))
        return 0
    if req in (TIOCGPGRP, TIOCSPGRP):  # tcgetpgrp(3)/tcsetpgrp(3): the host terminal's
        if not os.isatty(f.host_fd):
            return -errno.ENOTTY
        if req == TIOCGPGRP:
            k.mem.write(arg, struct.pack("<i", os.tcgetpgrp(f.host_fd)))
        else:
            os.tcsetpgrp(f.host_fd, struct.unpack("<i", k.mem.read(arg, 4))[0])
        return 0
    if req in (TCGETS, TIOCGWINSZ):
        if not os.isatty(f.host_fd):
            return -errno.ENOTTY
        size = TERMIOS_SIZE if req == TCGETS else WINSIZE_SIZE
        k.mem.write(arg, fcntl.ioctl(f.host_fd, req, bytes(size)))
        return 0
    return -errno.ENOTTY


# -- metadata -------------------------------------------------------------------------------


def _stat_at(k: Kernel, dirfd: int, path_addr: int, flags: int) -> os.stat_result:
    fs = _fs(k)
    path = _path_or_empty(k, path_addr, flags)
    if not path:
        if not flags & AT_EMPTY_PATH:
            raise FsError(errno.ENOENT)
        target = _fd_target(k, dirfd)
        return fs.stat(".") if target is None else target.fstat()
    return fs.stat(path, _base(k, dirfd, path), follow=not flags & AT_SYMLINK_NOFOLLOW)


@_syscall
def sys_stat(k: Kernel, path: int, buf: int) -> int:
    """stat(2)."""
    k.mem.write(buf, pack_stat(_stat_at(k, AT_FDCWD, path, 0)))
    return 0


@_syscall
def sys_lstat(k: Kernel, path: int, buf: int) -> int:
    """lstat(2)."""
    k.mem.write(buf, pack_stat(_stat_at(k, AT_FDCWD, path, AT_SYMLINK_NOFOLLOW)))
    return 0


@_syscall
def sys_fstat(k: Kernel, fd: int, buf: int) -> int:
    """fstat(2)."""
    k.mem.write(buf, pack_stat(k.fds.get(s32(fd)).fstat()))
    return 0


@_syscall
def sys_newfstatat(k: Kernel, dirfd: int, path: int, buf: int, flags: int) -> int:
    """newfstatat(2) (fstatat with struct stat)."""
    fl = s32(flags)
    if fl & ~(AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT | AT_EMPTY_PATH):
        return -errno.EINVAL
    k.mem.write(buf, pack_stat(_stat_at(k, s32(dirfd), path, fl)))
    return 0


@_syscall
def sys_statx(k: Kernel, dirfd: int, path: int, flags: int, mask: int, buf: int) -> int:
    """statx(2): always reports STATX_BASIC_STATS."""
    fl = s32(flags)
    allowed = AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT | AT_EMPTY_PATH | AT_STATX_SYNC_TYPE
    if fl & ~allowed or fl & AT_STATX_SYNC_TYPE == AT_STATX_SYNC_TYPE:
        return -errno.EINVAL
    if mask & STATX__RESERVED:
        return -errno.EINVAL
    k.mem.write(buf, pack_statx(_stat_at(k, s32(dirfd), path, fl)))
    return 0


def _do_access(k: Kernel, dirfd: int, path_addr: int, mode: int, flags: int) -> int:
    m = s32(mode)
    if m & ~(os.R_OK | os.W_OK | os.X_OK):
        return -errno.EINVAL
    if flags & ~(AT_EACCESS | AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH):
        return -errno.EINVAL
    fs = _fs(k)
    path = _path_or_empty(k, path_addr, flags)
    if not path:
        if not flags & AT_EMPTY_PATH:
            return -errno.ENOENT
        target = _fd_target(k, dirfd)
        if target is None:
            path = "."
        elif target.path is None:
            return 0 if m == os.F_OK else -errno.EACCES
        else:
            fs.access_file(target.host_fd, m, writable=target.in_rw,
                           effective=bool(flags & AT_EACCESS))
            return 0
    fs.access(
        path,
        m,
        _base(k, dirfd, path),
        follow=not flags & AT_SYMLINK_NOFOLLOW,
        effective=bool(flags & AT_EACCESS),
    )
    return 0


@_syscall
def sys_access(k: Kernel, path: int, mode: int) -> int:
    """access(2)."""
    return _do_access(k, AT_FDCWD, path, mode, 0)


@_syscall
def sys_faccessat(k: Kernel, dirfd: int, path: int, mode: int) -> int:
    """faccessat(2) (the system call has no flags)."""
    return _do_access(k, s32(dirfd), path, mode, 0)


@_syscall
def sys_faccessat2(k: Kernel, dirfd: int, path: int, mode: int, flags: int) -> int:
    """faccessat2(2)."""
    return _do_access(k, s32(dirfd), path, mode, s32(flags))


def _do_readlink(k: Kernel, dirfd: int, path_addr: int, buf: int, bufsiz: int) -> int:
    size = s32(bufsiz)
    if size <= 0:
        return -errno.EINVAL
    path = _path(k, path_addr)
    data = os.fsencode(_fs(k).readlink(path, _base(k, dirfd, path)))[:size]
    k.mem.write(buf, data)
    return len(data)


@_syscall
def sys_readlink(k: Kernel, path: int, buf: int, bufsiz: int) -> int:
    """readlink(2) (no NUL terminator, truncated to bufsiz)."""
    return _do_readlink(k, AT_FDCWD, path, buf, bufsiz)


@_syscall
def sys_readlinkat(k: Kernel, dirfd: int, path: int, buf: int, bufsiz: int) -> int:
    """readlinkat(2)."""
    return _do_readlink(k, s32(dirfd), path, buf, bufsiz)


@_syscall
def sys_chmod(k: Kernel, path: int, mode: int) -> int:
    """chmod(2) (writable directories only)."""
    p = _path(k, path)
    _fs(k).chmod(p, mode & 0o7777)
    return 0


@_syscall
def sys_fchmodat(k: Kernel, dirfd: int, path: int, mode: int) -> int:
    """fchmodat(2) (the system call has no flags)."""
    p = _path(k, path)
    _fs(k).chmod(p, mode & 0o7777, _base(k, s32(dirfd), p))
    return 0


@_syscall
def sys_fchmod(k: Kernel, fd: int, mode: int) -> int:
    """fchmod(2) (only files opened inside writable directories)."""
    f = k.fds.get(s32(fd))
    if not f.in_rw:
        return -errno.EACCES
    os.fchmod(f.host_fd, mode & 0o7777)
    return 0


@_syscall
def sys_umask(k: Kernel, mask: int) -> int:
    """umask(2): set the guest's umask, return the previous one."""
    old = k.fs.umask
    k.fs.umask = mask & 0o777
    return old


# -- directories ----------------------------------------------------------------------------


@_syscall
def sys_getcwd(k: Kernel, buf: int, size: int) -> int:
    """getcwd(2): the length including the NUL, ERANGE if it does not fit."""
    data = os.fsencode(_fs(k).getcwd()) + b"\0"
    if len(data) > size:
        return -errno.ERANGE
    k.mem.write(buf, data)
    return len(data)


@_syscall
def sys_chdir(k: Kernel, path: int) -> int:
    """chdir(2)."""
    _fs(k).chdir(_path(k, path))
    return 0


@_syscall
def sys_fchdir(k: Kernel, fd: int) -> int:
    """fchdir(2) (to the directory the fd holds, wherever it is now)."""
    f = k.fds.get(s32(fd))
    if f.path is None or not f.is_dir:
        return -errno.ENOTDIR
    _fs(k).chdir(".", Anchor(f.path, f.host_fd))
    return 0


def _do_mkdir(k: Kernel, dirfd: int, path_addr: int, mode: int) -> int:
    path = _path(k, path_addr)
    _fs(k).mkdir(path, mode & 0o7777, _base(k, dirfd, path))
    return 0


@_syscall
def sys_mkdir(k: Kernel, path: int, mode: int) -> int:
    """mkdir(2)."""
    return _do_mkdir(k, AT_FDCWD, path, mode)


@_syscall
def sys_mkdirat(k: Kernel, dirfd: int, path: int, mode: int) -> int:
    """mkdirat(2)."""
    return _do_mkdir(k, s32(dirfd), path, mode)


@_syscall
def sys_rmdir(k: Kernel, path: int) -> int:
    """rmdir(2)."""
    _fs(k).rmdir(_path(k, path))
    return 0


@_syscall
def sys_unlink(k: Kernel, path: int) -> int:
    """unlink(2)."""
    _fs(k).unlink(_path(k, path))
    return 0


@_syscall
def sys_unlinkat(k: Kernel, dirfd: int, path: int, flags: int) -> int:
    """unlinkat(2) (AT_REMOVEDIR: rmdir)."""
    fl = s32(flags)
    if fl & ~AT_REMOVEDIR:
        return -errno.EINVAL
    p = _path(k, path)
    base = _base(k, s32(dirfd), p)
    if fl & AT_REMOVEDIR:
        _fs(k).rmdir(p, base)
    else:
        _fs(k).unlink(p, base)
    return 0


def _do_rename(k: Kernel, olddirfd: int, old: int, newdirfd: int, new: int, flags: int) -> int:
    if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT):
        return -errno.EINVAL
    if flags & RENAME_NOREPLACE and flags & (RENAME_EXCHANGE | RENAME_WHITEOUT):
        return -errno.EINVAL
    if flags & RENAME_EXCHANGE and flags & RENAME_WHITEOUT:
        return -errno.EINVAL
    op, np = _path(k, old), _path(k, new)
    fs = _fs(k)
    fs.rename(op, np, _base(k, olddirfd, op), _base(k, newdirfd, np), flags)
    return 0


@_syscall
def sys_rename(k: Kernel, old: int, new: int) -> int:
    """rename(2)."""
    return _do_rename(k, AT_FDCWD, old, AT_FDCWD, new, 0)


@_syscall
def sys_renameat(k: Kernel, olddirfd: int, old: int, newdirfd: int, new: int) -> int:
    """renameat(2)."""
    return _do_rename(k, s32(olddirfd), old, s32(newdirfd), new, 0)


@_syscall
def sys_renameat2(k: Kernel, olddirfd: int, old: int, newdirfd: int, new: int, flags: int) -> int:
    """renameat2(2) (RENAME_NOREPLACE, RENAME_EXCHANGE; RENAME_WHITEOUT is refused)."""
    return _do_rename(k, s32(olddirfd), old, s32(newdirfd), new, flags & 0xFFFFFFFF)


def _do_symlink(k: Kernel, target: int, dirfd: int, linkpath: int) -> int:
    t = _path(k, target)
    p = _path(k, linkpath)
    _fs(k).symlink(t, p, _base(k, dirfd, p))
    return 0


@_syscall
def sys_symlink(k: Kernel, target: int, linkpath: int) -> int:
    """symlink(2) (writable directories only)."""
    return _do_symlink(k, target, AT_FDCWD, linkpath)


@_syscall
def sys_symlinkat(k: Kernel, target: int, newdirfd: int, linkpath: int) -> int:
    """symlinkat(2)."""
    return _do_symlink(k, target, s32(newdirfd), linkpath)


# -- table ----------------------------------------------------------------------------------

HANDLERS: dict[int, tuple[str, Callable[..., int]]] = {
    0: ("read", sys_read),
    1: ("write", sys_write),
    2: ("open", sys_open),
    3: ("close", sys_close),
    4: ("stat", sys_stat),
    5: ("fstat", sys_fstat),
    6: ("lstat", sys_lstat),
    8: ("lseek", sys_lseek),
    16: ("ioctl", sys_ioctl),
    17: ("pread64", sys_pread64),
    18: ("pwrite64", sys_pwrite64),
    19: ("readv", sys_readv),
    20: ("writev", sys_writev),
    21: ("access", sys_access),
    32: ("dup", sys_dup),
    33: ("dup2", sys_dup2),
    40: ("sendfile", sys_sendfile),
    72: ("fcntl", sys_fcntl),
    74: ("fsync", sys_fsync),
    75: ("fdatasync", sys_fdatasync),
    76: ("truncate", sys_truncate),
    77: ("ftruncate", sys_ftruncate),
    79: ("getcwd", sys_getcwd),
    80: ("chdir", sys_chdir),
    81: ("fchdir", sys_fchdir),
    82: ("rename", sys_rename),
    83: ("mkdir", sys_mkdir),
    84: ("rmdir", sys_rmdir),
    85: ("creat", sys_creat),
    87: ("unlink", sys_unlink),
    88: ("symlink", sys_symlink),
    89: ("readlink", sys_readlink),
    90: ("chmod", sys_chmod),
    91: ("fchmod", sys_fchmod),
    95: ("umask", sys_umask),
    217: ("getdents64", sys_getdents64),
    257: ("openat", sys_openat),
    258: ("mkdirat", sys_mkdirat),
    262: ("newfstatat", sys_newfstatat),
    263: ("unlinkat", sys_unlinkat),
    264: ("renameat", sys_renameat),
    266: ("symlinkat", sys_symlinkat),
    267: ("readlinkat", sys_readlinkat),
    268: ("fchmodat", sys_fchmodat),
    269: ("faccessat", sys_faccessat),
    292: ("dup3", sys_dup3),
    295: ("preadv", sys_preadv),
    296: ("pwritev", sys_pwritev),
    316: ("renameat2", sys_renameat2),
    332: ("statx", sys_statx),
    436: ("close_range", sys_close_range),
    439: ("faccessat2", sys_faccessat2),
}
