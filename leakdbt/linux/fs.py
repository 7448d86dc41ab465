"""The guest's file-system namespace: the only code in leakdbt that touches host paths.

Follows path_resolution(7), symlink(7), openat(2), stat(2), access(2), readlink(2), mkdir(2),
rmdir(2), unlink(2), rename(2), symlink(2), chmod(2), truncate(2), chdir(2), umask(2) and
proc(5) for the two /proc entries it emulates.

The guest sees the host directory ``root`` as "/".  Guest paths are resolved here, component
by component, on host directory fds: each step is an ``fstatat``/``readlinkat``/``openat``
(``O_PATH | O_NOFOLLOW``) relative to the fd of the directory reached so far, never a host path
string; every symlink is read and interpreted in the *guest* namespace (absolute targets
restart at the guest root, ``..`` stops at the guest root, at most 40 links per lookup, then
ELOOP), so neither ``..``, absolute paths nor symlinks can reach the host outside ``root``.
A relative lookup starts from a directory the guest holds (its working directory, a directory
fd: an :class:`Anchor`), identified by its host fd: its recorded path is trusted only if it
still leads to that same directory (device and inode); otherwise the directory's current path
is found by climbing its ".." chain to the root, or the lookup fails with ENOENT.  The final
operation re-walks the result the same way and is an ``*at()`` call with ``O_NOFOLLOW``: a
component swapped for a symlink between resolution and use makes the call fail instead of
escaping.  Metadata calls (stat, access, readlink, statfs, extended attributes, chmod) take
the same path as open(2).

Writes (create, write, truncate, unlink, rename, mkdir, symlink, chmod) are allowed only inside
the host directories ``rw``; anything else the guest may read but never modify (EACCES).

Three guest directories are virtual, whatever the host has there:

* ``/proc``: only ``/proc/self/exe`` (a symlink to the guest's program) and
  ``/proc/self/fd/N`` (a symlink to the guest path fd N was opened by) exist, also reachable
  as ``/proc/thread-self/...`` and ``/proc/<pid>/...`` (the guest's pid is the host's);
  everything else is EACCES.  The host's /proc describes leakdbt itself, not the guest, and
  is not exposed.
* ``/sys``: EACCES.
* ``/dev``: only null, zero, random, urandom and tty (the host's devices; read-only except
  /dev/null) and the stdin/stdout/stderr/fd symlinks into /proc/self/fd; everything else is
  EACCES.

Errors are raised as :class:`~leakdbt.linux.files.FsError` (an OSError whose errno is what the
guest sees); host OSErrors propagate unchanged.  System-call handlers turn both into -errno.
"""

from __future__ import annotations

import errno
import os
import stat
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from leakdbt.errors import NotExecutable, UsageError
from leakdbt.linux.files import FsError, OpenFile

__all__ = ["Anchor", "FileSystem", "FsError", "Node", "require_executable"]

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4

MAXSYMLINKS = 40
PATH_MAX = 4096
NAME_MAX = 255

# Kinds of resolved nodes.
HOST = "host"  # an existing host file (st is its lstat)
MISSING = "missing"  # the last component does not exist (its parent does)
DEVICE = "device"  # one of the allowed /dev devices (host is the host device path)
VDIR = "vdir"  # a virtual directory (/proc, /proc/self, /dev...): traversable only
VLINK = "vlink"  # a virtual symlink (/proc/self/exe...): target is its contents

DEVICES = {
    "null": "/dev/null",
    "zero": "/dev/zero",
    "random": "/dev/random",
    "urandom": "/dev/urandom",
    "tty": "/dev/tty",
}
WRITABLE_DEVICES = frozenset({"null"})

_DIR_WALK = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ROOT_OPEN = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
# Status flags passed to the host when opening a device.
_DEVICE_FLAGS = os.O_ACCMODE | os.O_NONBLOCK | os.O_APPEND | os.O_SYNC | os.O_DSYNC


def _err(code: int) -> FsError:
    return FsError(code)


@dataclass(frozen=True)
class Node:
    """A resolved guest path.

    ``parts`` are the canonical guest components (symlinks resolved, except a final one when not
    following), ``host`` the host path they map to, ``st`` the host lstat result for ``HOST``
    nodes, ``target`` the contents of a virtual symlink, ``trailing`` whether the path ended in
    "/" or "/.".
    """

    parts: tuple[str, ...]
    kind: str
    host: str = ""
    st: os.stat_result | None = None
    target: str = ""
    trailing: bool = False

    @property
    def guest(self) -> str:
        """The canonical guest path."""
        return "/" + "/".join(self.parts)

    @property
    def is_dir(self) -> bool:
        """Whether this is an existing host directory."""
        return self.st is not None and stat.S_ISDIR(self.st.st_mode)


