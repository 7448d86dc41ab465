"""Guest file descriptors: the fd table and the open file descriptions it points to.

Follows open(2), close(2), dup(2), fcntl(2) (F_DUPFD, F_DUPFD_CLOEXEC, FD_CLOEXEC), lseek(2),
read(2), write(2), pread(2) and getdents64(2) (struct linux_dirent64).  Guest fd numbers are
independent of the host's: every guest fd names an :class:`OpenFile` that holds a real host fd.
Guest fds 0, 1 and 2 pass through to the host's stdin, stdout and stderr, which the guest can
dup and close without ever closing the host's own.  Nothing here resolves paths: that is
:mod:`leakdbt.linux.fs`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

CHUNK = 1 << 20  # host I/O is done in pieces of at most this many bytes
MAX_RW_COUNT = 0x7FFFF000  # Linux caps one read/write at this many bytes

DT_UNKNOWN = 0
DT_FIFO = 1
DT_CHR = 2
DT_DIR = 4
DT_BLK = 6
DT_REG = 8
DT_LNK = 10
DT_SOCK = 12

_DIRENT_HEAD = struct.Struct("<QqHB")  # d_ino, d_off, d_reclen, d_type (19 bytes)


class FsError(OSError):
    """A file-system error carrying the errno the guest must see."""

    def __init__(self, code: int, path: str | None = None) -> None:
        if path is None:
            super().__init__(code, os.strerror(code))
        else:
            super().__init__(code, os.strerror(code), path)


def _dtype(mode: int) -> int:
    """The d_type of a file of the given st_mode."""
    for test, dtype in (
        (stat.S_ISREG, DT_REG),
        (stat.S_ISDIR, DT_DIR),
        (stat.S_ISLNK, DT_LNK),
        (stat.S_ISCHR, DT_CHR),
        (stat.S_ISBLK, DT_BLK),
        (stat.S_ISFIFO, DT_FIFO),
        (stat.S_ISSOCK, DT_SOCK),
    ):
        if test(mode):
            return dtype
    return DT_UNKNOWN


def _read_full(read: Callable[[int, int], bytes], size: int, *, whole: bool) -> bytes:
    """Read ``size`` bytes in CHUNK pieces with ``read(n, done)`` until EOF (one piece unless
    ``whole``); an error after some data ends the read short, as the kernel would."""
    parts: list[bytes] = []
    done = 0
    while done < size:
        try:
            piece = read(min(size - done, CHUNK), done)
        except OSError:
            if parts:
                break
            raise
        if not piece:
            break
        parts.append(piece)
        done += len(piece)
        if not whole:
            break
    return b"".join(parts)


@dataclass(eq=False)
class OpenFile:
    """One open file description: a host fd plus what the guest knows about it.

    ``path`` is the guest path it was opened by (None for stdio, pipes...), ``flags`` the guest
    open flags, ``in_rw`` whether its metadata may be changed (fchmod), ``owned`` whether the
    host fd is closed when the last guest fd referring to it is closed.
    """

    host_fd: int
    path: str | None = None
    flags: int = 0
    in_rw: bool = False
    owned: bool = True
    refs: int = 0
    _regular: bool | None = field(default=None, repr=False)
    _is_dir: bool | None = field(default=None, repr=False)
    _dir_entries: list[tuple[int, int, bytes]] | None = field(default=None, repr=False)
    _dir_pos: int = field(default=0, repr=False)

    # -- file type -----------------------------------------------------------------------

    def _probe(self) -> None:
        mode = os.fstat(self.host_fd).st_mode
        self._regular = stat.S_ISREG(mode)
        self._is_dir = stat.S_ISDIR(mode)

    @property
    def is_regular(self) -> bool:
        """Whether the host fd is a regular file (short reads only at end of file)."""
        if self._regular is None:
            self._probe()
        return bool(self._regular)

    @property
    def is_dir(self) -> bool:
        """Whether the host fd is a directory."""
        if self._is_dir is None:
            self._probe()
        return bool(self._is_dir)

    # -- data ----------------------------------------------------------------------------

    def read(self, size: int) -> bytes:
        """read(2) at the current offset; regular files are read in full up to ``size``."""
        size = min(size, MAX_RW_COUNT)
        if size <= 0 or not self.is_regular:
            return os.read(self.host_fd, min(size, CHUNK))
        return _read_full(lambda n, done: os.read(self.host_fd, n), size, whole=True)

    def write(self, data: bytes) -> int:
        """write(2) at the current offset (or the end with O_APPEND); returns bytes written."""
        data = data[:MAX_RW_COUNT]
        if not data or not self.is_regular:
            return os.write(self.host_fd, data)  # pipes and ttys: one write, as the guest asked
        done = 0
        view = memoryview(data)
        while done < len(data):
            piece = view[done : done + CHUNK]
            try:
                n = os.write(self.host_fd, piece)
            except OSError:
                if done:
                    break
                raise
            done += n
            if n < len(piece):
                break  # short write (disk full, file size limit): report what was written
        return done

    def pread(self, size: int, offset: int) -> bytes:
        """Read up to ``size`` bytes at ``offset`` without moving the offset (full unless EOF).

        Also what file-backed mmap uses to fill a mapping.
        """
        size = min(size, MAX_RW_COUNT)
        if size <= 0:
            return os.pread(self.host_fd, 0, offset)
        return _read_full(lambda n, done: os.pread(self.host_fd, n, offset + done), size,
                          whole=self.is_regular)

    def pwrite(self, data: bytes, offset: int) -> int:
        """pwrite(2): write ``data`` at ``offset`` without moving the offset."""
        done = 0
        view = memoryview(data)
        while True:
            try:
                n = os.pwrite(self.host_fd, view[done : done + CHUNK], offset + done)
            except OSError:
                if done:
                    break
                raise
            done += n
            if done >= len(data) or n == 0:
                break
        return done

    def lseek(self, offset: int, whence: int) -> int:
        """lseek(2); on a directory the offset is the getdents64 position (d_off values)."""
        if not self.is_dir:
            return os.lseek(self.host_fd, offset, whence)
        if whence == os.SEEK_SET:
            new = offset
        elif whence == os.SEEK_CUR:
            new = self._dir_pos + offset
        else:
            raise FsError(errno.EINVAL)
        if new < 0:
            raise FsError(errno.EINVAL)
        if new == 0:
            self._dir_entries = None  # rewinddir(3) sees new entries
        self._dir_pos = new
        return new

    def fstat(self) -> os.stat_result:
        """fstat(2) of the host fd."""
        return os.fstat(self.host_fd)

    def ftruncate(self, length: int) -> None:
        """ftruncate(2) (the host refuses fds not open for writing)."""
        if length < 0:
            raise FsError(errno.EINVAL)
        os.ftruncate(self.host_fd, length)

    # -- directories ---------------------------------------------------------------------

    def _snapshot(self) -> list[tuple[int, int, bytes]]:
        st = os.fstat(self.host_fd)
        if not stat.S_ISDIR(st.st_mode):
            raise FsError(errno.ENOTDIR)
        if self.path == "/":
            parent_ino = st.st_ino  # ".." of the guest root is the root itself
        else:
            parent_ino = os.stat("..", dir_fd=self.host_fd, follow_symlinks=False).st_ino
        entries = [(st.st_ino, DT_DIR, b"."), (parent_ino, DT_DIR, b"..")]
        with os.scandir(self.host_fd) as it:
            for entry in it:
                if entry.is_symlink():
                    dtype = DT_LNK
                elif entry.is_dir(follow_symlinks=False):
                    dtype = DT_DIR
                elif entry.is_file(follow_symlinks=False):
                    dtype = DT_REG
                else:
                    try:
                        dtype = _dtype(entry.stat(follow_symlinks=False).st_mode)
                    except OSError:
                        dtype = DT_UNKNOWN
                entries.append((entry.inode(), dtype, os.fsencode(entry.name)))
        return entries

    def getdents64(self, size: int) -> bytes:
        """Next linux_dirent64 records fitting in ``size`` bytes; b"" at the end of the directory.

        Records are 8-byte aligned; d_off is the position of the following record.
        """
        if self._dir_entries is None:
            self._dir_entries = self._snapshot()
        out = bytearray()
        entries = self._dir_entries
        pos = self._dir_pos
        while pos < len(entries):
            ino, dtype, name = entries[pos]
            reclen = (_DIRENT_HEAD.size + len(name) + 1 + 7) & ~7
            if len(out) + reclen > size:
                if not out:
                    raise FsError(errno.EINVAL)  # buffer too small for one record
                break
            record = _DIRENT_HEAD.pack(ino, pos + 1, reclen, dtype) + name
            out += record + bytes(reclen - len(record))
            pos += 1
        self._dir_pos = pos
        return bytes(out)

    def close_host(self) -> None:
        """Close the host fd if this description owns it (errors are ignored, like close(2))."""
        if self.owned:
            with contextlib.suppress(OSError):
                os.close(self.host_fd)


@dataclass
class _Slot:
    file: OpenFile
    cloexec: bool


class FdTable:
    """The guest's file-descriptor table (lowest free fd first, like the kernel)."""

    def __init__(self, *, stdio: bool = True, max_fds: int = 1024) -> None:
        """Start with host stdin/stdout/stderr as guest fds 0-2 (when open on the host)."""
        self.max_fds = max_fds
        self._slots: dict[int, _Slot] = {}
        if stdio:
            for fd in (0, 1, 2):
                try:
                    flags = _host_flags(fd)
                except OSError:
                    continue  # closed on the host: closed for the guest too
                self.install_at(fd, OpenFile(host_fd=fd, flags=flags, owned=False))

    # -- lookup --------------------------------------------------------------------------

    def get(self, fd: int) -> OpenFile:
        """The open file of guest fd ``fd`` (EBADF if it is not open)."""
        slot = self._slots.get(fd)
        if slot is None:
            raise FsError(errno.EBADF)
        return slot.file

    def __contains__(self, fd: object) -> bool:
        return fd in self._slots

    def __len__(self) -> int:
        return len(self._slots)

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._slots))

    def guest_path(self, fd: int) -> str | None:
        """The guest path fd ``fd`` was opened by, or None (not open, or no path)."""
        slot = self._slots.get(fd)
        return slot.file.path if slot is not None else None

    def get_cloexec(self, fd: int) -> bool:
        """Whether FD_CLOEXEC is set on ``fd``."""
        self.get(fd)
        return self._slots[fd].cloexec

    def set_cloexec(self, fd: int, on: bool) -> None:
        """Set or clear FD_CLOEXEC on ``fd``."""
        self.get(fd)
        self._slots[fd].cloexec = on

    # -- allocation ----------------------------------------------------------------------

    def _lowest_free(self, lowest: int) -> int:
        if lowest < 0 or lowest >= self.max_fds:
            raise FsError(errno.EINVAL)
        fd = lowest
        while fd in self._slots:
            fd += 1
        if fd >= self.max_fds:
            raise FsError(errno.EMFILE)
        return fd

    def install(self, file: OpenFile, *, cloexec: bool = False, lowest: int = 0) -> int:
        """Give ``file`` the lowest free guest fd >= ``lowest`` and return it.

        On EMFILE the caller still owns ``file`` (close it with ``file.close_host()``).
        """
        fd = self._lowest_free(lowest)
        self.install_at(fd, file, cloexec=cloexec)
        return fd

    def install_at(self, fd: int, file: OpenFile, *, cloexec: bool = False) -> None:
        """Make guest fd ``fd`` refer to ``file``, closing what ``fd`` referred to before."""
        if fd < 0 or fd >= self.max_fds:
            raise FsError(errno.EBADF)
        file.refs += 1
        old = self._slots.get(fd)
        self._slots[fd] = _Slot(file, cloexec)
        if old is not None:
            self._release(old.file)

    def _release(self, file: OpenFile) -> None:
        file.refs -= 1
        if file.refs <= 0:
            file.close_host()

    def close(self, fd: int) -> None:
        """close(2) of guest fd ``fd`` (the host fd goes when its last guest fd does)."""
        slot = self._slots.pop(fd, None)
        if slot is None:
            raise FsError(errno.EBADF)
        self._release(slot.file)

    def dup(self, fd: int, *, lowest: int = 0, cloexec: bool = False) -> int:
        """dup(2) / F_DUPFD / F_DUPFD_CLOEXEC: a new fd >= ``lowest`` sharing the description."""
        file = self.get(fd)
        return self.install(file, cloexec=cloexec, lowest=lowest)

    def dup2(self, old: int, new: int, *, cloexec: bool = False) -> int:
        """dup2(2)/dup3(2): make ``new`` refer to ``old``'s description (same fd: no-op)."""
        file = self.get(old)
        if new < 0 or new >= self.max_fds:
            raise FsError(errno.EBADF)
        if old == new:
            return new
        self.install_at(new, file, cloexec=cloexec)
        return new

    def close_on_exec(self) -> None:
        """Close every fd marked FD_CLOEXEC (what execve(2) does)."""
        for fd in [fd for fd, slot in self._slots.items() if slot.cloexec]:
            self.close(fd)

    def close_all(self) -> None:
        """Close every guest fd (at guest exit); the host's stdio stays open."""
        for fd in list(self._slots):
            self.close(fd)


def _host_flags(fd: int) -> int:
    """The host's file status flags of ``fd`` (F_GETFL)."""
    return fcntl.fcntl(fd, fcntl.F_GETFL)
