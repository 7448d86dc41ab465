"""Start a process the way Linux's execve does: map the ELF (and its interpreter), build the
initial stack with argv, envp and the auxiliary vector (System V AMD64 ABI, section 3.4)."""

from __future__ import annotations

import fcntl
import os
import stat
import struct
from collections.abc import Sequence

from leakdbt.errors import ElfError
from leakdbt.linux.files import FdTable, OpenFile
from leakdbt.linux.fs import FileSystem
from leakdbt.linux.kernel import ProcessIds
from leakdbt.loader.image import PF_R, PF_W, PF_X, Image
from leakdbt.machine.machine import Machine
from leakdbt.machine.memory import page_down, page_up

ELF_ET_DYN_BASE = 0x5555_5555_4000  # where Linux puts a PIE main program (no ASLR)
STACK_TOP = 0x7FFF_FFFF_F000
STACK_SIZE = 8 << 20
# Largest PT_LOAD segment loaded when no --max-memory is given (documented in docs/cli.md):
# far above any real program, low enough that reserving it stays cheap for the engine.
DEFAULT_MAX_SEGMENT = 16 << 30

# Auxiliary vector entry types (<linux/auxvec.h>, <asm/auxvec.h>).
AT_NULL, AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ = 0, 3, 4, 5, 6
AT_BASE, AT_FLAGS, AT_ENTRY = 7, 8, 9
AT_UID, AT_EUID, AT_GID, AT_EGID, AT_PLATFORM, AT_HWCAP, AT_CLKTCK = 11, 12, 13, 14, 15, 16, 17
AT_SECURE, AT_RANDOM, AT_HWCAP2, AT_EXECFN, AT_MINSIGSTKSZ = 23, 25, 26, 31, 51


def _prot(flags: int) -> int:
    return (1 if flags & PF_R else 0) | (2 if flags & PF_W else 0) | (4 if flags & PF_X else 0)


def map_image(machine: Machine, image: Image, bias: int) -> None:
    """Map every PT_LOAD segment of ``image`` at ``bias`` with its own permissions.

    Pages are reserved, not filled (the engine zero-fills lazily); only file bytes are
    written.  A segment over the memory cap is an ElfError (see :func:`check_segment_sizes`).
    """
    check_segment_sizes(image, machine.mem.max_bytes)
    spans = [(page_down(seg.vaddr + bias), page_up(seg.end + bias), _prot(seg.flags))
             for seg in image.segments]
    # Cut the address range at every segment edge (never page by page: a segment may be
    # GiBs); a piece gets the permissions of all segments covering it, and neighbouring
    # pieces with the same permissions are mapped together.
    edges = sorted({e for lo, hi, _ in spans for e in (lo, hi)})
    runs: list[list[int]] = []  # [start, end, prot]
    for lo, hi in zip(edges, edges[1:], strict=False):
        covering = [p for s_lo, s_hi, p in spans if s_lo < hi and lo < s_hi]
        if not covering:
            continue
        prot = 0
        for p in covering:
            prot |= p
        if runs and runs[-1][1] == lo and runs[-1][2] == prot:
            runs[-1][1] = hi
        else:
            runs.append([lo, hi, prot])
    try:
        for start, end, prot in runs:
            machine.mem.map(start, end - start, prot, image.path)
    except MemoryError as e:
        raise ElfError(image.path, f"segment too large: {e}") from None
    for seg in image.segments:
        if seg.filesz:
            machine.mem.write(seg.vaddr + bias, image.data[seg.offset:seg.offset + seg.filesz])


def check_segment_sizes(image: Image, max_memory: int) -> None:
    """Refuse a PT_LOAD segment (or all of them together) larger than ``max_memory`` bytes,
    or than DEFAULT_MAX_SEGMENT without a cap: the program cannot be loaded (exit status 2),
    as execve fails with ENOMEM under RLIMIT_AS."""
    cap = max_memory or DEFAULT_MAX_SEGMENT
    what = "--max-memory" if max_memory else "leakdbt's limit for one segment"
    total = 0
    for seg in image.segments:
        size = page_up(seg.end) - page_down(seg.vaddr)
        total += size
        if size > cap:
            raise ElfError(image.path, f"segment too large: the PT_LOAD segment at "
                                       f"{seg.vaddr:#x} needs {size} bytes, more than {what} "
                                       f"({cap} bytes)")
    if max_memory and total > max_memory:
        raise ElfError(image.path, f"the PT_LOAD segments need {total} bytes, more than "
                                   f"--max-memory ({max_memory} bytes)")