@dataclass(frozen=True)
class Anchor:
    """A directory the guest holds (its working directory or a directory fd): the guest path
    it was reached by and a host fd on the directory itself, which is what counts."""

    path: str
    host_fd: int


class _Walk:
    """A lookup in progress: the canonical guest components walked so far and, one per
    directory from the root down, an ``O_PATH`` host fd on it (-1 inside a virtual one)."""

    def __init__(self, root_fd: int) -> None:
        self.parts: list[str] = []
        self._fds = [root_fd]

    @property
    def fd(self) -> int:
        """The host fd of the directory the walk stands in."""
        return self._fds[-1]

    def down(self, name: str, fd: int) -> None:
        """Step into child ``name``, whose host directory fd is ``fd`` (owned from now on)."""
        self.parts.append(name)
        self._fds.append(fd)

    def up(self) -> None:
        """".." : back to the parent directory; the root is its own parent."""
        if self.parts:
            self.parts.pop()
            fd = self._fds.pop()
            if fd >= 0:
                os.close(fd)

    def to_root(self) -> None:
        while self.parts:
            self.up()

    def close(self) -> None:
        self.to_root()
        os.close(self._fds[0])


def _push_link(target: str, hops: int, stack: list[str], walk: _Walk) -> int:
    """Splice a symlink's target into the lookup (read in the guest's namespace: an absolute
    target restarts at the guest root); returns the new hop count."""
    hops += 1
    if hops > MAXSYMLINKS:
        raise _err(errno.ELOOP)
    if not target:
        raise _err(errno.ENOENT)
    if target.startswith("/"):
        walk.to_root()
    stack.extend(reversed(target.split("/")))
    return hops


def _identity(st: os.stat_result) -> tuple[int, int]:
    """What makes a host file itself, whatever its name: (device, inode)."""
    return st.st_dev, st.st_ino


