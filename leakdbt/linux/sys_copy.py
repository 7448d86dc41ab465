"""copy_file_range(2): an in-kernel copy between two open files, done by the host kernel on
the two host fds behind the guest's.

This stays inside the sandbox's rules without checks of its own: a guest fd is a host fd
that leakdbt opened under those rules (a file outside --rw was never opened for writing),
and the host kernel applies the same conditions Linux gives the guest — both must be
regular files (else EINVAL, or EISDIR for a directory), the input readable and the output
writable and not O_APPEND (EBADF), no overlap within one file (EINVAL), ``flags`` zero
(EINVAL), and EXDEV where the host's kernel does not copy across the two file systems.
Callers such as coreutils' ``cat``/``cp`` fall back to read/write on those errors, as they
do natively, so none of them is reported on stderr.
"""

from __future__ import annotations

import errno
import os
import struct

from leakdbt.linux.files import MAX_RW_COUNT
from leakdbt.linux.kernel import Kernel, s32, s64
from leakdbt.machine.memory import GuestMemoryFault


def _load_offset(k: Kernel, addr: int) -> int | None:
    """The loff_t at ``addr`` (None for a NULL pointer: the file's own offset is used)."""
    if not addr:
        return None
    return s64(struct.unpack("<q", k.mem.read(addr, 8))[0])


def sys_copy_file_range(k: Kernel, fd_in: int, off_in: int, fd_out: int, off_out: int,
                        length: int, flags: int) -> int:
    """copy_file_range(2); with an offset pointer the file's own offset is left alone and
    the pointer is advanced by the bytes copied."""
    try:
        src, dst = k.fds.get(s32(fd_in)), k.fds.get(s32(fd_out))
        start_in, start_out = _load_offset(k, off_in), _load_offset(k, off_out)
        if flags & 0xFFFFFFFF:
            return -errno.EINVAL
        if (start_in is not None and start_in < 0) or (start_out is not None and start_out < 0):
            return -errno.EINVAL
        done = os.copy_file_range(src.host_fd, dst.host_fd, min(length, MAX_RW_COUNT),
                                  start_in, start_out)
        if start_in is not None:
            k.mem.write(off_in, struct.pack("<q", start_in + done))
        if start_out is not None:
            k.mem.write(off_out, struct.pack("<q", start_out + done))
        return done
    except GuestMemoryFault:
        return -errno.EFAULT
    except OSError as e:
        return -(e.errno or errno.EIO)


HANDLERS = {
    326: ("copy_file_range", sys_copy_file_range),
}
