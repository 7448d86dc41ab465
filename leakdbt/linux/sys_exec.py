"""Replacing the guest's program: execve(2), execveat(2).

The new program is emulated, never run on the host: it is looked up through the guest's
FileSystem (so it lies inside ``--root``, as every path the guest names), read through a
file descriptor that lookup opened, and checked (execute permission, ``#!`` lines followed
to their interpreter, an ELF header the loader accepts) while the old image can still get
the error.  Then :class:`ExecImage` unwinds to the session (leakdbt.run.session.execute),
which starts a fresh machine for the new image with the same file system, fd table (minus
FD_CLOEXEC fds), pid and signal state (handlers reset as execve resets them).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from leakdbt.errors import ElfError
from leakdbt.linux.files import FdTable, FsError
from leakdbt.linux.fs import HOST, MISSING, VLINK, FileSystem
from leakdbt.linux.kernel import Kernel, ProcessIds, Unsupported, s32
from leakdbt.linux.signals import SIG_IGN, AltStack, Signals
from leakdbt.loader.elf import load_image
from leakdbt.machine.memory import GuestMemoryFault

AT_FDCWD = -100
AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW = 0x1000, 0x100
PATH_MAX = 4096
BINPRM_BUF_SIZE = 256  # how much of a "#!" line Linux reads
MAX_INTERPRETERS = 5  # "#!" scripts in a chain before the ELF file (fs/exec.c exec_binprm)
MAX_ARG_STRINGS = 0x7FFF_FFFF
ARG_MAX = 32 * 4096 * 4 * 8  # a quarter of the default 8 MiB stack, as Linux allows
MAX_ARG_STRLEN = 32 * 4096


@dataclass
class Program:
    """A program found for an exec: where it is, its bytes, the argv it gets."""

    guest_path: str  # the path execve was given (AT_EXECFN)
    host_path: str  # the ELF file finally loaded (the interpreter of a script)
    data: bytes
    argv: list[str]


@dataclass
class Kept:
    """What execve(2) keeps of the process for the next image: its file system view (root,
    working directory), fd table, ids, signal state (reset by :func:`keep`), resource
    limits, children, and entropy and clocks (virtual under ``check``).  Not the machine:
    the old image's memory is freed once the session drops it."""

    fs: FileSystem
    fds: FdTable
    ids: ProcessIds
    signals: Signals
    rlimits: dict[int, tuple[int, int]]
    children: set[int]
    entropy: Callable[[int], bytes]
    clock_ns: Callable[[int], int]
    wait_until: Callable[[int, int], None]

    def apply(self, k: Kernel) -> None:
        """Give the new image's kernel what the process keeps."""
        k.signals, k.rlimits, k.children = self.signals, self.rlimits, self.children
        k.entropy, k.clock_ns, k.wait_until = self.entropy, self.clock_ns, self.wait_until


def keep(k: Kernel) -> Kept:
    """What of ``k`` goes on into the next image; signal handlers are reset as execve resets
    them (SIG_IGN stays), the alternate stack is forgotten, mask and pending signals stay."""
    sigs = k.signals
    sigs.actions = {sig: action for sig, action in sigs.actions.items()
                    if action.handler == SIG_IGN}
    sigs.altstack = AltStack()
    sigs.sigreturn = False
    sigs.suspended_mask = None
    k.ids.suid, k.ids.sgid = k.ids.euid, k.ids.egid  # execve(2): saved ids := effective ids
    return Kept(k.fs, k.fds, k.ids, sigs, k.rlimits, k.children, k.entropy, k.clock_ns,
                k.wait_until)


class ExecImage(Exception):  # noqa: N818 - a request to the session, not an error
    """Raised by execve once it cannot fail any more: the session replaces the image."""

    def __init__(self, program: Program, env: list[str]) -> None:
        super().__init__(program.guest_path)
        self.program = program
        self.env = env
        self.kept: Kept | None = None  # set by the session from the kernel that asked


def _strings(k: Kernel, array: int) -> list[str]:
    """A NULL-terminated array of guest strings (argv, envp); NULL is an empty array."""
    out: list[str] = []
    total = 0
    while array:
        pointer = int.from_bytes(k.mem.read(array + 8 * len(out), 8), "little")
        if not pointer:
            break
        raw = k.mem.read_cstring(pointer, MAX_ARG_STRLEN)
        total += len(raw) + 1 + 8
        if len(raw) >= MAX_ARG_STRLEN or total > ARG_MAX or len(out) >= MAX_ARG_STRINGS:
            raise FsError(errno.E2BIG)
        out.append(os.fsdecode(raw))
    return out