def _entry_named_by(dir_fd: int, child: tuple[int, int]) -> str | None:
    """The name under which directory ``dir_fd`` holds the directory ``child`` (an identity),
    or None.  Entries are lstat'ed, so a mount point is matched by what is mounted on it."""
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                continue
            try:
                st = os.stat(entry.name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                continue
            if _identity(st) == child:
                return entry.name
    return None


def _close_held(held: dict[str, int]) -> None:
    for fd in held.values():
        with suppress(OSError):
            os.close(fd)


def _host_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _no_fd_paths(fd: int) -> str | None:
    return None


class FileSystem:
    """The guest's view of the host file system (root, writable directories, cwd, umask)."""

    def __init__(self, root: str = "/", rw: Sequence[str] = (), cwd: str = "/") -> None:
        """``root`` is the host directory seen as "/", ``rw`` the host directories writable by
        the guest, ``cwd`` the guest's initial working directory (a guest path)."""
        real_root = os.path.realpath(root)
        if not os.path.isdir(real_root):
            raise UsageError(f"guest root {root!r} is not a directory")
        self.root = real_root
        rw_dirs = []
        for d in rw:
            real = os.path.realpath(d)
            if not os.path.isdir(real):
                raise UsageError(f"writable directory {d!r} is not a directory")
            rw_dirs.append(real)
        self.rw: tuple[str, ...] = tuple(rw_dirs)
        self.exe_path = ""  # guest path of the program: the target of /proc/self/exe
        # Guest path of an open guest fd (for /proc/self/fd/N); set by whoever owns the FdTable.
        self.fd_paths: Callable[[int], str | None] = _no_fd_paths
        self._host_mask = _host_umask()
        self.umask = self._host_mask
        # The working directory is held as a host directory fd (closed with this object);
        # its guest path is re-checked against that fd on every use.
        self._held = {"cwd": os.open(self.root, _ROOT_OPEN)}
        weakref.finalize(self, _close_held, self._held)
        self._cwd_path = "/"
        try:
            node = self.resolve(cwd)
        except OSError as e:
            raise UsageError(f"working directory {cwd!r}: {e.strerror}") from None
        if node.kind != HOST or not node.is_dir:
            raise UsageError(f"working directory {cwd!r} is not a directory in the guest root")
        self._set_cwd(node)

    @property
    def cwd(self) -> str:
        """The guest path of the working directory as last verified (see :meth:`getcwd`)."""
        return self._cwd_path

    @property
    def _cwd(self) -> Anchor:
        return Anchor(self._cwd_path, self._held["cwd"])

    def _set_cwd(self, node: Node) -> None:
        """Make the host directory of ``node`` the working directory (held by fd)."""
        with self._dir_fd(node.parts) as d:
            if _identity(os.fstat(d)) != _identity(self.stat_node(node)):
                raise _err(errno.ENOENT)  # replaced since resolution
            fd = os.open(".", _ROOT_OPEN, dir_fd=d)
        os.close(self._held["cwd"])
        self._held["cwd"] = fd
        self._cwd_path = node.guest

    # -- policy --------------------------------------------------------------------------

    def writable(self, host_path: str) -> bool:
        """Whether the guest may modify ``host_path`` (a canonical host path)."""
        return any(host_path == d or host_path.startswith(d.rstrip("/") + "/") for d in self.rw)

    def _host(self, parts: Sequence[str]) -> str:
        return os.path.join(self.root, *parts) if parts else self.root

    # -- resolution ----------------------------------------------------------------------

    def _virtual(self, parts: Sequence[str]) -> tuple[str, str] | None:
        """(kind, target or device path) of a virtual guest path, None for a host one."""
        top = parts[0]
        if top not in ("proc", "sys", "dev"):
            return None
        n = len(parts)
        if top == "sys":
            raise _err(errno.EACCES)
        if top == "proc":
            if n == 1:
                return VDIR, ""
            if parts[1] not in ("self", "thread-self", str(os.getpid())):
                raise _err(errno.EACCES)
            if n == 2:
                return VDIR, ""
            if n == 3 and parts[2] == "exe":
                if not self.exe_path:
                    raise _err(errno.ENOENT)
                return VLINK, self.exe_path
            if parts[2] == "fd":
                if n == 3:
                    return VDIR, ""
                if n == 4 and parts[3].isascii() and parts[3].isdigit():
                    target = self.fd_paths(int(parts[3]))
                    if target is None:
                        raise _err(errno.ENOENT)
                    return VLINK, target
            raise _err(errno.EACCES)
        # /dev
        if n == 1:
            return VDIR, ""
        if n == 2:
            name = parts[1]
            if name in DEVICES:
                return DEVICE, DEVICES[name]
            if name in ("stdin", "stdout", "stderr"):
                return VLINK, "/proc/self/fd/" + str(("stdin", "stdout", "stderr").index(name))
            if name == "fd":
                return VLINK, "/proc/self/fd"
        raise _err(errno.EACCES)

    def resolve(self, path: str, base: str | Anchor | None = None, *,
                follow: bool = True) -> Node:
        """Resolve guest ``path``; relative ones start at ``base`` (a guest directory path, or an
        :class:`Anchor` the guest holds), by default the working directory.

        The lookup walks host directory fds (``O_PATH | O_NOFOLLOW``), never host path strings.
        A missing last component gives a ``MISSING`` node; ``follow=False`` leaves a final
        symlink unresolved (a trailing slash still follows it).
        """
        if not path:
            raise _err(errno.ENOENT)
        if len(os.fsencode(path)) >= PATH_MAX:
            raise _err(errno.ENAMETOOLONG)
        walk = _Walk(os.open(self.root, _ROOT_OPEN))
        try:
            if not path.startswith("/"):
                self._start(walk, self._cwd if base is None else base)
            return self._lookup(walk, path, follow)
        finally:
            walk.close()

    def _lookup(self, walk: _Walk, path: str, follow: bool) -> Node:
        """Resolve ``path`` from where ``walk`` stands (see :meth:`resolve`)."""
        stack = path.split("/")
        stack.reverse()
        hops = 0
        while stack:
            name = stack.pop()
            if name in ("", "."):
                continue
            if name == "..":
                walk.up()
                continue
            if len(os.fsencode(name)) > NAME_MAX:
                raise _err(errno.ENAMETOOLONG)
            last = all(c in ("", ".") for c in stack)
            trailing = last and bool(stack)
            follow_this = follow or not last or trailing
            child = (*walk.parts, name)
            virtual = self._virtual(child)
            if virtual is not None:
                kind, target = virtual
                if kind == VLINK and follow_this:
                    hops = _push_link(target, hops, stack, walk)
                    continue
                if kind == DEVICE and (not last or trailing):
                    raise _err(errno.ENOTDIR)
                if kind == VDIR and not last:
                    walk.down(name, -1)
                    continue
                host = target if kind == DEVICE else ""
                return Node(
                    child,
                    kind,
                    host=host,
                    target=target if kind == VLINK else "",
                    trailing=trailing,
                )
            try:
                st = os.stat(name, dir_fd=walk.fd, follow_symlinks=False)
            except FileNotFoundError:
                if last:
                    return Node(child, MISSING, host=self._host(child), trailing=trailing)
                raise _err(errno.ENOENT) from None
            if stat.S_ISLNK(st.st_mode) and follow_this:
                hops = _push_link(os.readlink(name, dir_fd=walk.fd), hops, stack, walk)
                continue
            if (not last or trailing) and not stat.S_ISDIR(st.st_mode):
                raise _err(errno.ENOTDIR)
            if last:
                return Node(child, HOST, host=self._host(child), st=st, trailing=trailing)
            walk.down(name, os.open(name, _DIR_WALK, dir_fd=walk.fd))
        parts = tuple(walk.parts)
        if parts:
            virtual = self._virtual(parts)
            if virtual is not None:
                return Node(parts, virtual[0])
        return Node(parts, HOST, host=self._host(parts), st=os.fstat(walk.fd))

    def _start(self, walk: _Walk, base: str | Anchor) -> None:
        """Stand ``walk`` in the start directory of a relative lookup.

        A plain guest path is walked as given.  An :class:`Anchor`'s path is walked and must
        lead to the very directory the anchor holds; if the directory was moved (or its path
        now names something else, e.g. a symlink out of the root), its current guest path is
        found from the directory itself, or the lookup fails with ENOENT when it is no longer
        under the root: a stale path string is never trusted.
        """
        if isinstance(base, str):
            self._lookup_dir(walk, base)
            return
        want = _identity(os.fstat(base.host_fd))
        try:
            self._lookup_dir(walk, base.path)
            if _identity(os.fstat(walk.fd)) == want:
                return
        except OSError:
            pass
        walk.to_root()
        self._lookup_dir(walk, "/" + "/".join(self._locate(base.host_fd)))
        if _identity(os.fstat(walk.fd)) != want:
            raise _err(errno.ENOENT)

    def _lookup_dir(self, walk: _Walk, guest_dir: str) -> None:
        """Walk into the guest directory ``guest_dir`` (ENOTDIR if it is not one)."""
        node = self._lookup(walk, guest_dir.rstrip("/") + "/.", True)
        if node.kind == MISSING:
            raise _err(errno.ENOENT)
        if node.kind == VDIR:
            for name in node.parts[len(walk.parts):]:
                walk.down(name, -1)
            return
        if node.kind != HOST or not node.is_dir:
            raise _err(errno.ENOTDIR)
        for name in node.parts[len(walk.parts):]:
            walk.down(name, os.open(name, _DIR_WALK, dir_fd=walk.fd))

    def _locate(self, dir_fd: int) -> tuple[str, ...]:
        """The guest components of the host directory ``dir_fd`` right now, found by climbing
        its ".." chain to the root (ENOENT if it was removed or lies outside the root)."""
        root_id = _identity(os.stat(self.root))
        names: list[str] = []
        cur = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            for _ in range(PATH_MAX // 2):
                here = _identity(os.fstat(cur))
                if here == root_id:
                    names.reverse()
                    return tuple(names)
                parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=cur)
                os.close(cur)
                cur = parent
                if _identity(os.fstat(cur)) == here:
                    break  # the host's "/": the directory is not under the guest root
                name = _entry_named_by(cur, here)
                if name is None:
                    break  # removed
                names.append(name)
        except OSError:
            pass
        finally:
            os.close(cur)
        raise _err(errno.ENOENT)

    # -- physical walk -------------------------------------------------------------------

    @contextmanager
    def _dir_fd(self, parts: Sequence[str]) -> Iterator[int]:
        """An O_PATH fd of the host directory of ``parts``, opened without following links."""
        fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for comp in parts:
                nfd = os.open(comp, _DIR_WALK, dir_fd=fd)
                os.close(fd)
                fd = nfd
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def _at(self, parts: Sequence[str]) -> Iterator[tuple[int, str]]:
        """(directory fd, name) for an ``*at()`` call on ``parts`` (the root is ``(root, ".")``)."""
        if not parts:
            with self._dir_fd(()) as d:
                yield d, "."
        else:
            with self._dir_fd(parts[:-1]) as d:
                yield d, parts[-1]

    def _fix_mode(self, fd: int, mode: int) -> None:
        """Give a file just created the mode the guest's umask (not the host's) implies."""
        if mode & self._host_mask:
            st = os.fstat(fd)
            os.fchmod(fd, (st.st_mode & 0o7000) | (mode & 0o777))

    # -- queries -------------------------------------------------------------------------

    def stat(self, path: str, base: str | Anchor | None = None, *,
             follow: bool = True) -> os.stat_result:
        """stat(2)/lstat(2) of a guest path."""
        return self.stat_node(self.resolve(path, base, follow=follow))

    def stat_node(self, node: Node) -> os.stat_result:
        """stat(2) of a resolved node."""
        if node.kind == HOST:
            with self._at(node.parts) as (d, name):
                return os.stat(name, dir_fd=d, follow_symlinks=False)
        if node.kind == DEVICE:
            return os.stat(node.host)
        if node.kind == VLINK:
            now = time.time_ns()
            ids = (0, 0, 1, os.getuid(), os.getgid(), len(os.fsencode(node.target)))
            seconds = now // 10**9
            return os.stat_result(
                (
                    stat.S_IFLNK | 0o777,
                    *ids,
                    seconds,
                    seconds,
                    seconds,
                    *(seconds,) * 3,
                    now,
                    now,
                    now,
                )
            )
        if node.kind == MISSING:
            raise _err(errno.ENOENT)
        raise _err(errno.EACCES)

    def access(
        self,
        path: str,
        mode: int,
        base: str | Anchor | None = None,
        *,
        follow: bool = True,
        effective: bool = False,
    ) -> None:
        """access(2)/faccessat(2): raises unless the guest may access ``path`` with ``mode``."""
        node = self.resolve(path, base, follow=follow)
        if node.kind == MISSING:
            raise _err(errno.ENOENT)
        if node.kind == DEVICE:
            if mode & os.W_OK and node.parts[-1] not in WRITABLE_DEVICES:
                raise _err(errno.EACCES)
            if not os.access(node.host, mode):
                raise _err(errno.EACCES)
            return
        if node.kind != HOST:
            raise _err(errno.EACCES)
        if mode & os.W_OK and not self.writable(node.host):
            raise _err(errno.EACCES)
        with self._at(node.parts) as (d, name):
            ok = os.access(name, mode, dir_fd=d, effective_ids=effective, follow_symlinks=False)
        if not ok:
            raise _err(errno.EACCES)

    def access_file(self, host_fd: int, mode: int, *, writable: bool,
                    effective: bool = False) -> None:
        """faccessat2(AT_EMPTY_PATH) of an open file: asks about the file the fd holds, never
        about the path it was opened by; ``writable`` is whether it lies inside ``rw``."""
        if mode & os.W_OK and not writable:
            raise _err(errno.EACCES)
        if not os.access(_fd_path(host_fd), mode, effective_ids=effective):
            raise _err(errno.EACCES)

    def readlink(self, path: str, base: str | Anchor | None = None) -> str:
        """readlink(2): the contents of a guest symlink (EINVAL if not a symlink)."""
        node = self.resolve(path, base, follow=False)
        if node.kind == VLINK:
            return node.target
        if node.kind == MISSING:
            raise _err(errno.ENOENT)
        if node.kind != HOST or node.st is None or not stat.S_ISLNK(node.st.st_mode):
            raise _err(errno.EINVAL)
        with self._at(node.parts) as (d, name):
            return os.readlink(name, dir_fd=d)

    # -- metadata read from the host (statfs, extended attributes) -----------------------

    def _metadata_node(self, path: str, follow: bool) -> Node:
        """The HOST node whose metadata a path call reads (ENOENT, or EACCES for virtual
        files, which have none to give)."""
        node = self.resolve(path, follow=follow)
        if node.kind == MISSING:
            raise _err(errno.ENOENT)
        if node.kind != HOST:
            raise _err(errno.EACCES)
        return node

    @contextmanager
    def _node_fd(self, node: Node) -> Iterator[int]:
        """An ``O_PATH`` host fd on the file of a HOST node itself (a final link not followed)."""
        with self._at(node.parts) as (d, name):
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
        try:
            yield fd
        finally:
            os.close(fd)

    def statvfs(self, path: str) -> os.statvfs_result:
        """statfs(2) of the file system holding a guest path."""
        with self._node_fd(self._metadata_node(path, True)) as fd:
            return os.statvfs(fd)

    def getxattr(self, path: str, attr: str, *, follow: bool = True) -> bytes:
        """getxattr(2)/lgetxattr(2) of a guest path."""
        node = self._metadata_node(path, follow)
        if _is_link(node):
            raise _err(errno.ENODATA)  # a symlink's own attributes are not read
        with self._node_fd(node) as fd:
            return os.getxattr(_fd_path(fd), attr)

    def listxattr(self, path: str, *, follow: bool = True) -> list[str]:
        """listxattr(2)/llistxattr(2) of a guest path."""
        node = self._metadata_node(path, follow)
        if _is_link(node):
            return []
        with self._node_fd(node) as fd:
            return os.listxattr(_fd_path(fd))

    def getcwd(self) -> str:
        """getcwd(2): the guest path of the working directory where it is now (it follows a
        rename); ENOENT once it was removed or is no longer under the root."""
        node = self.resolve(".")
        self._cwd_path = node.guest
        return node.guest

    def chdir(self, path: str, base: str | Anchor | None = None) -> None:
        """chdir(2)/fchdir(2) (``path`` "." from the directory fd's :class:`Anchor`)."""
        node = self.resolve(path, base, follow=True)
        if node.kind == MISSING:
            raise _err(errno.ENOENT)
        if node.kind != HOST:
            raise _err(errno.ENOTDIR if node.kind == DEVICE else errno.EACCES)
        if not node.is_dir:
            raise _err(errno.ENOTDIR)
        with self._at(node.parts) as (d, name):
            if not os.access(name, os.X_OK, dir_fd=d, follow_symlinks=False):
                raise _err(errno.EACCES)
        self._set_cwd(node)

    # -- open ----------------------------------------------------------------------------

    def open(self, path: str, flags: int, mode: int = 0o666,
             base: str | Anchor | None = None) -> OpenFile:
        """open(2)/openat(2): an :class:`OpenFile` on a new host fd (not yet in any fd table)."""
        acc = flags & os.O_ACCMODE
        if acc == os.O_ACCMODE:
            raise _err(errno.EINVAL)
        tmpfile = (flags & os.O_TMPFILE) == os.O_TMPFILE
        creat = bool(flags & os.O_CREAT) and not tmpfile
        writes = acc != os.O_RDONLY or bool(flags & os.O_TRUNC)
        if tmpfile and acc == os.O_RDONLY:
            raise _err(errno.EINVAL)
        follow = not (flags & os.O_NOFOLLOW) and not (creat and flags & os.O_EXCL)
        node = self.resolve(path, base, follow=follow)
        create_mode = mode & ~self.umask & 0o7777
        host_flags = (flags & ~os.O_CLOEXEC) | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
        file_flags = flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_TRUNC | os.O_CLOEXEC)

        if node.kind == DEVICE:
            if creat and flags & os.O_EXCL:
                raise _err(errno.EEXIST)
            if flags & os.O_DIRECTORY:
                raise _err(errno.ENOTDIR)
            if writes and node.parts[-1] not in WRITABLE_DEVICES:
                raise _err(errno.EACCES)
            dev_flags = (flags & _DEVICE_FLAGS) | os.O_CLOEXEC | os.O_NOCTTY
            return OpenFile(os.open(node.host, dev_flags), node.guest, file_flags)
        if node.kind == VLINK:
            raise _err(errno.ELOOP)  # only reached with O_NOFOLLOW
        if node.kind == VDIR:
            raise _err(errno.EACCES)

        if node.kind == MISSING:
            if not creat:
                raise _err(errno.ENOENT)
            if node.trailing:
                raise _err(errno.EISDIR)
            if not self.writable(os.path.dirname(node.host)):
                raise _err(errno.EACCES)
            with self._at(node.parts) as (d, name):
                fd = os.open(name, host_flags, create_mode, dir_fd=d)
            try:
                self._fix_mode(fd, create_mode)
            except OSError:
                os.close(fd)
                raise
            return OpenFile(fd, node.guest, file_flags, in_rw=True)

        assert node.st is not None
        st_mode = node.st.st_mode
        if creat and flags & os.O_EXCL:
            raise _err(errno.EEXIST)
        if stat.S_ISLNK(st_mode) and not flags & os.O_PATH:
            raise _err(errno.ELOOP)
        in_rw = self.writable(node.host)
        # The file exists: never let a concurrent unlink turn this open into a creation.
        host_flags &= ~(os.O_CREAT | os.O_EXCL)
        if tmpfile:
            if not stat.S_ISDIR(st_mode):
                raise _err(errno.ENOTDIR)
            if not in_rw:
                raise _err(errno.EACCES)
            with self._dir_fd(node.parts) as d:
                fd = os.open(".", host_flags & ~os.O_NOFOLLOW, create_mode, dir_fd=d)
            try:
                self._fix_mode(fd, create_mode)
            except OSError:
                os.close(fd)
                raise
            return OpenFile(fd, None, file_flags, in_rw=True)
        if flags & os.O_DIRECTORY and not stat.S_ISDIR(st_mode):
            raise _err(errno.ENOTDIR)
        if writes and stat.S_ISDIR(st_mode):
            raise _err(errno.EISDIR)
        if writes and not in_rw:
            raise _err(errno.EACCES)
        with self._at(node.parts) as (d, name):
            fd = os.open(name, host_flags, create_mode, dir_fd=d)
        return OpenFile(fd, node.guest, file_flags, in_rw=in_rw)

    # -- modifications -------------------------------------------------------------------

    def _entry(self, path: str, base: str | Anchor | None, dot: int,
               dotdot: int) -> tuple[Node, str, bool]:
        """(parent directory node, last name, trailing slash) for calls acting on an entry.

        ``dot``/``dotdot`` are the errnos for a last component "." (or the root) / "..".
        """
        if not path:
            raise _err(errno.ENOENT)
        stripped = path.rstrip("/")
        trailing = stripped != path
        if not stripped:
            raise _err(dot)
        cut = stripped.rfind("/")
        if cut < 0:
            parent_path, name = ".", stripped
        else:
            parent_path, name = stripped[: cut + 1], stripped[cut + 1 :]
        if name == ".":
            raise _err(dot)
        if name == "..":
            raise _err(dotdot)
        if len(os.fsencode(name)) > NAME_MAX:
            raise _err(errno.ENAMETOOLONG)
        parent = self.resolve(parent_path, base, follow=True)
        if parent.kind == MISSING:
            raise _err(errno.ENOENT)
        if parent.kind in (VDIR, VLINK):
            raise _err(errno.EACCES)
        if parent.kind != HOST or not parent.is_dir:
            raise _err(errno.ENOTDIR)
        if self._virtual((*parent.parts, name)) is not None:
            raise _err(errno.EACCES)
        return parent, name, trailing

    def _require_rw(self, parent: Node) -> None:
        if not self.writable(parent.host):
            raise _err(errno.EACCES)

    def mkdir(self, path: str, mode: int = 0o777, base: str | Anchor | None = None) -> None:
        """mkdir(2) inside a writable directory."""
        parent, name, _ = self._entry(path, base, errno.EEXIST, errno.EEXIST)
        create_mode = mode & ~self.umask & 0o7777
        with self._dir_fd(parent.parts) as d:
            if _exists(name, d):
                raise _err(errno.EEXIST)
            self._require_rw(parent)
            os.mkdir(name, create_mode, dir_fd=d)
            if create_mode & self._host_mask:
                fd = os.open(
                    name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d
                )
                try:
                    self._fix_mode(fd, create_mode)
                finally:
                    os.close(fd)

    def rmdir(self, path: str, base: str | Anchor | None = None) -> None:
        """rmdir(2) inside a writable directory."""
        parent, name, _ = self._entry(path, base, errno.EINVAL, errno.ENOTEMPTY)
        with self._dir_fd(parent.parts) as d:
            st = os.stat(name, dir_fd=d, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                raise _err(errno.ENOTDIR)
            self._require_rw(parent)
            os.rmdir(name, dir_fd=d)

    def unlink(self, path: str, base: str | Anchor | None = None) -> None:
        """unlink(2) inside a writable directory."""
        parent, name, trailing = self._entry(path, base, errno.EISDIR, errno.EISDIR)
        with self._dir_fd(parent.parts) as d:
            st = os.stat(name, dir_fd=d, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise _err(errno.EISDIR)
            if trailing:
                raise _err(errno.ENOTDIR)
            self._require_rw(parent)
            os.unlink(name, dir_fd=d)

    def rename(
        self,
        old: str,
        new: str,
        old_base: str | Anchor | None = None,
        new_base: str | Anchor | None = None,
        flags: int = 0,
    ) -> None:
        """rename(2)/renameat2(2) with both directories writable (flags: RENAME_NOREPLACE,
        RENAME_EXCHANGE; RENAME_WHITEOUT creates a device node, refused like mknod: EPERM)."""
        if flags & RENAME_WHITEOUT:
            raise _err(errno.EPERM)
        oparent, oname, otrail = self._entry(old, old_base, errno.EBUSY, errno.EBUSY)
        nparent, nname, ntrail = self._entry(new, new_base, errno.EBUSY, errno.EBUSY)
        with self._dir_fd(oparent.parts) as od, self._dir_fd(nparent.parts) as nd:
            st = os.stat(oname, dir_fd=od, follow_symlinks=False)
            if (otrail or ntrail) and not stat.S_ISDIR(st.st_mode):
                raise _err(errno.ENOTDIR)
            self._require_rw(oparent)
            self._require_rw(nparent)
            if flags:
                _renameat2(od, oname, nd, nname, flags)
            else:
                os.rename(oname, nname, src_dir_fd=od, dst_dir_fd=nd)

    def symlink(self, target: str, path: str, base: str | Anchor | None = None) -> None:
        """symlink(2): create ``path`` (inside a writable directory) pointing to ``target``."""
        if not target:
            raise _err(errno.ENOENT)
        parent, name, _ = self._entry(path, base, errno.EEXIST, errno.EEXIST)
        with self._dir_fd(parent.parts) as d:
            if _exists(name, d):
                raise _err(errno.EEXIST)
            self._require_rw(parent)
            os.symlink(target, name, dir_fd=d)

    def _open_existing(self, node: Node, flags: int) -> int:
        """A host fd on an existing HOST node, opened without following a final link."""
        with self._at(node.parts) as (d, name):
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY, dir_fd=d)

    def _target_for_change(self, path: str, base: str | Anchor | None) -> Node:
        node = self.resolve(path, base, follow=True)
        if node.kind == MISSING:
            raise _err(errno.ENOENT)
        if node.kind != HOST or not self.writable(node.host):
            raise _err(errno.EACCES)
        return node

    def chmod(self, path: str, mode: int, base: str | Anchor | None = None) -> None:
        """chmod(2) of a file inside a writable directory."""
        node = self._target_for_change(path, base)
        with self._node_fd(node) as fd:
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                raise _err(errno.ELOOP)  # swapped for a symlink since resolution
            os.chmod(_fd_path(fd), mode & 0o7777)

    def truncate(self, path: str, length: int, base: str | Anchor | None = None) -> None:
        """truncate(2) of a file inside a writable directory."""
        if length < 0:
            raise _err(errno.EINVAL)
        node = self._target_for_change(path, base)
        if node.is_dir:
            raise _err(errno.EISDIR)
        fd = self._open_existing(node, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.ftruncate(fd, length)
        finally:
            os.close(fd)


def require_executable(path: str) -> None:
    """Refuse to run a host program execve(2) would refuse with EACCES: not a regular file,
    or no execute permission for us.  A missing file is left to the ELF loader to report."""
    try:
        st = os.stat(path)
    except OSError:
        return
    if not stat.S_ISREG(st.st_mode) or not os.access(path, os.X_OK):
        raise NotExecutable(f"{path}: Permission denied (not an executable file)")


def _is_link(node: Node) -> bool:
    return node.st is not None and stat.S_ISLNK(node.st.st_mode)


def _fd_path(fd: int) -> str:
    """A path naming the inode of leakdbt's own host ``fd``, through the host's /proc.

    Path-only calls (getxattr, chmod) are aimed at an ``O_PATH`` fd, which cannot be passed
    to their f* forms, this way: the file was already reached by a confined walk.
    """
    return f"/proc/self/fd/{fd}"


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _renameat2(old_dir: int, old: str, new_dir: int, new: str, flags: int) -> None:
    """renameat2(2) through libc (Python has no binding for it)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    func = getattr(libc, "renameat2", None)
    if func is None:
        raise _err(errno.EINVAL)
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if func(old_dir, os.fsencode(old), new_dir, os.fsencode(new), flags) != 0:
        raise _err(ctypes.get_errno())
