"""Memory system calls: brk, mmap, munmap, mprotect, mremap, madvise (see mmap(2), brk(2),
mremap(2), madvise(2)).  Mappings live in the machine's AddressSpace."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from leakdbt.errors import LimitExceeded
from leakdbt.linux.kernel import Kernel, s32
from leakdbt.machine.memory import PAGE, PROT_WRITE, USER_TOP, page_down, page_up

MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_FIXED_NOREPLACE = 0x100000
MREMAP_MAYMOVE = 1
MREMAP_FIXED = 2
MADV_DONTNEED = 4
MADV_FREE = 8
PROT_MASK = 7


def sys_brk(k: Kernel, addr: int) -> int:
    mm = k.mm
    if addr < mm.brk_start:
        return mm.brk
    old_top, new_top = page_up(mm.brk), page_up(addr)
    if new_top > old_top:
        if not mm.is_free(old_top, new_top):
            return mm.brk
        try:
            mm.map(old_top, new_top - old_top, 3, "[heap]")
        except LimitExceeded:
            return mm.brk
    elif new_top < old_top:
        mm.unmap(new_top, old_top - new_top)
    mm.brk = addr
    return addr


def sys_mmap(k: Kernel, addr: int, length: int, prot: int, flags: int, fd: int,
             offset: int) -> int:
    if length == 0 or offset & (PAGE - 1) or length > USER_TOP:
        return -errno.EINVAL
    if not flags & (MAP_SHARED | MAP_PRIVATE):
        return -errno.EINVAL
    size = page_up(length)
    prot &= PROT_MASK
    fixed = bool(flags & (MAP_FIXED | MAP_FIXED_NOREPLACE))
    if fixed and (addr & (PAGE - 1) or addr + size > USER_TOP):
        return -errno.EINVAL if addr & (PAGE - 1) else -errno.ENOMEM
    data = b""
    host_path = ""
    if not flags & MAP_ANONYMOUS:
        try:
            f = k.fds.get(s32(fd))
        except OSError:
            return -errno.EBADF
        if flags & MAP_SHARED and prot & PROT_WRITE:
            return -errno.ENODEV  # shared writable file mappings are not emulated
        try:
            data = f.pread(length, offset)
        except OSError as e:
            return -(e.errno or errno.EACCES)
        host_path = _host_path(f.host_fd)
    mm = k.mm
    if fixed:
        if flags & MAP_FIXED_NOREPLACE and not mm.is_free(addr, addr + size):
            return -errno.EEXIST
        start = addr
    elif addr and addr + size <= USER_TOP and mm.is_free(page_down(addr), page_down(addr) + size):
        start = page_down(addr)
    else:
        try:
            start = mm.find_free(size)
        except MemoryError:
            return -errno.ENOMEM
    try:
        mm.map(start, size, prot, host_path or "[anon]")
    except (LimitExceeded, MemoryError):  # MemoryError: over leakdbt's code cache
        return -errno.ENOMEM
    if data:
        mm.write(start, data)
    if host_path:
        k.modules.add_file_mapping(host_path, start, offset, size)
    return start


def _host_path(host_fd: int) -> str:
    """The host file behind an open guest file (our own /proc, never the guest's)."""
    try:
        return os.readlink(f"/proc/self/fd/{host_fd}")
    except OSError:
        return ""


def sys_munmap(k: Kernel, addr: int, length: int) -> int:
    if addr & (PAGE - 1) or length == 0:
        return -errno.EINVAL
    k.mm.unmap(addr, page_up(length))
    k.modules.remove_range(addr, addr + page_up(length))
    return 0


def sys_mprotect(k: Kernel, addr: int, length: int, prot: int) -> int:
    if addr & (PAGE - 1):
        return -errno.EINVAL
    if length == 0:
        return 0
    return 0 if k.mm.protect(addr, page_up(length), prot & PROT_MASK) else -errno.ENOMEM


def sys_mremap(k: Kernel, old: int, old_size: int, new_size: int, flags: int,
               new_addr: int) -> int:
    mm = k.mm
    if old & (PAGE - 1) or new_size == 0 or flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED):
        return -errno.EINVAL
    old_size, new_size = page_up(old_size), page_up(new_size)
    vma = mm.find(old)
    if vma is None or vma.end < old + old_size:
        return -errno.EFAULT
    if flags & MREMAP_FIXED:
        if not flags & MREMAP_MAYMOVE or new_addr & (PAGE - 1):
            return -errno.EINVAL
        return _move(k, old, old_size, new_size, new_addr, vma.prot, vma.name)
    if new_size <= old_size:
        if new_size < old_size:
            mm.unmap(old + new_size, old_size - new_size)
        return old
    if mm.is_free(old + old_size, old + new_size):
        try:
            mm.map(old + old_size, new_size - old_size, vma.prot, vma.name)
        except LimitExceeded:
            return -errno.ENOMEM
        return old
    if not flags & MREMAP_MAYMOVE:
        return -errno.ENOMEM
    try:
        target = mm.find_free(new_size)
    except MemoryError:
        return -errno.ENOMEM
    return _move(k, old, old_size, new_size, target, vma.prot, vma.name)


def _move(k: Kernel, old: int, old_size: int, new_size: int, target: int, prot: int,
          name: str) -> int:
    mm = k.mm
    data = mm.read(old, min(old_size, new_size))
    try:
        mm.map(target, new_size, prot, name)
    except (LimitExceeded, MemoryError):
        return -errno.ENOMEM
    mm.write(target, data)
    mm.unmap(old, old_size)
    return target


def sys_madvise(k: Kernel, addr: int, length: int, advice: int) -> int:
    if addr & (PAGE - 1):
        return -errno.EINVAL
    if advice in (MADV_DONTNEED, MADV_FREE):
        # Private anonymous memory reads back as zeros after MADV_DONTNEED.
        end = page_up(addr + length)
        pos = addr
        while pos < end:
            vma = k.mm.find(pos)
            if vma is None:
                return -errno.ENOMEM
            hi = min(vma.end, end)
            if advice == MADV_DONTNEED and vma.name in ("[anon]", "[heap]", "[stack]"):
                k.mm.write(pos, bytes(hi - pos))
            pos = hi
    return 0


def _fully_mapped(k: Kernel, start: int, end: int) -> bool:
    pos = start
    while pos < end:
        vma = k.mm.find(pos)
        if vma is None:
            return False
        pos = vma.end
    return True


def sys_msync(k: Kernel, addr: int, length: int, flags: int) -> int:
    if addr & (PAGE - 1) or flags & ~7 or (flags & 1 and flags & 4):
        return -errno.EINVAL
    return 0 if _fully_mapped(k, addr, page_up(addr + length)) else -errno.ENOMEM


def sys_mincore(k: Kernel, addr: int, length: int, vec: int) -> int:
    if addr & (PAGE - 1):
        return -errno.EINVAL
    end = page_up(addr + length)
    if not _fully_mapped(k, addr, end):
        return -errno.ENOMEM
    k.mem.write(vec, b"\x01" * ((end - addr) // PAGE))  # every mapped page is resident
    return 0


HANDLERS: dict[int, tuple[str, Callable[..., int]]] = {
    9: ("mmap", sys_mmap),
    10: ("mprotect", sys_mprotect),
    11: ("munmap", sys_munmap),
    12: ("brk", sys_brk),
    25: ("mremap", sys_mremap),
    26: ("msync", sys_msync),
    27: ("mincore", sys_mincore),
    28: ("madvise", sys_madvise),
}
