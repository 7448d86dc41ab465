"""File-system metadata calls answered from the host, read-only: statfs(2)/fstatfs(2) and the
extended-attribute readers getxattr(2)/listxattr(2) (and their l/f variants).  Setting
attributes is refused (-EACCES): the sandbox exposes metadata, it never changes it."""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable

from leakdbt.linux.kernel import Kernel, s32

XATTR_SIZE_MAX = 65536


def _host_path(k: Kernel, path_addr: int, follow: bool) -> str:
    path = os.fsdecode(k.mem.read_cstring(path_addr))
    if not path:
        raise FileNotFoundError(errno.ENOENT, "empty path")
    node = k.fs.resolve(path, follow=follow)
    if not node.host or node.st is None:
        raise PermissionError(errno.EACCES, "not a host file")
    return node.host


def _target(k: Kernel, arg: int, kind: str) -> int | str:
    """A host fd (for f* calls) or a host path (for the path calls)."""
    if kind == "fd":
        return k.fds.get(s32(arg)).host_fd
    return _host_path(k, arg, follow=kind == "path")


def _errno(e: OSError) -> int:
    return -(e.errno or errno.EIO)


def _statfs(k: Kernel, target: int | str, buf: int) -> int:
    try:
        st = os.statvfs(target)
    except OSError as e:
        return _errno(e)
    # struct statfs (x86-64): f_type, f_bsize, f_blocks, f_bfree, f_bavail, f_files, f_ffree,
    # f_fsid[2], f_namelen, f_frsize, f_flags, f_spare[4]
    k.mem.write(buf, struct.pack("<qqQQQQQiiqqq4q", 0xEF53, st.f_bsize, st.f_blocks,
                                 st.f_bfree, st.f_bavail, st.f_files, st.f_ffree, 0, 0,
                                 st.f_namemax, st.f_frsize, st.f_flag, 0, 0, 0, 0))
    return 0


def sys_statfs(k: Kernel, path: int, buf: int) -> int:
    try:
        return _statfs(k, _host_path(k, path, follow=True), buf)
    except OSError as e:
        return _errno(e)


def sys_fstatfs(k: Kernel, fd: int, buf: int) -> int:
    try:
        return _statfs(k, k.fds.get(s32(fd)).host_fd, buf)
    except OSError as e:
        return _errno(e)


def _copy_out(k: Kernel, data: bytes, buf: int, size: int) -> int:
    """The xattr size protocol: size 0 asks for the length; a short buffer is -ERANGE."""
    if size == 0:
        return len(data)
    if len(data) > size:
        return -errno.ERANGE
    k.mem.write(buf, data)
    return len(data)


def _getxattr(kind: str) -> Callable[..., int]:
    def handler(k: Kernel, target: int, name: int, value: int, size: int) -> int:
        try:
            attr = os.fsdecode(k.mem.read_cstring(name, 256))
            where = _target(k, target, kind)
            data = os.getxattr(where, attr, follow_symlinks=kind != "link")
        except OSError as e:
            return _errno(e)
        return _copy_out(k, data, value, size)

    handler.__name__ = f"sys_{'' if kind == 'path' else kind[0]}getxattr"
    return handler


def _listxattr(kind: str) -> Callable[..., int]:
    def handler(k: Kernel, target: int, buf: int, size: int) -> int:
        try:
            where = _target(k, target, kind)
            names = os.listxattr(where, follow_symlinks=kind != "link")
        except OSError as e:
            return _errno(e)
        return _copy_out(k, b"".join(os.fsencode(n) + b"\0" for n in names), buf, size)

    handler.__name__ = f"sys_{'' if kind == 'path' else kind[0]}listxattr"
    return handler


def sys_refuse_setxattr(k: Kernel, *_args: int) -> int:
    """Changing extended attributes is not granted to guests."""
    return -errno.EACCES


HANDLERS: dict[int, tuple[str, Callable[..., int]]] = {
    137: ("statfs", sys_statfs),
    138: ("fstatfs", sys_fstatfs),
    188: ("setxattr", sys_refuse_setxattr),
    189: ("lsetxattr", sys_refuse_setxattr),
    190: ("fsetxattr", sys_refuse_setxattr),
    191: ("getxattr", _getxattr("path")),
    192: ("lgetxattr", _getxattr("link")),
    193: ("fgetxattr", _getxattr("fd")),
    194: ("listxattr", _listxattr("path")),
    195: ("llistxattr", _listxattr("link")),
    196: ("flistxattr", _listxattr("fd")),
}
