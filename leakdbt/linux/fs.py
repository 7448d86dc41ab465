"""The guest's file-system namespace: the only code in leakdbt that touches host paths.

Follows path_resolution(7), symlink(7), openat(2), stat(2), access(2), readlink(2), mkdir(2),
rmdir(2), unlink(2), rename(2), symlink(2), chmod(2), truncate(2), chdir(2), umask(2) and
proc(5) for the two /proc entries it emulates.

The guest sees the host directory ``root`` as "/".  Guest paths are resolved here, component
by component: every host component is lstat'ed and every symlink is read and interpreted in the
*guest* namespace (absolute targets restart at the guest root, ``..`` stops at the guest root,
at most 40 links per lookup, then ELOOP), so neither ``..``, absolute paths nor symlinks can
reach the host outside ``root``.  The resolved path is then re-walked physically, one
``O_PATH | O_NOFOLLOW | O_DIRECTORY`` host fd per component, and the final operation is an
``*at()`` call on the last directory with ``O_NOFOLLOW``: a component swapped for a symlink
between resolution and use makes the call fail instead of escaping.

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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from leakdbt.errors import UsageError
from leakdbt.linux.files import FsError, OpenFile

__all__ = ["FileSystem", "FsError", "Node"]

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
        self.cwd = "/"
        try:
            node = self.resolve(cwd)
        except OSError as e:
            raise UsageError(f"working directory {cwd!r}: {e.strerror}") from None
        if node.kind != HOST or not node.is_dir:
            raise UsageError(f"working directory {cwd!r} is not a directory in the guest root")
        self.cwd = node.guest

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

    def resolve(self, path: str, base: str | None = None, *, follow: bool = True) -> Node:
        """Resolve guest ``path`` (relative ones from guest directory ``base``, default cwd).

        A missing last component gives a ``MISSING`` node; ``follow=False`` leaves a final
        symlink unresolved (a trailing slash still follows it).
        """
        if not path:
            raise _err(errno.ENOENT)
        if len(os.fsencode(path)) >= PATH_MAX:
            raise _err(errno.ENAMETOOLONG)
        if path.startswith("/"):
            parts: list[str] = []
        else:
            start = self.cwd if base is None else base
            parts = [c for c in start.split("/") if c]
        stack = path.split("/")
        stack.reverse()
        hops = 0
        while stack:
            name = stack.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if parts:
                    parts.pop()
                continue
            if len(os.fsencode(name)) > NAME_MAX:
                raise _err(errno.ENAMETOOLONG)
            last = all(c in ("", ".") for c in stack)
            trailing = last and bool(stack)
            follow_this = follow or not last or trailing
            child = (*parts, name)
            virtual = self._virtual(child)
            if virtual is not None:
                kind, target = virtual
                if kind == VLINK and follow_this:
                    hops = self._push_link(target, hops, stack, parts)
                    continue
                if kind == DEVICE and (not last or trailing):
                    raise _err(errno.ENOTDIR)
                if kind == VDIR and not last:
                    parts.append(name)
                    continue
                host = target if kind == DEVICE else ""
                return Node(
                    child,
                    kind,
                    host=host,
                    target=target if kind == VLINK else "",
                    trailing=trailing,
                )
            host = self._host(child)
            try:
                st = os.lstat(host)
            except FileNotFoundError:
                if last:
                    return Node(child, MISSING, host=host, trailing=trailing)
                raise _err(errno.ENOENT) from None
            if stat.S_ISLNK(st.st_mode) and follow_this:
                hops = self._push_link(os.readlink(host), hops, stack, parts)
                continue
            if (not last or trailing) and not stat.S_ISDIR(st.st_mode):
                raise _err(errno.ENOTDIR)
            if last:
                return Node(child, HOST, host=host, st=st, trailing=trailing)
            parts.append(name)
        return self._node_at(tuple(parts))

    @staticmethod
    def _push_link(target: str, hops: int, stack: list[str], parts: list[str]) -> int:
        """Splice a symlink's target into the lookup; returns the new hop count."""
        hops += 1
        if hops > MAXSYMLINKS:
            raise _err(errno.ELOOP)
        if not target:
            raise _err(errno.ENOENT)
        if target.startswith("/"):
            parts.clear()
        stack.extend(reversed(target.split("/")))
        return hops

    def _node_at(self, parts: tuple[str, ...]) -> Node:
        """The node of a directory reached through "." / ".." or the root."""
        if parts:
            virtual = self._virtual(parts)
            if virtual is not None:
                return Node(parts, virtual[0])
        host = self._host(parts)
        try:
            st = os.lstat(host)
        except FileNotFoundError:
            raise _err(errno.ENOENT) from None
        return Node(parts, HOST, host=host, st=st)

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

    def stat(self, path: str, base: str | None = None, *, follow: bool = True) -> os.stat_result:
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
        base: str | None = None,
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

    def readlink(self, path: str, base: str | None = None) -> str:
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

    def getcwd(self) -> str:
        """The guest's current working directory."""
        return self.cwd

    def chdir(self, path: str, base: str | None = None) -> None:
        """chdir(2) to a guest directory."""
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
        self.cwd = node.guest

    # -- open ----------------------------------------------------------------------------

    def open(self, path: str, flags: int, mode: int = 0o666, base: str | None = None) -> OpenFile:
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

    def _entry(self, path: str, base: str | None, dot: int, dotdot: int) -> tuple[Node, str, bool]:
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

    def mkdir(self, path: str, mode: int = 0o777, base: str | None = None) -> None:
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

    def rmdir(self, path: str, base: str | None = None) -> None:
        """rmdir(2) inside a writable directory."""
        parent, name, _ = self._entry(path, base, errno.EINVAL, errno.ENOTEMPTY)
        with self._dir_fd(parent.parts) as d:
            st = os.stat(name, dir_fd=d, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                raise _err(errno.ENOTDIR)
            self._require_rw(parent)
            os.rmdir(name, dir_fd=d)

    def unlink(self, path: str, base: str | None = None) -> None:
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
        old_base: str | None = None,
        new_base: str | None = None,
        flags: int = 0,
    ) -> None:
        """rename(2)/renameat2(2) with both directories writable (flags: RENAME_NOREPLACE,
        RENAME_EXCHANGE)."""
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

    def symlink(self, target: str, path: str, base: str | None = None) -> None:
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

    def _target_for_change(self, path: str, base: str | None) -> Node:
        node = self.resolve(path, base, follow=True)
        if node.kind == MISSING:
            raise _err(errno.ENOENT)
        if node.kind != HOST or not self.writable(node.host):
            raise _err(errno.EACCES)
        return node

    def chmod(self, path: str, mode: int, base: str | None = None) -> None:
        """chmod(2) of a file inside a writable directory."""
        node = self._target_for_change(path, base)
        fd = self._open_existing(node, os.O_PATH)
        try:
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                raise _err(errno.ELOOP)  # swapped for a symlink since resolution
            # An O_PATH fd cannot be fchmod'ed; leakdbt's own /proc/self/fd entry names the
            # same inode.  Without a host /proc, fall back to the (already checked) name.
            try:
                os.chmod(f"/proc/self/fd/{fd}", mode & 0o7777)
            except FileNotFoundError:
                with self._at(node.parts) as (d, name):
                    os.chmod(name, mode & 0o7777, dir_fd=d)
        finally:
            os.close(fd)

    def truncate(self, path: str, length: int, base: str | None = None) -> None:
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
