"""Memory system calls: brk, mmap, munmap, mprotect, mremap, madvise (see mmap(2), brk(2),
mremap(2), madvise(2)).  Mappings live in the machine's AddressSpace."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from leakdbt.errors import LimitExceeded
from leakdbt.linux.kernel import Kernel, s32
from leakdbt.machine.memory import PAGE, PROT_WRITE, USER_TOP, Vma, page_down, page_up

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
# Label prefix of a MAP_SHARED file mapping's Vma: such a mapping may never become writable
# (see sys_mprotect), and the label is the one record of it that survives splits and moves.
SHARED_FILE_LABEL = "[shared] "


def sys_brk(k: Kernel, addr: int) -> int:
    mem = k.mem
    if addr < mem.brk_start:
        return mem.brk
    old_top, new_top = page_up(mem.brk), page_up(addr)
    if new_top > old_top:
        if not mem.is_free(old_top, new_top):
            return mem.brk
        try:
            mem.map(old_top, new_top - old_top, 3, "[heap]")
        except (LimitExceeded, MemoryError):  # MemoryError: the engine cannot reserve it
            return mem.brk
    elif new_top < old_top:
        mem.unmap(new_top, old_top - new_top)
    mem.brk = addr
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
    mem = k.mem
    if fixed:
        if flags & MAP_FIXED_NOREPLACE and not mem.is_free(addr, addr + size):
            return -errno.EEXIST
        start = addr
    elif addr and addr + size <= USER_TOP and mem.is_free(page_down(addr), page_down(addr) + size):
        start = page_down(addr)
    else:
        try:
            start = mem.find_free(size)
        except MemoryError:
            return -errno.ENOMEM
    try:
        mem.map(start, size, prot, _label(flags, host_path))
    except (LimitExceeded, MemoryError):  # MemoryError: over leakdbt's code cache
        return -errno.ENOMEM
    if data:
        mem.write(start, data)
    if host_path:
        k.modules.add_file_mapping(host_path, start, offset, size)
    return start


def _label(flags: int, host_path: str) -> str:
    """The Vma label of a new mapping: the file it maps (marked when shared) or "[anon]"."""
    if flags & MAP_ANONYMOUS:
        return "[anon]"
    return (SHARED_FILE_LABEL if flags & MAP_SHARED else "") + (host_path or "[anon]")


def _host_path(host_fd: int) -> str:
    """The host file behind an open guest file (our own /proc, never the guest's)."""
    try:
        return os.readlink(f"/proc/self/fd/{host_fd}")
    except OSError:
        return ""


def sys_munmap(k: Kernel, addr: int, length: int) -> int:
    if addr & (PAGE - 1) or length == 0:
        return -errno.EINVAL
    k.mem.unmap(addr, page_up(length))
    k.modules.remove_range(addr, addr + page_up(length))
    return 0


def sys_mprotect(k: Kernel, addr: int, length: int, prot: int) -> int:
    """mprotect(2).  A shared file mapping never becomes writable: EACCES, what Linux says
    for a file opened read-only (shared writable file mappings are not emulated at all)."""
    if addr & (PAGE - 1):
        return -errno.EINVAL
    if length == 0:
        return 0
    end = addr + page_up(length)
    if prot & PROT_WRITE:
        vmas = _vmas_in(k, addr, end)
        if vmas is None:
            return -errno.ENOMEM
        if any(v.name.startswith(SHARED_FILE_LABEL) for v in vmas):
            return -errno.EACCES
    return 0 if k.mem.protect(addr, page_up(length), prot & PROT_MASK) else -errno.ENOMEM


def _vmas_in(k: Kernel, start: int, end: int) -> list[Vma] | None:
    """The mappings covering [start, end) in address order; None if part of it is unmapped."""
    found = []
    pos = start
    while pos < end:
        vma = k.mem.find(pos)
        if vma is None:
            return None
        found.append(vma)
        pos = vma.end
    return found


def sys_mremap(k: Kernel, old: int, old_size: int, new_size: int, flags: int,
               new_addr: int) -> int:
    mem = k.mem
    if old & (PAGE - 1) or new_size == 0 or flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED):
        return -errno.EINVAL
    old_size, new_size = page_up(old_size), page_up(new_size)
    vma = mem.find(old)
    if vma is None or vma.end < old + old_size:
        return -errno.EFAULT
    if flags & MREMAP_FIXED:
        if not flags & MREMAP_MAYMOVE or new_addr & (PAGE - 1):
            return -errno.EINVAL
        return _move(k, old, old_size, new_size, new_addr, vma.prot, vma.name)
    if new_size <= old_size:
        if new_size < old_size:
            mem.unmap(old + new_size, old_size - new_size)
        return old
    if mem.is_free(old + old_size, old + new_size):
        try:
            mem.map(old + old_size, new_size - old_size, vma.prot, vma.name)
        except LimitExceeded:
            return -errno.ENOMEM
        return old
    if not flags & MREMAP_MAYMOVE:
        return -errno.ENOMEM
    try:
        target = mem.find_free(new_size)
    except MemoryError:
        return -errno.ENOMEM
    return _move(k, old, old_size, new_size, target, vma.prot, vma.name)


def _move(k: Kernel, old: int, old_size: int, new_size: int, target: int, prot: int,
          name: str) -> int:
    mem = k.mem
    data = mem.read(old, min(old_size, new_size))
    try:
        mem.map(target, new_size, prot, name)
    except (LimitExceeded, MemoryError):
        return -errno.ENOMEM
    mem.write(target, data)
    mem.unmap(old, old_size)
    return target


def sys_madvise(k: Kernel, addr: int, length: int, advice: int) -> int:
    if addr & (PAGE - 1):
        return -errno.EINVAL
    if advice in (MADV_DONTNEED, MADV_FREE):
        # Private anonymous memory reads back as zeros after MADV_DONTNEED.
        end = page_up(addr + length)
        pos = addr
        while pos < end:
            vma = k.mem.find(pos)
            if vma is None:
                return -errno.ENOMEM
            hi = min(vma.end, end)
            if advice == MADV_DONTNEED and vma.name in ("[anon]", "[heap]", "[stack]"):
                k.mem.write(pos, bytes(hi - pos))
            pos = hi
    return 0


def _fully_mapped(k: Kernel, start: int, end: int) -> bool:
    return _vmas_in(k, start, end) is not None


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