def entry_address(image: Image, bias: int) -> int:
    """Where ``image`` starts at ``bias``: 64-bit unsigned arithmetic as in Linux, so that a
    hostile e_entry wraps (the machine then reports a SIGSEGV at it)."""
    return (image.entry + bias) & 0xFFFF_FFFF_FFFF_FFFF


def phdr_address(image: Image, bias: int) -> int:
    for seg in image.segments:
        if seg.offset <= image.phoff < seg.offset + seg.filesz:
            return bias + seg.vaddr + image.phoff - seg.offset
    return 0


def build_stack(machine: Machine, argv: Sequence[str], env: Sequence[str],
                auxv: list[tuple[int, int]], execfn: str, random16: bytes) -> int:
    """Write argc/argv/envp/auxv and their strings below STACK_TOP; return the initial rsp."""
    machine.mem.map(STACK_TOP - STACK_SIZE, STACK_SIZE, 3, "[stack]")
    sp = STACK_TOP

    def push_bytes(data: bytes) -> int:
        nonlocal sp
        sp -= len(data)
        machine.mem.write(sp, data)
        return sp

    execfn_addr = push_bytes(os.fsencode(execfn) + b"\0")
    env_addrs = [push_bytes(os.fsencode(e) + b"\0") for e in reversed(env)][::-1]
    arg_addrs = [push_bytes(os.fsencode(a) + b"\0") for a in reversed(argv)][::-1]
    platform_addr = push_bytes(b"x86_64\0")
    sp &= ~0xF
    random_addr = push_bytes(random16)  # AT_RANDOM
    auxv = auxv + [(AT_RANDOM, random_addr), (AT_EXECFN, execfn_addr),
                   (AT_PLATFORM, platform_addr), (AT_NULL, 0)]
    words = [len(argv), *arg_addrs, 0, *env_addrs, 0]
    for key, value in auxv:
        words += [key, value]
    sp = (sp - 8 * len(words)) & ~0xF
    machine.mem.write(sp, struct.pack(f"<{len(words)}Q", *words))
    return sp


def process_ids() -> ProcessIds:
    return ProcessIds(pid=os.getpid(), ppid=os.getppid(), uid=os.getuid(), gid=os.getgid(),
                      euid=os.geteuid(), egid=os.getegid())


def interpreter_path(fs: FileSystem, binary: str, interpreter: str) -> str:
    """Host path of the program interpreter, looked up in the guest file system."""
    try:
        node = fs.resolve(interpreter)
    except OSError as e:
        raise ElfError(binary, f"interpreter {interpreter}: {e.strerror or e}") from None
    if not node.host or node.st is None or not stat.S_ISREG(node.st.st_mode):
        raise ElfError(binary, f"interpreter {interpreter} is not a regular file in the guest "
                               "file system")
    return node.host


def interpreter_file(fs: FileSystem, binary: str, interpreter: str) -> tuple[str, bytes]:
    """Host path and bytes of the program interpreter, read through the fd the guest file
    system's lookup opens (so that a rename racing the lookup cannot substitute a file
    outside the root: the path is only for messages and module names)."""
    host = interpreter_path(fs, binary, interpreter)
    try:
        file = fs.open(interpreter, os.O_RDONLY)
    except OSError as e:
        raise ElfError(binary, f"interpreter {interpreter}: {e.strerror or e}") from None
    try:
        if not stat.S_ISREG(os.fstat(file.host_fd).st_mode):
            raise ElfError(binary, f"interpreter {interpreter} is not a regular file in the "
                                   "guest file system")
        chunks = []
        while chunk := os.read(file.host_fd, 1 << 20):
            chunks.append(chunk)
    finally:
        file.close_host()
    return host, b"".join(chunks)


def guest_exe_path(binary: str, root: str) -> str:
    """The path the guest sees for the program (inside --root when it lies there)."""
    host = os.path.abspath(binary)
    root = os.path.abspath(root)
    if root == "/":
        return host
    rel = os.path.relpath(host, root)
    return host if rel.startswith("..") else "/" + ("" if rel == "." else rel)


def fd_table(stdio: tuple[int, int, int] | None) -> FdTable:
    """The guest's first file descriptors: ours, or the host fds ``stdio`` names."""
    if stdio is None:
        return FdTable()
    fds = FdTable(stdio=False)
    for guest_fd, host_fd in enumerate(stdio):
        fds.install_at(guest_fd, OpenFile(host_fd=host_fd, flags=fcntl.fcntl(host_fd,
                                                                             fcntl.F_GETFL),
                                          owned=False))
    return fds