def _read_program(k: Kernel, path: str) -> tuple[str, bytes]:
    """The host path and bytes of guest ``path``, if the guest may execute it."""
    node = k.fs.resolve(path)
    if node.kind != HOST:  # devices and /proc entries are not programs
        raise FsError(errno.ENOENT if node.kind == MISSING else errno.EACCES)
    k.fs.access(path, os.X_OK)  # EACCES without execute permission (or outside the tree)
    file = k.fs.open(path, os.O_RDONLY)
    try:
        if not stat.S_ISREG(os.fstat(file.host_fd).st_mode):
            raise FsError(errno.EACCES)
        chunks = []
        while chunk := os.read(file.host_fd, 1 << 20):
            chunks.append(chunk)
    finally:
        file.close_host()
    return node.host, b"".join(chunks)


def _shebang(data: bytes) -> tuple[str, str | None]:
    """The interpreter and optional argument of a "#!" line (as binfmt_script parses it)."""
    line = data[2:BINPRM_BUF_SIZE].split(b"\n", 1)[0].strip(b" \t")
    interp, _, arg = line.replace(b"\t", b" ").partition(b" ")
    if not interp:
        raise FsError(errno.ENOEXEC)
    arg = arg.strip(b" ")
    return os.fsdecode(interp), os.fsdecode(arg) if arg else None


def find_program(k: Kernel, path: str, argv: list[str]) -> Program:
    """Follow ``path`` through "#!" lines to the ELF file that runs; its argv as Linux
    builds it (interpreter, optional argument, the script's path, then argv[1:])."""
    name, given = path, path
    for _ in range(MAX_INTERPRETERS + 1):
        host, data = _read_program(k, name)
        if data[:2] == b"#!":
            interp, arg = _shebang(data)
            argv = [interp, *([arg] if arg is not None else []), name, *argv[1:]]
            name = interp
            continue
        if data[:4] != b"\x7fELF":
            raise FsError(errno.ENOEXEC)
        try:
            load_image(host, data)
        except ElfError:
            raise FsError(errno.ENOEXEC) from None
        return Program(guest_path=given, host_path=host, data=data, argv=argv)
    raise FsError(errno.ELOOP)


def _exec(k: Kernel, dirfd: int, path_addr: int, argv_addr: int, envp_addr: int,
          flags: int) -> int:
    if flags & ~(AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW):
        return -errno.EINVAL
    try:
        if path_addr == 0:
            raise GuestMemoryFault(0)
        raw = k.mem.read_cstring(path_addr, PATH_MAX)
        if len(raw) >= PATH_MAX:
            return -errno.ENAMETOOLONG
        path = os.fsdecode(raw)
        if not path:
            if flags & AT_EMPTY_PATH:
                raise Unsupported("execveat of an open file (AT_EMPTY_PATH)")
            return -errno.ENOENT
        if dirfd != AT_FDCWD and not path.startswith("/"):
            raise Unsupported("execveat relative to a directory fd")
        if flags & AT_SYMLINK_NOFOLLOW:
            node = k.fs.resolve(path, follow=False)
            if node.st is not None and stat.S_ISLNK(node.st.st_mode) or node.kind == VLINK:
                return -errno.ELOOP
        argv, env = _strings(k, argv_addr), _strings(k, envp_addr)
        program = find_program(k, path, argv)
    except OSError as e:
        return -(e.errno or errno.EACCES)
    if k.vfork_fd >= 0:  # past the point of no return: a vfork parent may go on
        os.close(k.vfork_fd)
        k.vfork_fd = -1
    raise ExecImage(program, env)


def sys_execve(k: Kernel, path: int, argv: int, envp: int) -> int:
    return _exec(k, AT_FDCWD, path, argv, envp, 0)


def sys_execveat(k: Kernel, dirfd: int, path: int, argv: int, envp: int, flags: int) -> int:
    return _exec(k, s32(dirfd), path, argv, envp, flags & 0xFFFF_FFFF)


HANDLERS: dict[int, tuple[str, Callable[..., int]]] = {
    59: ("execve", sys_execve),
    322: ("execveat", sys_execveat),
}
