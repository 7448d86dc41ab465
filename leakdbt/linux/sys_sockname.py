"""getsockname(2) and getpeername(2): the host's answer for the host fd behind a guest fd.

Shells ask them about their standard input (bash's check for a remote shell, ``isnetconn``),
so a fd that is not a socket must fail with ENOTSOCK as it does natively, quietly.  The only
sockets a guest can hold are the AF_UNIX socketpair ends it made (leakdbt.linux.sys_poll;
the network is refused) and sockets it inherited from leakdbt's own caller; for both the
host kernel's reply is the one Linux gives, so it is passed on: the address, cut to the
guest's buffer length, and the full length written back (socket(7)).
"""

from __future__ import annotations

import ctypes
import errno
import struct

from leakdbt.linux.kernel import Kernel, s32
from leakdbt.machine.memory import GuestMemoryFault

ADDR_MAX = 128  # sizeof(struct sockaddr_storage)
_LIBC = ctypes.CDLL(None, use_errno=True)


def _name(k: Kernel, fd: int, addr: int, addrlen: int, call: str) -> int:
    try:
        host_fd = k.fds.get(s32(fd)).host_fd
        buf = ctypes.create_string_buffer(ADDR_MAX)
        length = ctypes.c_uint32(ADDR_MAX)
        if getattr(_LIBC, call)(host_fd, buf, ctypes.byref(length)) != 0:
            return -(ctypes.get_errno() or errno.EIO)  # EBADF, ENOTSOCK, ENOTCONN first
        real = length.value
        size = s32(struct.unpack("<I", k.mem.read(addrlen, 4))[0])
        if size < 0:
            return -errno.EINVAL
        if size:
            k.mem.write(addr, buf.raw[:min(size, real, ADDR_MAX)])
        k.mem.write(addrlen, struct.pack("<I", real))
        return 0
    except GuestMemoryFault:
        return -errno.EFAULT
    except OSError as e:
        return -(e.errno or errno.EIO)


def sys_getsockname(k: Kernel, fd: int, addr: int, addrlen: int) -> int:
    """getsockname(2)."""
    return _name(k, fd, addr, addrlen, "getsockname")


def sys_getpeername(k: Kernel, fd: int, addr: int, addrlen: int) -> int:
    """getpeername(2)."""
    return _name(k, fd, addr, addrlen, "getpeername")


HANDLERS = {
    51: ("getsockname", sys_getsockname),
    52: ("getpeername", sys_getpeername),
}
