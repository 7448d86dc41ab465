"""File-system metadata calls answered from the host, read-only: statfs(2)/fstatfs(2) and the
extended-attribute readers getxattr(2)/listxattr(2) (and their l/f variants).  Setting
attributes is refused (-EACCES): the sandbox exposes metadata, it never changes it.  Path
calls go through the guest's :class:`~leakdbt.linux.fs.FileSystem`, confined like open(2)."""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable

from leakdbt.linux.kernel import Kernel, s32

XATTR_SIZE_MAX = 65536


def _guest_path(k: Kernel, path_addr: int) -> str:
    return os.fsdecode(k.mem.read_cstring(path_addr))


def _errno(e: OSError) -> int:
    return -(e.errno or errno.EIO)


def _pack_statfs(st: os.statvfs_result) -> bytes:
    # struct statfs (x86-64): f_type, f_bsize, f_blocks, f_bfree, f_bavail, f_files, f_ffree,
    # f_fsid[2], f_namelen, f_frsize, f_flags, f_spare[4]
    return struct.pack("<qqQQQQQiiqqq4q", 0xEF53, st.f_bsize, st.f_blocks, st.f_bfree,
                       st.f_bavail, st.f_files, st.f_ffree, 0, 0, st.f_namemax, st.f_frsize,
                       st.f_flag, 0, 0, 0, 0)


def sys_statfs(k: Kernel, path: int, buf: int) -> int:
    try:
        st = k.fs.statvfs(_guest_path(k, path))
    except OSError as e:
        return _errno(e)
    k.mem.write(buf, _pack_statfs(st))
    return 0


def sys_fstatfs(k: Kernel, fd: int, buf: int) -> int:
    try:
        st = os.statvfs(k.fds.get(s32(fd)).host_fd)
    except OSError as e:
        return _errno(e)
    k.mem.write(buf, _pack_statfs(st))
    return 0


def _copy_out(k: Kernel, data: bytes, buf: int, size: int) -> int:
    """The xattr size protocol: size 0 asks for the length; a short buffer is -ERANGE."""
    if size == 0:
        return len(data)
    if len(data) > size:
        return -errno.ERANGE
    k.mem.write(buf, data)
    return len(data)


def _getxattr(kind: str) -> Callable[..., int]:
    """getxattr ("path"), lgetxattr ("link") or fgetxattr ("fd")."""

    def handler(k: Kernel, target: int, name: int, value: int, size: int) -> int:
        try:
            attr = os.fsdecode(k.mem.read_cstring(name, 256))
            if kind == "fd":
                data = os.getxattr(k.fds.get(s32(target)).host_fd, attr)
            else:
                data = k.fs.getxattr(_guest_path(k, target), attr, follow=kind == "path")
        except OSError as e:
            return _errno(e)
        return _copy_out(k, data, value, size)

    handler.__name__ = f"sys_{'' if kind == 'path' else kind[0]}getxattr"
    return handler


def _listxattr(kind: str) -> Callable[..., int]:
    """listxattr ("path"), llistxattr ("link") or flistxattr ("fd")."""

    def handler(k: Kernel, target: int, buf: int, size: int) -> int:
        try:
            if kind == "fd":
                names = os.listxattr(k.fds.get(s32(target)).host_fd)
            else:
                names = k.fs.listxattr(_guest_path(k, target), follow=kind == "path")
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
