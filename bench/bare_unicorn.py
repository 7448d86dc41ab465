"""The least a Python program needs to run a static x86-64 ELF on Unicorn: the baseline of the
start-up benchmark (``bench/run.py startup``).

It parses the ELF header itself (no pyelftools, no leakdbt), maps the PT_LOAD segments
read-write-execute, builds a stack (argc, argv, auxv) and answers only the system calls a
static glibc hello-world needs: write/writev, brk, mmap, mprotect, arch_prctl(SET_FS) and
exit/exit_group; every other one returns -ENOSYS.

Usage: ``python bench/bare_unicorn.py PROGRAM [ARGS]...``
"""

from __future__ import annotations

import struct
import sys

from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_MODE_64, UC_PROT_ALL, Uc, UcError
from unicorn import x86_const as x

PAGE = 0x1000
STACK_TOP = 0x7FFF_FFFF_F000
STACK_SIZE = 8 << 20
MMAP_BASE = 0x7000_0000_0000
ENOSYS = 38
PT_LOAD = 1
AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ, AT_ENTRY, AT_RANDOM = 3, 4, 5, 6, 9, 25


def page_down(address: int) -> int:
    return address & ~(PAGE - 1)


def page_up(address: int) -> int:
    return (address + PAGE - 1) & ~(PAGE - 1)


def load(uc: Uc, image: bytes) -> tuple[int, int, int, int, int]:
    """Map the PT_LOAD segments; return (entry, phdr address, phentsize, phnum, end)."""
    entry, phoff = struct.unpack_from("<QQ", image, 0x18)
    phentsize, phnum = struct.unpack_from("<HH", image, 0x36)
    loads = []
    for i in range(phnum):
        kind, _flags, offset, vaddr, _paddr, filesz, memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", image, phoff + i * phentsize)
        if kind == PT_LOAD:
            loads.append((offset, vaddr, filesz, memsz))
    spans: list[list[int]] = []  # page ranges, merged where segments share a page
    for _offset, vaddr, _filesz, memsz in sorted(loads, key=lambda s: s[1]):
        lo, hi = page_down(vaddr), page_up(vaddr + memsz)
        if spans and lo <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], hi)
        else:
            spans.append([lo, hi])
    for lo, hi in spans:
        uc.mem_map(lo, hi - lo, UC_PROT_ALL)
    for offset, vaddr, filesz, _memsz in loads:
        uc.mem_write(vaddr, image[offset:offset + filesz])
    phdr = next(vaddr + phoff - offset for offset, vaddr, filesz, _m in loads
                if offset <= phoff < offset + filesz)
    return entry, phdr, phentsize, phnum, spans[-1][1]


def build_stack(uc: Uc, argv: list[bytes], auxv: list[tuple[int, int]]) -> int:
    """Write argv's strings and the initial stack (argc, argv, no envp, auxv); return rsp."""
    uc.mem_map(STACK_TOP - STACK_SIZE, STACK_SIZE, UC_PROT_ALL)
    strings = STACK_TOP - PAGE
    pointers = []
    for arg in argv:
        uc.mem_write(strings, arg + b"\0")
        pointers.append(strings)
        strings += len(arg) + 1
    random = strings  # AT_RANDOM: 16 bytes (zero here)
    words = [len(argv), *pointers, 0, 0]
    for key, value in [*auxv, (AT_RANDOM, random), (0, 0)]:
        words += [key, value]
    sp = (STACK_TOP - 2 * PAGE - 8 * len(words)) & ~0xF
    uc.mem_write(sp, struct.pack(f"<{len(words)}Q", *words))
    return sp


def run(path: str, args: list[str]) -> int:
    """Run the program; return its exit status."""
    with open(path, "rb") as f:
        image = f.read()
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    entry, phdr, phentsize, phnum, end = load(uc, image)
    auxv = [(AT_PHDR, phdr), (AT_PHENT, phentsize), (AT_PHNUM, phnum), (AT_PAGESZ, PAGE),
            (AT_ENTRY, entry)]
    uc.reg_write(x.UC_X86_REG_RSP, build_stack(uc, [path.encode(), *map(str.encode, args)],
                                               auxv))
    brk = [end, end]  # start, current
    next_map = [MMAP_BASE]
    status: list[int] = []

    def syscall(uc: Uc, _user_data: object) -> None:
        nr = uc.reg_read(x.UC_X86_REG_RAX)
        a0, a1, a2 = (uc.reg_read(r) for r in (x.UC_X86_REG_RDI, x.UC_X86_REG_RSI,
                                                x.UC_X86_REG_RDX))
        ret = -ENOSYS
        if nr == 1:  # write
            ret = _write(a0, bytes(uc.mem_read(a1, a2)))
        elif nr == 20:  # writev
            ret = 0
            for i in range(a2):
                base, size = struct.unpack("<QQ", uc.mem_read(a1 + 16 * i, 16))
                ret += _write(a0, bytes(uc.mem_read(base, size)))
        elif nr == 12:  # brk
            if a0 > brk[1]:
                if page_up(a0) > page_up(brk[1]):
                    uc.mem_map(page_up(brk[1]), page_up(a0) - page_up(brk[1]), UC_PROT_ALL)
                brk[1] = a0
            ret = brk[1]
        elif nr == 9:  # mmap (anonymous only)
            size = page_up(a1)
            uc.mem_map(next_map[0], size, UC_PROT_ALL)
            ret, next_map[0] = next_map[0], next_map[0] + size
        elif nr == 10:  # mprotect (RELRO): everything stays read-write-execute
            ret = 0
        elif nr == 158 and a0 == 0x1002:  # arch_prctl(ARCH_SET_FS)
            uc.reg_write(x.UC_X86_REG_FS_BASE, a1)
            ret = 0
        elif nr in (60, 231):  # exit, exit_group
            status.append(a0 & 0xFF)
            uc.emu_stop()
            return
        uc.reg_write(x.UC_X86_REG_RAX, ret & (2**64 - 1))

    uc.hook_add(UC_HOOK_INSN, syscall, None, 1, 0, x.UC_X86_INS_SYSCALL)
    try:
        uc.emu_start(entry, 0xFFFF_FFFF_FFFF_FFFF)
    except UcError:
        if not status:  # stopping from a syscall hook may surface as an engine error
            raise
    return status[0] if status else 0


def _write(fd: int, data: bytes) -> int:
    if fd not in (1, 2):
        return -9  # EBADF
    stream = sys.stdout if fd == 1 else sys.stderr
    stream.buffer.write(data)
    stream.flush()
    return len(data)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], sys.argv[2:]))
